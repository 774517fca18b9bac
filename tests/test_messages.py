"""Messages that say what happened, not something near it: a busy run directory, a too long
teacher name, a second teacher's damaged chunk, a store moved under a follower, an empty
store path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deit_pipe.errors import StoreCorruptError, StoreNotFoundError
from deit_pipe.storage import TargetStore
from deit_pipe.storage.lock import WriterLock
from tests.cli_utils import invoke, one_line
from tests.store_utils import data_files

PRE = ["precompute", "--data", "fake:100", "--teacher-random-init", "--batch-size", "50"]
PRE += ["--dask-workers", "0", "--preset", "small", "--epochs", "1", "--top-k", "3"]
SMALL = ["--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"]
SMALL += ["--num-heads", "2", "--batch-size", "16", "--epochs", "1", "--max-steps", "1"]
A, B = "regnety_002", "regnety_004"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two teachers of 100 fake images, one epoch: the smallest store with a `teachers/B`."""
    url = tmp_path_factory.mktemp("messages") / "s.zarr"
    assert invoke(*PRE, "--out", url, "--teacher-model", A).exit_code == 0
    assert invoke(*PRE, "--out", url, "--teacher-model", B).exit_code == 0
    return url


def test_a_second_train_on_a_busy_out_names_the_running_one(store, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "x"}))  # before its first checkpoint
    before = data_files(run)
    # the first train holds this lock while it trains (train.train); flock is per open file,
    # so holding it here is what another process's train would meet
    with WriterLock(str(run), "train", what="this run directory"):
        line = one_line(invoke("train", "--store", store, "--out", run, *SMALL), "in use by train")
    assert "stopped before" not in line and "pid" in line
    assert data_files(run) == before


def test_a_too_long_teacher_name_is_told_its_limit(tmp_path):
    url = tmp_path / "s.zarr"
    line = one_line(invoke(*PRE, "--out", url, "--teacher-model", A, "--teacher-name", "a" * 300))
    assert "300 characters" in line and "at most 64" in line and "use letters" not in line
    assert not url.exists()


def test_teacher_b_damage_is_reported_under_its_own_path(store, tmp_path):
    copy = tmp_path / "s.zarr"
    shutil.copytree(store, copy)
    chunk = copy / "teachers" / B / "train" / "topk_values" / "c" / "0" / "0" / "0"
    chunk.write_bytes(b"\xff" * chunk.stat().st_size)
    with pytest.raises(StoreCorruptError) as info:
        TargetStore(str(copy), teacher=B).read_epoch(0)
    message = str(info.value)
    assert f"teachers/{B}/train/topk_values" in message, message
    assert "\n" not in message


def test_a_follower_calls_a_moved_store_moved(store, tmp_path):
    copy = tmp_path / "s.zarr"
    shutil.copytree(store, copy)
    opened = TargetStore(str(copy))
    before = data_files(copy)
    copy.rename(tmp_path / "elsewhere.zarr")
    # the follower polls the done row (wait_for_epoch), then reads the epoch
    for read in (
        lambda: opened.wait_for_epoch(0, stall_timeout=1, poll=0.1),
        lambda: opened.read_epoch(0),
    ):
        with pytest.raises(StoreNotFoundError) as info:
            read()
        assert "moved or removed" in str(info.value) and "corrupt" not in str(info.value)
    assert data_files(tmp_path / "elsewhere.zarr") == before


def test_an_empty_store_path_is_named_empty(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # zarr would take '' as this directory
    for command in ("inspect", "verify"):
        one_line(invoke(command, ""), "store path is empty")
    dry = [*PRE[:2], "digits", "--out", "", "--dry-run", "--throughput", "5", "--epochs", "1"]
    one_line(invoke(*dry), "store path is empty")
    assert list(tmp_path.iterdir()) == []
