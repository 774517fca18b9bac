"""The data cache (`--data-cache DIR`): local copies of a remote dataset's files, against a
real S3-protocol server (moto). The cache owns its folder (never deletes what it did not
write), proves each copy by its bytes, and keeps its cap while processes share it."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import s3fs
from click.testing import CliRunner

from benchmarks.layouts import write_parquet
from deit_pipe.cli import main
from deit_pipe.data.sources.cache import INDEX, DataCache
from deit_pipe.data.sources.files import Root
from deit_pipe.errors import DataError
from deit_pipe.outputs import mark_output
from tests.cli_utils import one_line
from tests.helpers import checksums


def _copies(folder) -> list:
    return [p for p in folder.iterdir() if len(p.name) == 32]


def _shards(s3, prefix: str, count: int = 3) -> dict[str, bytes]:
    fs = s3fs.S3FileSystem(**s3, skip_instance_cache=True)
    shards = {f"s{i}.bin": bytes([i]) * (1000 + i) for i in range(count)}
    for name, data in shards.items():
        fs.pipe(f"stores/{prefix}/{name}", data)
    return shards


def _read_all(s3, prefix: str, cache: DataCache, names) -> dict[str, bytes]:
    root = Root(f"s3://stores/{prefix}", s3, cache)
    whole = {name: root.read(name) for name in names}
    assert all(root.read(n, 10, 20) == whole[n][10:20] for n in names)  # kept-open copies
    return whole


def test_data_cache_fetches_once_refetches_what_changed_and_keeps_its_cap(s3, tmp_path, caplog):
    fs = s3fs.S3FileSystem(**s3, skip_instance_cache=True)
    shards = {f"s{i}.bin": bytes([i]) * (1000 + i) for i in range(3)}
    for name, data in shards.items():
        fs.pipe(f"stores/cached/{name}", data)
    cache_dir = tmp_path / "cache"

    def read_all(cache: DataCache) -> dict[str, bytes]:
        root = Root("s3://stores/cached", s3, cache)
        whole = {name: root.read(name) for name in shards}
        assert all(root.read(n, 10, 20) == whole[n][10:20] for n in shards)  # kept-open copies
        return whole

    cold = DataCache(cache_dir)
    assert read_all(cold) == shards and cold.fetched == sum(map(len, shards.values()))
    warm = DataCache(cache_dir)  # a later run: checked against the source, not fetched
    assert read_all(warm) == shards and warm.fetched == 0
    # Same size, new bytes (a new ETag): refused and read again, with a warning naming it.
    shards["s1.bin"] = b"\xff" * len(shards["s1.bin"])
    fs.pipe("stores/cached/s1.bin", shards["s1.bin"])
    again = DataCache(cache_dir)
    with caplog.at_level("WARNING"):
        assert read_all(again) == shards and again.fetched == len(shards["s1.bin"])
    assert "s3://stores/cached/s1.bin changed at the source" in caplog.text
    # A local copy cut short (a full disk, a crash) is not trusted either.
    copy = next(p for p in cache_dir.iterdir() if len(p.name) == 32 and p.stat().st_size == 1000)
    copy.write_bytes(b"\0" * 10)
    fixed = DataCache(cache_dir)
    assert read_all(fixed) == shards and fixed.fetched == 1000
    # The cap: least recently used copies go; a file over the cap is read remotely.
    small = DataCache(tmp_path / "small", limit=2100)
    assert read_all(small) == shards
    kept = [p for p in (tmp_path / "small").iterdir() if len(p.name) == 32]
    assert len(kept) == 2 and sum(p.stat().st_size for p in kept) <= 2100
    tiny = DataCache(tmp_path / "tiny", limit=500)
    assert read_all(tiny) == shards and tiny.fetched == 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data-cache-size", "12Q"], "--data-cache-size '12Q'"),
        (["--data-cache-size", "-5G"], "--data-cache-size '-5G'"),
        (["--data-cache-size", "10G"], "--data-cache-size needs --data-cache"),
        (["--data-cache", "{file}"], "not a writable folder"),
    ],
)
def test_bad_data_cache_flags_are_one_line(tmp_path, args, needle):
    user = tmp_path / "notes.txt"
    user.write_text("mine")
    args = [a.replace("{file}", str(user)) for a in args]
    if args[0] == "--data-cache-size" and needle.startswith("--data-cache-size '"):
        args = ["--data-cache", str(tmp_path / "c"), *args]
    result = CliRunner().invoke(main, ["scan", "--data", "digits", *args])
    assert result.exit_code != 0, result.output
    line = result.output.strip().splitlines()[-1]
    assert needle in line and "Traceback" not in result.output, result.output
    assert user.read_text() == "mine"


def _flip_an_image_bit(shard) -> bytes:
    """Flip one bit in the middle of the shard's first image as Parquet reads it (not in a
    page's statistics, which copy it): the same size, still a readable file."""
    import pyarrow.parquet as pq

    first = pq.read_table(shard)["image"][0].as_py()["bytes"]
    middle = first[len(first) // 2 : len(first) // 2 + 16]  # entropy data: a literal run
    data, start = bytearray(shard.read_bytes()), 0
    while (at := data.find(middle, start)) >= 0:
        data[at + 8] ^= 0x01
        shard.write_bytes(bytes(data))
        if pq.read_table(shard)["image"][0].as_py()["bytes"] != first:
            return bytes(data)
        data[at + 8] ^= 0x01
        start = at + 1
    raise AssertionError(f"no image bytes found in {shard}")


@pytest.fixture
def s3_parquet(s3, imagefolder, tmp_path) -> str:
    """The `imagefolder` fixture's images as Parquet shards on S3: a `--data` spec."""
    write_parquet(imagefolder, tmp_path / "pq")
    fs = s3fs.S3FileSystem(**s3, skip_instance_cache=True)
    prefix = f"stores/pq-{tmp_path.name}"
    fs.put(str(tmp_path / "pq"), prefix, recursive=True)
    return f"parquet:s3://{prefix}"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_folder_holding_user_files_is_refused_and_left_as_it_is(s3, s3_parquet, tmp_path, how):
    folder = tmp_path / "mine"
    folder.mkdir()
    photo = folder / "IMG_20240101_123456_photo_01.jpg"  # 32 characters, as a copy's key
    photo.write_bytes(b"\xff\xd8 a photo")
    (folder / f"{photo.name}.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")
    os.utime(photo, (0, 0))  # the oldest entry: the first an eviction would take
    before = checksums(folder)
    args = ["scan", "--data", s3_parquet, "--data-cache-size", "60K"]
    args += ["--data-storage-options", json.dumps(s3)]
    env = {"DEIT_PIPE_DATA_CACHE": str(folder)} if how == "env" else {}
    if how == "flag":
        args += ["--data-cache", str(folder)]
    line = one_line(CliRunner().invoke(main, args, env=env), str(folder), photo.name)
    assert "did not write" in line
    assert checksums(folder) == before and sorted(os.listdir(folder)) == sorted(before)


def test_an_empty_cache_path_is_refused_and_the_current_folder_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "thesis.pdf").write_bytes(b"%PDF-1.7 mine")
    before = checksums(tmp_path)
    result = CliRunner().invoke(main, ["scan", "--data", "digits", "--data-cache", ""])
    one_line(result, "--data-cache ''", "empty path")
    assert checksums(tmp_path) == before and os.listdir(tmp_path) == ["thesis.pdf"]


