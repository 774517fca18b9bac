"""Nothing lost, nothing silently wrong: output paths, locks, integrity records, full disks.

Real reproductions: real folders and files, deleted chunk files, edited metadata, a real
file-size limit (RLIMIT_FSIZE) and real concurrent processes. After each failure the same
command, rerun, gives a store identical to one made without interruption.
"""

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deit_pipe.errors import LockedError, OutputPathError, StoreCorruptError
from deit_pipe.storage import TargetStore
from deit_pipe.storage.lock import WriterLock
from tests.cli_utils import invoke, one_line

CLI = str(Path(sys.executable).parent / "deit-pipe")
DATA = "fake:400"  # 400 train + 80 val views: a train shard (≈7 KB) outweighs any metadata file
PRE = ["precompute", "--data", DATA, "--teacher-model", "regnety_002", "--teacher-random-init"]
PRE += ["--epochs", "2", "--batch-size", "100", "--dask-workers", "0", "--preset", "small"]
ARRAYS = ("values", "indices", "lse", "fingerprint")


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes (what 'nothing was changed' compares)."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".deit-pipe.lock")
    return {str(p.relative_to(path)): p.read_bytes() for p in files}


def same_store(a, b) -> None:
    sa, sb = TargetStore(str(a)), TargetStore(str(b))
    for split in ("train", "val"):
        for e in range(sa.spec.split_epochs(split)):
            ea, eb = sa.read_epoch(e, split), sb.read_epoch(e, split)
            for name in ARRAYS:
                np.testing.assert_array_equal(getattr(ea, name), getattr(eb, name))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    url = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert invoke(*PRE, "--out", url).exit_code == 0
    return url


def test_a_store_is_made_only_where_nothing_of_anyone_else_is(tmp_path, monkeypatch, reference):
    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"holiday")
    (photos / "2024" / "b.jpg").write_bytes(b"more")
    lone = tmp_path / "notes.txt"
    lone.write_text("keep me")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "work.py").write_text("print(1)")
    monkeypatch.chdir(cwd)
    before = {p: tree(p) for p in (photos, cwd)}
    for out, extra, needle in [
        (photos, [], "is not a deit-pipe store (it holds 2024, a.jpg)"),
        (photos, ["--overwrite"], "is not a deit-pipe store"),
        ("", [], "output path is empty"),
        ("", ["--overwrite"], "output path is empty"),
        (lone, ["--overwrite"], "is a file"),
    ]:
        one_line(invoke(*PRE, "--out", out, *extra), needle)
    assert {p: tree(p) for p in (photos, cwd)} == before and lone.read_text() == "keep me"

    import zarr  # another tool's Zarr group is not ours to clear either

    zarr.open_group(tmp_path / "other.zarr", mode="w").create_array("x", shape=(3,), dtype="i4")
    one_line(invoke(*PRE, "--out", tmp_path / "other.zarr", "--overwrite"), "not a deit-pipe")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke(*PRE, "--out", empty).exit_code == 0
    same_store(empty, reference)
    (empty / "mine.txt").write_text("a user's file in the store")
    one_line(invoke(*PRE, "--out", empty, "--plan-seed", "1", "--overwrite"), "mine.txt")
    (empty / "mine.txt").unlink()
    assert invoke(*PRE, "--out", empty, "--plan-seed", "1", "--overwrite").exit_code == 0
    assert TargetStore(str(empty)).spec.recipe["seed"] == 1


def test_overwrite_removes_only_what_the_store_format_lists(tmp_path, reference):
    import shutil

    from deit_pipe.storage.format import CREATING_KEY
    from deit_pipe.storage.overwrite import store_paths, write_root

    url = tmp_path / "k.zarr"
    shutil.copytree(reference, url)
    add_b = [*PRE, "--out", url, "--teacher-name", "B", "--split", "val"]
    assert invoke(*add_b).exit_code == 0
    assert store_paths(str(url), ["B"])[2] == []  # all a two-teacher store holds is listed
    (url / "train" / "NOTES.txt").write_text("notes")  # below the root: checked too now
    (url / "teachers" / "mybackup").mkdir()
    before = tree(url)
    again = [*PRE, "--out", url, "--plan-seed", "1", "--overwrite"]
    one_line(invoke(*again), f"{url}/teachers/mybackup was not written", "1 more")
    assert tree(url) == before and (url / "teachers" / "mybackup").is_dir()

    c_notes = url / "teachers" / "C" / "val" / "NOTES.txt"  # where a new teacher's arrays go
    c_notes.parent.mkdir(parents=True)
    c_notes.write_text("mine")
    one_line(invoke(*add_b[:-4], "--teacher-name", "C", "--split", "val"), "C/val/NOTES.txt")
    assert tree(url) == {**before, "teachers/C/val/NOTES.txt": b"mine"}

    shutil.rmtree(url / "teachers" / "C")
    saved = tree(url)
    write_root(str(url), {CREATING_KEY: {"since": "then", "teachers": ["B"]}})  # interrupted
    one_line(invoke(*PRE, "--out", url), "teachers/mybackup was not written", "1 more")
    assert {k: v for k, v in tree(url).items() if k != "zarr.json"} == {
        k: v for k, v in saved.items() if k != "zarr.json"
    }

    (url / "train" / "NOTES.txt").unlink()
    (url / "teachers" / "mybackup").rmdir()
    assert invoke(*again).exit_code == 0  # then only the store's own entries go
    assert not (url / "teachers").exists()
    assert TargetStore(str(url)).spec.teacher_names == ["regnety_002"]


