"""Issue 32, third slice: damage the tool repairs (done flags, an unfinished shard's garbage),
files the store proves (each teacher's arrays, the manifest), flags a store makes moot, and
the dry run's output path and memory. Each: the reproducer, the one-line refusal or the
repair, then nothing lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.cli_utils import invoke, one_line
from tests.test_grow import data_files

PRE = ["precompute", "--data", "fake:100", "--random-init", "--batch-size", "50"]
PRE += ["--workers", "0", "--recipe", "small", "--epochs", "1", "--top-k", "3"]
PRE += ["--teacher", "regnety_002", "--shard-views", "64"]  # train: a shard of 64, one of 36
SMALL = ["--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"]
SMALL += ["--num-heads", "2", "--batch-size", "16", "--epochs", "1", "--max-steps", "1"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """One teacher, one epoch of 100 fake images in two train shards, and val."""
    url = tmp_path_factory.mktemp("trust3") / "s.zarr"
    done = invoke(*PRE, "--out", url)
    assert done.exit_code == 0, done.output
    return url


@pytest.fixture
def store(made, tmp_path) -> Path:
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
    for args in (
        ["inspect", store],
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