def test_a_cache_inside_a_store_or_another_output_is_refused(tmp_path):
    store = tmp_path / "s.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    with pytest.raises(DataError, match="inside deit-pipe's target store"):
        DataCache(store / "cache")
    audit = tmp_path / "audit"
    audit.mkdir()
    mark_output(audit, "audit report")
    with pytest.raises(DataError, match="audit report, not a data cache"):
        DataCache(audit)
    with pytest.raises(DataError, match="inside deit-pipe's audit report"):
        DataCache(audit / "cache")
    assert not (store / "cache").exists() and not (audit / "cache").exists()


def test_eviction_deletes_only_the_copies_the_cache_wrote(s3, tmp_path):
    shards = _shards(s3, "owned")
    folder = tmp_path / "cache"
    first = {n: shards[n] for n in ("s0.bin", "s1.bin")}
    assert _read_all(s3, "owned", DataCache(folder), first) == first
    # A file named as a copy that the cache did not write (not in its index), oldest of all.
    planted = folder / ("ab" * 16)
    planted.write_bytes(b"not a copy" * 500)
    os.utime(planted, (0, 0))
    small = DataCache(folder, limit=2100)
    assert _read_all(s3, "owned", small, shards) == shards
    assert planted.read_bytes() == b"not a copy" * 500
    indexed = set((folder / INDEX).read_text().split())
    assert planted.name not in indexed and len(indexed & {p.name for p in _copies(folder)}) == 2
    # Later, a user's file in the cache: the cache refuses to open, and deletes nothing.
    (folder / "notes.txt").write_text("mine")
    before = checksums(folder)
    with pytest.raises(DataError, match="holds 'notes.txt'"):
        DataCache(folder, limit=10)
    assert checksums(folder) == before