def test_overwrite_on_an_object_store_keeps_a_users_object():
    import fsspec

    from deit_pipe.storage.writer import create_store
    from tests.store_utils import fill_all, make_spec

    url, fs = "memory://ow/s.zarr", fsspec.filesystem("memory")
    fill_all(url, make_spec())
    fs.pipe_file("/ow/s.zarr/train/topk_values/c/NOTES.txt", b"mine")
    with pytest.raises(OutputPathError, match="train/topk_values/c/NOTES.txt was not written"):
        create_store(url, make_spec(k=4), overwrite=True)
    assert fs.cat_file("/ow/s.zarr/train/topk_values/c/NOTES.txt") == b"mine"
    assert TargetStore(url).spec.k == 5
    fs.rm("/ow/s.zarr/train/topk_values/c/NOTES.txt")
    create_store(url, make_spec(k=4), overwrite=True)
    assert TargetStore(url).spec.k == 4 and len(TargetStore(url).progress().missing()) == 8


def test_a_damaged_root_is_refused_and_an_interrupted_creation_finished(tmp_path, reference):
    url = tmp_path / "s.zarr"
    assert invoke(*PRE, "--out", url).exit_code == 0
    root = (url / "zarr.json").read_bytes()
    (url / "zarr.json").write_bytes(root[: len(root) // 2])  # truncated by a crash or a tool
    before = tree(url)
    one_line(invoke(*PRE, "--out", url), "zarr.json is unreadable")
    one_line(invoke(*PRE, "--out", url, "--overwrite"), "zarr.json is unreadable")
    one_line(invoke("inspect", url))
    assert tree(url) == before

    from deit_pipe.storage.format import CREATING_KEY
    from deit_pipe.storage.overwrite import write_root

    write_root(str(url), {CREATING_KEY: {"since": "then"}})  # killed while laying out
    one_line(invoke("inspect", url), "creation was interrupted")
    assert invoke(*PRE, "--out", url).exit_code == 0
    same_store(url, reference)


def test_a_lost_chunk_is_an_error_everywhere_and_repair_restores_it(tmp_path, reference):
    url = tmp_path / "s.zarr"
    assert invoke(*PRE, "--out", url).exit_code == 0
    (url / "train/topk_indices/c/0/0/0").unlink()
    with pytest.raises(StoreCorruptError, match="chunk file train/topk_indices/c/0/0/0 is missing"):
        TargetStore(str(url)).read_epoch(0)
    verify = invoke("verify", url, "--sample", "4", "--loader-workers", "0")
    assert verify.exit_code == 1 and "train/topk_indices epoch 0 shard 0" in verify.output
    train = invoke(
        "train", "--store", url, "--out", tmp_path / "run", "--epochs", "2", "--batch-size", "64",
        "--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32",
        "--num-heads", "2", "--max-steps", "1",
    )  # fmt: skip
    one_line(train, "topk_indices epoch 0 shard 0", "--repair")
    (url / "val/checksum/c/0/0/0").unlink()  # the record itself lost
    with pytest.raises(StoreCorruptError, match="checksum record is missing"):
        TargetStore(str(url)).read_epoch(0, "val")
    repaired = invoke(*PRE, "--out", url, "--repair")
    assert repaired.exit_code == 0 and "2 shards" in repaired.output, repaired.output
    same_store(url, reference)


def test_repair_recomputes_an_epoch_whose_chunk_fails_to_decode(tmp_path, reference):
    url = tmp_path / "s.zarr"
    assert invoke(*PRE, "--out", url).exit_code == 0
    chunk = url / "train/topk_values/c/0/0/0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # fails its crc32c: the epoch cannot be read at all
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError):
        TargetStore(str(url)).read_epoch(0)
    repaired = invoke(*PRE, "--out", url, "--repair")
    assert repaired.exit_code == 0, repaired.output
    same_store(url, reference)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(k=3),
        lambda m: m.update(temperatures=[1.0, 2.0]),
        lambda m: m["teacher"].update(name="regnety_160"),
        lambda m: m["plan"].update(epochs=1),
    ],
    ids=["k", "temperatures", "teacher", "epochs"],
)
def test_every_edit_to_the_job_description_is_caught(tmp_path, reference, edit):
    import shutil

    url = tmp_path / "s.zarr"
    shutil.copytree(reference, url)
    doc = json.loads((url / "zarr.json").read_text())
    edit(doc["attributes"]["deit_pipe"])
    (url / "zarr.json").write_text(json.dumps(doc))
    one_line(invoke("inspect", url), "edited or damaged")
    one_line(invoke(*PRE, "--out", url), "edited or damaged", "--overwrite")


