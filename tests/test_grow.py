"""Stores that grow: more epochs, a split added later, disjoint epochs filled side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deit_pipe.place import Place
from deit_pipe.storage import TargetStore
from deit_pipe.storage.format import job_identity
from tests.cli_utils import invoke, one_line
from tests.store_utils import data_files

CLI = str(Path(sys.executable).parent / "deit-pipe")
PRE = [
    "precompute",
    "--data",
    "fake:400",
    "--teacher-model",
    "regnety_002",
    "--teacher-random-init",
]
PRE += ["--batch-size", "100", "--dask-workers", "0", "--preset", "small"]
# What differs between two makings of one store: when shards completed, when it was created.
WHEN = ("done_at/", ".deit-pipe.lock")


def same_as(url: Path, reference: Path) -> None:
    assert data_files(url) == data_files(reference)
    a, b = (json.loads((p / "zarr.json").read_text())["attributes"] for p in (url, reference))
    assert job_identity(a["deit_pipe"]) == job_identity(b["deit_pipe"])


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> Path:
    url = tmp_path_factory.mktemp("four") / "s.zarr"
    assert invoke(*PRE, "--out", url, "--epochs", "4").exit_code == 0
    return url


def test_more_epochs_append_to_a_store_bit_for_bit(tmp_path, four):
    url = tmp_path / "s.zarr"
    assert invoke(*PRE, "--out", url, "--epochs", "2").exit_code == 0
    before = {k: v for k, v in data_files(url).items() if k.startswith("train/")}
    assert invoke(*PRE, "--out", url, "--epochs", "4").exit_code == 0
    after = data_files(url)
    # Nothing the store held was rewritten (the epoch axis grew in the arrays' zarr.json).
    assert all(after[k] == v for k, v in before.items() if not k.endswith("zarr.json"))
    same_as(url, four)
    # Asking for fewer epochs than a store holds reopens it as it is.
    result = invoke(*PRE, "--out", url, "--epochs", "3")
    assert result.exit_code == 0 and "0 shards" in result.output
    assert TargetStore(str(url)).spec.epochs == 4


def test_val_added_to_a_train_only_store(tmp_path, four):
    url = tmp_path / "s.zarr"
    assert invoke(*PRE, "--out", url, "--epochs", "4", "--split", "train").exit_code == 0
    assert TargetStore(str(url)).spec.splits == ("train",)
    assert invoke(*PRE, "--out", url, "--epochs", "4", "--split", "val").exit_code == 0
    same_as(url, four)


def test_two_range_jobs_at_once_make_the_one_job_store(tmp_path, four):
    url = tmp_path / "s.zarr"
    args = [CLI, *PRE, "--out", str(url)]
    jobs = [
        subprocess.Popen([*args, "--epochs-range", r], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for r in ("0:2", "2:4")
    ]  # fmt: skip
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    same_as(url, four)
    assert not list(url.glob(".deit-pipe.lock.*"))  # claims are gone with their jobs


def test_inspect_of_a_store_being_filled_counts_its_bytes(tmp_path, four):
    """Writers rename temporary files into place (zarr's `*.partial`, our atomic writes):
    sizing the store while they do must not fail on a file listed a moment before."""
    import shutil
    import threading
    import uuid

    from deit_pipe.storage.inspect import summarize

    url = tmp_path / "s.zarr"
    shutil.copytree(four, url)
    stop = threading.Event()

    def write_like_zarr() -> None:
        target = url / "train" / "logsumexp" / "c" / "scratch"
        while not stop.is_set():
            partial = target.with_suffix(f".{uuid.uuid4().hex}.partial")
            partial.write_bytes(b"x" * 64)
            partial.replace(target)

    writer = threading.Thread(target=write_like_zarr)
    writer.start()
    store = TargetStore(str(url))
    try:  # `fs.du` failed on ≈6% of sizings like these
        sizes = [summarize(store)["bytes_on_disk"] for _ in range(30)]
    finally:
        stop.set()
        writer.join()
        store.close()
    assert min(sizes) > 0


def test_a_job_on_epochs_being_filled_is_refused_naming_the_filler(tmp_path, four):
    import shutil

    from deit_pipe.storage.claims import Claim, take_claim

    url = tmp_path / "s.zarr"
    shutil.copytree(four, url)
    held = take_claim(str(url), Claim(2, 4), "precompute of epochs 2–3")
    try:
        refusal = invoke(*PRE, "--out", url, "--epochs-range", "1:3")
        one_line(refusal, "is filling epochs 2–3", "--epochs-range")
        # Disjoint epochs go ahead beside it.
        assert invoke(*PRE, "--out", url, "--epochs-range", "0:2").exit_code == 0
        one_line(invoke(*PRE, "--out", url, "--epochs", "2", "--repair"), "epochs 2–3")
    finally:
        held.release()
    assert invoke(*PRE, "--out", url, "--epochs", "2", "--repair").exit_code == 0


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--epochs-range", "3:2"], "--epochs-range"),
        (["--epochs-range", "2"], "--epochs-range"),
        (["--epochs", "2", "--epochs-range", "0:2"], "one of them"),
        ([], "--epochs"),
    ],
)
def test_bad_epoch_ranges_are_one_line_and_make_nothing(tmp_path, flags, needle):
    url = tmp_path / "s.zarr"
    one_line(invoke(*PRE, "--out", url, *flags), needle)
    assert not url.exists()


def test_a_follower_sees_epochs_another_job_adds(tmp_path, four):
    url = tmp_path / "s.zarr"
    assert invoke(*PRE, "--out", url, "--epochs", "2").exit_code == 0
    store = TargetStore(str(url))
    store.check_run(epochs=4, follow=True)  # a follower accepts epochs still to come
    waits = []

    def grow_once(epoch, done, total):
        waits.append((epoch, done, total))
        if len(waits) == 1:
            assert invoke(*PRE, "--out", url, "--epochs-range", "2:4").exit_code == 0

    store.wait_for_epoch(3, poll=0.01, on_wait=grow_once)
    assert store.spec.epochs == 4 and store.read_epoch(3).fingerprint.any()
    assert waits[0] == (3, 0, 0)


def test_an_interrupted_growth_reads_as_before_and_a_rerun_finishes_it(tmp_path, four, monkeypatch):
    from dataclasses import replace

    from deit_pipe.storage import writer

    url = tmp_path / "s.zarr"
    assert invoke(*PRE, "--out", url, "--epochs", "2").exit_code == 0
    calls, real = [], writer._write_meta

    def killed_before_the_final_metadata(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill after the arrays grew
        real(*args)

    monkeypatch.setattr(writer, "_write_meta", killed_before_the_final_metadata)
    store = TargetStore(str(url))
    with pytest.raises(KeyboardInterrupt):
        writer._grow(Place(url), store.meta, replace(store.spec, epochs=4))
    monkeypatch.undo()
    store = TargetStore(str(url))  # arrays grew, metadata not yet: still the 2-epoch store
    assert store.spec.epochs == 2 and store.progress().done["train"].all()
    assert invoke(*PRE, "--out", url, "--epochs", "4").exit_code == 0
    same_as(url, four)