def test_a_damaged_copy_is_fetched_again_naming_the_copy(s3, tmp_path, caplog):
    shards = _shards(s3, "damaged")
    folder = tmp_path / "cache"
    cache = DataCache(folder)
    assert _read_all(s3, "damaged", cache, shards) == shards
    for process in ("a later run", "a worker of the same run"):
        copy = next(p for p in _copies(folder) if p.stat().st_size == 1001)
        data = bytearray(copy.read_bytes())
        data[500] ^= 0x10  # one bit, the same size: the ETag and size checks cannot see it
        copy.write_bytes(bytes(data))
        again = DataCache(folder) if process == "a later run" else pickle.loads(pickle.dumps(cache))
        caplog.clear()
        fetched = again.fetched
        with caplog.at_level("WARNING"):
            assert _read_all(s3, "damaged", again, shards) == shards, process
        assert again.fetched - fetched == 1001, process
        assert f"the copy {copy} of s3://stores/damaged/s1.bin is damaged" in caplog.text


def test_an_older_cache_folder_is_adopted_and_its_unproved_copies_fetched_again(s3, tmp_path):
    shards = _shards(s3, "older", count=2)
    folder = tmp_path / "cache"
    _read_all(s3, "older", DataCache(folder), shards)
    for name in (".deit-pipe.output", INDEX):  # as an earlier deit-pipe left it
        (folder / name).unlink()
    for side in folder.glob("*.json"):
        record = json.loads(side.read_text())
        del record["sha256"], record["run"]
        side.write_text(json.dumps(record))
    adopted = DataCache(folder, limit=2100)
    assert set((folder / INDEX).read_text().split()) == {p.name for p in _copies(folder)}
    assert _read_all(s3, "older", adopted, shards) == shards
    assert adopted.fetched == 1000 + 1001  # no hash to prove them by


_SHARER = """
import hashlib, json, sys
from deit_pipe.data.sources.cache import DataCache
from deit_pipe.data.sources.files import Root
opts, folder, limit, names, rounds = json.loads(sys.argv[1])
cache = DataCache(folder, limit)
root = Root("s3://stores/shared", opts, cache)
for r in range(rounds):
    for name in names[r % 2 :] + names[: r % 2]:
        whole = root.read(name)
        assert whole == bytes([int(name[1])]) * (1000 + int(name[1])), name
        cache = DataCache(folder, limit)  # each round a new run: HEAD, prove, maybe evict
        root = Root("s3://stores/shared", opts, cache)
print("ok")
"""


def test_two_processes_share_one_cache_while_one_evicts(s3, tmp_path):
    shards = _shards(s3, "shared", count=4)
    folder = tmp_path / "cache"
    jobs = []
    for limit in (2100, 10**9):  # the first evicts all the time, the second never
        arg = json.dumps([s3, str(folder), limit, sorted(shards), 6])
        cmd = [sys.executable, "-c", textwrap.dedent(_SHARER), arg]
        jobs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for job in jobs:
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0 and out.strip() == b"ok", err.decode()[-2000:]
    assert all(p.read_bytes()[:1] in {bytes([i]) for i in range(4)} for p in _copies(folder))


def test_verify_through_a_damaged_cache_copy_fetches_it_again(s3, s3_parquet, tmp_path):
    opts = json.dumps(s3)
    folder, store = tmp_path / "cache", tmp_path / "s.zarr"
    made = CliRunner().invoke(
        main,
        [
            "precompute", "--data", s3_parquet, "--out", str(store), "--epochs", "1",
            "--teacher-model", "regnety_002", "--teacher-random-init", "--input-size", "32",
            "--dask-workers", "0", "--top-k", "3", "--repeats", "1", "--order", "global",
            "--data-cache", str(folder), "--data-storage-options", opts,
        ],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    damaged = {copy: _flip_an_image_bit(copy) for copy in _copies(folder)}
    verified = CliRunner().invoke(
        main,
        [
            "verify", str(store), "--all", "--loader-workers", "0", "--data-cache", str(folder),
            "--data-storage-options", opts,
        ],
    )  # fmt: skip
    assert verified.exit_code == 0, verified.output
    assert all(copy.read_bytes() != data for copy, data in damaged.items())  # fetched again


def test_a_link_in_the_cache_folder_is_refused_and_its_target_left_as_it_is(tmp_path):
    """A symlink named as a copy (or a folder linked as the cache itself): the cache would
    evict through it, so it is foreign, and what it points at keeps its bytes."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.pdf").write_bytes(b"%PDF-1.7 mine")
    before = checksums(mine)
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / ("ab" * 16)).symlink_to(mine / "thesis.pdf")
    with pytest.raises(DataError, match=f"holds '{'ab' * 16}'"):
        DataCache(folder, limit=10)
    linked = tmp_path / "linked"
    linked.symlink_to(mine, target_is_directory=True)
    with pytest.raises(DataError, match="holds 'thesis.pdf'"):
        DataCache(linked, limit=10)
    assert checksums(mine) == before and os.listdir(mine) == ["thesis.pdf"]