def test_an_edited_array_shape_is_caught(tmp_path, reference):
    import shutil

    url = tmp_path / "s.zarr"
    shutil.copytree(reference, url)
    meta = url / "train/fingerprint/zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] = 5  # five epochs, where two were written
    meta.write_text(json.dumps(doc))
    one_line(invoke("inspect", url), "train/fingerprint/zarr.json was edited or damaged")


def test_damaged_side_files_are_one_line_and_a_rerun_rewrites_them(tmp_path, reference):
    import shutil

    url = tmp_path / "s.zarr"
    shutil.copytree(reference, url)
    (url / "manifest.parquet").write_bytes(b"PAR1 not really")
    one_line(invoke("inspect", url), "manifest.parquet is damaged")
    assert invoke(*PRE, "--out", url).exit_code == 0
    assert invoke("inspect", url).exit_code == 0


def _limited(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
def test_a_full_disk_loses_nothing_and_the_rerun_resumes(tmp_path, reference):
    url = tmp_path / "s.zarr"
    args = [CLI, *PRE, "--out", str(url), "--dask-workers", "1"]  # through a dask worker
    failed = subprocess.run(args, capture_output=True, text=True, preexec_fn=_limited(4000))
    lines = [ln for ln in failed.stderr.splitlines() if ln.strip()]
    assert failed.returncode == 1 and len(lines) == 1, failed.stderr
    assert "file too large" in lines[0] and "Traceback" not in failed.stdout + failed.stderr
    assert invoke(*PRE, "--out", url).exit_code == 0  # the same command, no limit: resumes
    same_store(url, reference)

    manifest = (url / "manifest.parquet").read_bytes()  # a rerun on a complete store …
    again = subprocess.run(
        [CLI, *PRE, "--out", str(url)], capture_output=True, text=True, preexec_fn=_limited(300)
    )
    assert again.returncode == 1 and "file too large" in again.stderr, again.stderr
    assert (url / "manifest.parquet").read_bytes() == manifest  # … never truncates its files
    assert invoke("inspect", url).exit_code == 0


# Another job holding a lock, as `storage.lock` takes it: flock on DIR/.deit-pipe.lock and
# its holder written in the file (plain Python: starting in a blink, unlike torch).
HOLD = """
import fcntl, json, os, sys
fd = os.open(os.path.join(sys.argv[1], ".deit-pipe.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
holder = {"purpose": sys.argv[2], "host": "here", "pid": os.getpid(), "since": "now"}
os.pwrite(fd, json.dumps(holder).encode(), 0)
print("held", flush=True)
sys.stdin.read()  # held until the test kills it: no time after which it lets go
"""


def _holder(path: Path, purpose: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), purpose],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_first(tmp_path, reference):
    import shutil

    url = tmp_path / "s.zarr"
    shutil.copytree(reference, url)
    before = tree(url)
    holder = _holder(url, "precompute")
    try:
        refusal = invoke(*PRE, "--out", url, "--plan-seed", "1", "--overwrite")
        one_line(refusal, "in use by precompute", f"pid {holder.pid}")
        assert tree(url) == before  # the first job's store is untouched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert invoke(*PRE, "--out", url).exit_code == 0  # kill -9 left no stale lock

    run = tmp_path / "run"
    run.mkdir()
    holder = _holder(run, "train")
    try:
        train = invoke(
            "train", "--store", url, "--out", run, "--epochs", "1", "--batch-size", "64",
            "--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32",
            "--num-heads", "2", "--max-steps", "1",
        )  # fmt: skip
        one_line(train, "run directory is in use by train", f"pid {holder.pid}")
        assert not (run / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_an_object_store_lease_refuses_a_second_writer_until_released_or_expired():
    url = "memory://leases/s.zarr"
    with WriterLock(url, "precompute"), pytest.raises(LockedError, match="in use by"):
        WriterLock(url, "precompute").__enter__()
    with WriterLock(url, "precompute"):  # released: free again
        pass
    stale = WriterLock(url, "precompute", ttl=0.01)
    stale.local = False
    stale.fs.pipe_file(stale.path, json.dumps({**stale.holder, "expires": 0, "pid": -1}).encode())
    with WriterLock(url, "precompute"):  # an expired lease is taken over
        pass
