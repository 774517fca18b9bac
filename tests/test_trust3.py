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
from tests.store_utils import data_files

PRE = ["precompute", "--data", "fake:100", "--random-init", "--batch-size", "50"]
PRE += ["--dask-workers", "0", "--preset", "small", "--epochs", "1", "--top-k", "3"]
PRE += ["--teacher-model", "regnety_002", "--shard-views", "64"]  # train: a shard of 64, one of 36
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


A, B = "regnety_002", "regnety_004"


@pytest.fixture(scope="module")
def two(made, tmp_path_factory) -> Path:
    """`made` with a second teacher, B, under teachers/B."""
    url = tmp_path_factory.mktemp("trust3-two") / "s.zarr"
    shutil.copytree(made, url)
    done = invoke(*PRE[:-4], "--shard-views", "64", "--teacher-model", B, "--out", url)
    assert done.exit_code == 0, done.output
    return url


def unseal(url: Path) -> None:
    """Make `url` a store from before seals: no teacher attribute, plain crc32 records."""
    from deit_pipe.storage.format import CHECKSUM, SEAL, StoreSpec, shard_checksum

    group = zarr.open_group(str(url), mode="r+")
    spec = StoreSpec.from_meta(group.attrs["deit_pipe"])
    for name in spec.teacher_names:
        for split in spec.splits:
            g = group[spec.prefix(name) + split]
            attrs = dict(g.attrs)
            attrs.pop(SEAL)
            g.attrs.clear()
            g.attrs.update(attrs)
            length = spec.layout(split)[0]
            for e in range(spec.split_epochs(split)):
                for s in range(spec.num_shards(split)):
                    rows = slice(s * length, min((s + 1) * length, spec.views(split)))
                    sums = [shard_checksum(g[a][e, rows]) for a in spec.arrays]
                    g[CHECKSUM][e, s] = np.array(sums, np.uint64)


def test_a_teachers_arrays_copied_under_another_teacher_are_caught(two, tmp_path):
    copy = tmp_path / "s.zarr"
    shutil.copytree(two, copy)
    theirs = copy / "teachers" / B / "train"
    shutil.rmtree(theirs)
    shutil.copytree(copy / "train", theirs)  # A's arrays, group and all, now called B
    before = data_files(copy)
    verified = invoke("verify", copy)  # its table, then the damage in one line
    assert verified.exit_code == 1 and "Traceback" not in verified.output, verified.output
    line = verified.output.strip().splitlines()[-1]
    assert all(w in line for w in (f"teachers/{B}/train", f"teacher {A!r}", "copied")), line
    run = ["train", "--store", copy, "--out", tmp_path / "run", *SMALL, "--teacher-name", B]
    one_line(invoke(*run), f"teachers/{B}/train", "copied")
    # A alone is still served: the damage disables only B
    run = ["train", "--store", copy, "--out", tmp_path / "runA", *SMALL, "--teacher-name", A]
    assert invoke(*run).exit_code == 0
    assert data_files(copy) == before


def test_arrays_copied_into_another_teachers_group_fail_their_checksums(two, tmp_path):
    copy = tmp_path / "s.zarr"
    shutil.copytree(two, copy)
    for name in ("topk_values", "topk_indices", "logsumexp", "fingerprint", "checksum"):
        theirs = copy / "teachers" / B / "train" / name
        shutil.rmtree(theirs)
        shutil.copytree(copy / "train" / name, theirs)  # B's group (and seal) kept
    verified = invoke("verify", copy)
    assert verified.exit_code == 1 and f"teachers/{B}/train/topk_values epoch 0 shard 0" in (
        verified.output
    ), verified.output
    assert "bytes differ" in verified.output


def test_a_store_made_before_seals_still_opens(two, tmp_path):
    copy = tmp_path / "s.zarr"
    shutil.copytree(two, copy)
    unseal(copy)
    assert invoke("verify", copy).exit_code == 0
    assert invoke("inspect", copy).exit_code == 0


def test_a_manifest_not_written_with_the_store_is_refused(store, tmp_path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tests.store_utils import resign_meta

    run = tmp_path / "run"
    trained = invoke("train", "--store", store, "--out", run, *SMALL)
    assert trained.exit_code == 0, trained.output
    manifest = store / "manifest.parquet"
    table = pq.read_table(manifest)
    val = pc.equal(table["split"], "val")
    edited = table.set_column(3, "label", pc.if_else(val, 0, table["label"]))  # val labels
    pq.write_table(edited, manifest)
    before = data_files(store)
    for args in (
        ["inspect", store],
        ["verify", store],
        ["train", "--store", store, "--out", tmp_path / "run2", *SMALL],
        ["audit", "--store", store, "--run", run, "--train-views", "0", "--out", tmp_path / "a"],
    ):
        one_line(invoke(*args), "manifest.parquet is not the one this store was written with")
    assert data_files(store) == before
    assert not (tmp_path / "run2").exists() and not (tmp_path / "a").exists()
    pq.write_table(table.slice(0, 50), manifest)  # another dataset's (fewer rows)
    one_line(invoke("inspect", store), "manifest.parquet", "another dataset's")
    # a store made before the record reads its manifest as it always did
    resign_meta(str(store), lambda meta: meta.pop("files"))
    assert invoke("inspect", store).exit_code == 0
    # the precompute command rewrites it, and its record
    pq.write_table(edited, manifest)
    resumed = invoke(*PRE, "--out", store)
    assert resumed.exit_code == 0, resumed.output
    assert invoke("verify", store).exit_code == 0


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--teacher-model", A], "--teacher-model runs a teacher online"),
        (["--teacher-random-init"], "--teacher-random-init runs a teacher online"),
        (["--teacher-checkpoint", "t.pth"], "--teacher-checkpoint runs a teacher online"),
    ],
)
def test_an_online_teacher_beside_a_store_is_refused_not_ignored(made, tmp_path, extra, needle):
    run = tmp_path / "run"
    one_line(invoke("train", "--store", made, "--out", run, *SMALL, *extra), needle, "--store")
    assert not run.exists()


def test_teacher_flags_without_what_they_modify_are_refused(tmp_path):
    run = ["train", "--data", "digits", "--out", tmp_path / "run", *SMALL]
    one_line(invoke(*run, "--teacher-pretrained"), "--teacher-pretrained", "--teacher-model")
    one_line(invoke(*run, "--teacher-name", A), "--teacher-name", "--store")
    assert not (tmp_path / "run").exists()


def test_a_dry_run_refuses_a_users_file_as_out_and_states_its_memory(tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    dry = [*PRE[:-2], "--dry-run", "--throughput", "5", "--out"]
    one_line(invoke(*dry, mine), str(mine), "is a file")
    folder = tmp_path / "photos"
    (folder / "a.jpg").parent.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    one_line(invoke(*dry, folder), "not a deit-pipe store", "a.jpg")
    assert mine.read_text() == "mine" and [p.name for p in folder.iterdir()] == ["a.jpg"]
    planned = invoke(*dry, tmp_path / "new.zarr")
    assert planned.exit_code == 0, planned.output
    memory = [line for line in planned.output.splitlines() if line.startswith("memory:")]
    assert len(memory) == 1 and "GiB a device" in memory[0] and "teacher weights" in memory[0]
    assert not (tmp_path / "new.zarr").exists()


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
