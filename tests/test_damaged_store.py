"""A damaged store: `inspect` shows what it can still read and names the damage in its last
line, every other command refuses in one line, and a resume or `precompute --repair` mends it
(a damaged done flag, an unfinished shard's garbage), nothing else lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.cli_utils import invoke, one_line
from tests.small_store_utils import PRE, SMALL
from tests.store_utils import data_files


@pytest.fixture
def store(made, tmp_path) -> Path:
    """A copy of `made` to damage."""
    copy = tmp_path / "s.zarr"
    shutil.copytree(made, copy)
    return copy


def flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_done_flag_is_named_and_repair_rebuilds_it(made, store, tmp_path):
    flip(store / "train" / "done" / "c" / "0" / "1")  # a finished shard's flag
    # a flag of a shard never finished: no checksum record, so --repair recomputes it
    zarr.open_group(str(store), mode="r+")["train/checksum"][0, 0] = np.zeros(4, np.uint64)
    flip(store / "train" / "done" / "c" / "0" / "0")
    damaged = data_files(store)
    flag = "the done flag of train epoch 0 shard 0 is damaged"
    # inspect shows what it can read, then names the damage (exit 1)
    shown = invoke("inspect", store)
    assert shown.exit_code == 1 and "epochs" in shown.output and "unreadable" in shown.output
    last = shown.output.strip().splitlines()[-1]
    assert last.startswith("error:") and "train epoch 0 shard" in last and "--repair" in last
    for args in (
        ["verify", store],
        ["train", "--store", store, "--out", tmp_path / "run", *SMALL],
        [*PRE, "--out", store],  # a plain resume
    ):
        one_line(invoke(*args), flag, "(and 1 more)", "--repair")
    assert data_files(store) == damaged and not (tmp_path / "run").exists()
    repaired = invoke(*PRE, "--out", store, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "1 shards" in repaired.output  # shard 0 recomputed, shard 1's flag rebuilt
    assert data_files(store) == data_files(made)
    assert invoke("verify", store).exit_code == 0


def test_a_resume_rewrites_an_unfinished_shards_garbage(made, store):
    """The short last shard is written read-modify-write: its garbage must not be read."""
    zarr.open_group(str(store), mode="r+")["train/done"][0, 1] = False
    flip(store / "train" / "topk_values" / "c" / "0" / "1" / "0", at=10)
    resumed = invoke(*PRE, "--out", store)
    assert resumed.exit_code == 0, resumed.output
    assert data_files(store) == data_files(made)


def test_inspect_shows_what_it_can_read_of_a_store_with_a_damaged_chunk(store):
    import json

    flip(store / "train" / "topk_values" / "c" / "0" / "0" / "0")  # a done shard's values
    before = data_files(store)
    shown = invoke("inspect", store)
    lines = shown.output.strip().splitlines()
    assert shown.exit_code == 1 and "Traceback" not in shown.output
    assert any(line.split()[:1] == ["epochs"] for line in lines)  # the rest is shown
    assert lines[-1].startswith("error:") and "train/topk_values" in lines[-1]
    info = json.loads(invoke("inspect", store, "--json").output.split("\nerror:")[0])
    assert info["epochs"] == 1 and info["val_teacher_top1"] is not None  # val is intact
    assert info["topk_mass_mean"] is None and "train/topk_values" in info["unreadable"][0]
    assert data_files(store) == before  # inspect reads only


@pytest.mark.parametrize(
    "gone", ["train/done/zarr.json", "train/topk_values/zarr.json", "train", "val/done"]
)
def test_inspect_shows_what_it_can_read_of_a_store_missing_an_array_or_a_split(store, gone):
    """An array's `zarr.json`, a whole array or a split's folder missing: inspect prints
    the summary it can (the metadata's part, the other split), names what is missing in
    its last line and exits 1, as for a damaged chunk; other commands keep refusing in
    one line."""
    import json

    path = store / gone
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = data_files(store)
    shown = invoke("inspect", store)
    lines = shown.output.strip().splitlines()
    assert shown.exit_code == 1 and "Traceback" not in shown.output, shown.output
    assert any(line.split()[:1] == ["epochs"] for line in lines), shown.output
    split = gone.split("/")[0]
    assert lines[-1].startswith("error:") and f"{split}/" in lines[-1], lines[-1]
    info = json.loads(invoke("inspect", store, "--json").output.split("\nerror:")[0])
    assert info["epochs"] == 1 and not info["complete"]
    assert info["missing_shards"][split], info["missing_shards"]
    if split == "train":
        assert info["val_teacher_top1"] is not None  # val is intact
    refused = invoke("verify", store)
    assert refused.exit_code != 0 and one_line(refused) and "missing" in refused.output
    assert data_files(store) == before  # inspect reads only
