"""Issue 32, second slice: one dataset rule for every reader, complete datasets, checked
checkpoints, limits before allocation, one-line errors. Each: the reproducer, then the
one-line refusal, then nothing lost."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_utils import invoke, one_line

TINY = ["--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"]
TINY += ["--num-heads", "2"]


def pre(data: str) -> list:
    return ["precompute", "--data", data, "--teacher-model", "regnety_002", "--random-init",
            "--epochs", "1", "--batch-size", "32", "--dask-workers", "0", "--preset", "small",
            "--input-size", "32", "--top-k", "3"]  # fmt: skip


@pytest.fixture
def trained(imagefolder, tmp_path) -> tuple[Path, Path, Path]:
    """(dataset root, store, run): an imagefolder store with val, and a one-step run."""
    store, run = tmp_path / "s.zarr", tmp_path / "run"
    done = invoke(*pre(f"imagefolder:{imagefolder}"), "--out", store)
    assert done.exit_code == 0, done.output
    train = ["train", "--store", store, "--out", run, *TINY, "--epochs", "1"]
    done = invoke(*train, "--batch-size", "6", "--max-steps", "1")
    assert done.exit_code == 0, done.output
    return imagefolder, store, run


def replace_same_size(path: Path) -> None:
    """Another picture in the same number of bytes (a flat JPEG, padded after its end
    marker, which decoders ignore): the dataset identity (paths, sizes) stays the same."""
    size = path.stat().st_size
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(path, format="JPEG")
    data = path.read_bytes()
    assert len(data) < size
    path.write_bytes(data + bytes(size - len(data)))


def test_audit_and_eval_refuse_a_val_image_replaced_after_precompute(trained, tmp_path):
    root, store, run = trained
    assert invoke("eval", "--checkpoint", run).exit_code == 0
    big = invoke("eval", "--checkpoint", run, "--input-size", "100000")  # no 30 GB ViT first
    one_line(big, "--input-size must be in [8, 4096], got 100000")
    replace_same_size(root / "val" / "dog" / "v1.jpg")
    out = tmp_path / "audit"
    audit = ["audit", "--store", store, "--run", run, "--train-views", "0", "--out", out]
    one_line(invoke(*audit), "not the dataset", "dog/v1.jpg", "differs")
    assert not out.exists()
    one_line(invoke("eval", "--checkpoint", run), "not the dataset", "dog/v1.jpg")


def flip_a_weight_byte(checkpoint: Path) -> None:
    """One bit of the model's largest matrix, where torch.save stored its bytes (a matrix:
    a conv weight is saved in channels-last order)."""
    import torch

    state = torch.load(checkpoint, weights_only=True)
    tensor = max((t for t in state["model"].values() if t.ndim <= 2), key=lambda t: t.numel())
    raw = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    data = bytearray(checkpoint.read_bytes())
    at = data.find(raw) + len(raw) // 2
    assert at > len(raw) // 2
    data[at] ^= 0x10
    checkpoint.write_bytes(bytes(data))


def test_a_flipped_checkpoint_byte_is_refused_by_eval_audit_and_resume(trained, tmp_path):
    import torch

    _, store, run = trained
    checkpoint = run / "checkpoint.pt"
    flip_a_weight_byte(checkpoint)
    damaged = checkpoint.read_bytes()
    one_line(invoke("eval", "--checkpoint", run), str(checkpoint), "damaged")
    audit = ["audit", "--store", store, "--run", run, "--train-views", "0"]
    one_line(invoke(*audit, "--out", tmp_path / "a"), str(checkpoint), "damaged")
    train = ["train", "--store", store, "--out", run, *TINY, "--epochs", "1"]
    resumed = invoke(*train, "--batch-size", "6", "--max-steps", "2", "--resume")
    one_line(resumed, str(checkpoint), "damaged")
    assert checkpoint.read_bytes() == damaged  # kept for the user to inspect, not replaced
    # A checkpoint written before checksums loads as it always did.
    state = torch.load(checkpoint, weights_only=True)
    state.pop("checksum")
    torch.save(state, checkpoint)
    assert invoke("eval", "--checkpoint", run).exit_code == 0


PRE_DIGITS = ["precompute", "--data", "digits", "--teacher-model", "regnety_002", "--random-init"]
PRE_DIGITS += ["--out", "s.zarr", "--epochs", "1", "--dask-workers", "0"]
HUGE = str(10**12)


@pytest.mark.parametrize(
    "args,needle",
    [
        ([*PRE_DIGITS, "--input-size", "100000", "--dry-run"], "--input-size must be in [8, 4096]"),
        ([*PRE_DIGITS, "--batch-size", HUGE, "--dry-run"], "--batch-size"),
        ([*PRE_DIGITS, "--input-size", "4096", "--batch-size", "65536", "--dry-run"], "GiB"),
        ([*PRE_DIGITS[:-4], "--dask-workers", "0", "--epochs", HUGE, "--dry-run"], "--epochs"),
        ([*PRE_DIGITS, "--shard-views", str(2**30), "--dry-run"], "--shard-views must be ≤"),
        ([*PRE_DIGITS, "--loader-workers", "100000"], "--loader-workers must be ≤"),
        (["train", "--store", "none.zarr", "--out", "run", "--img-size", "100000"], "--img-size"),
        (["train", "--store", "none.zarr", "--out", "run", "--batch-size", HUGE], "--batch-size"),
        (["views", "--data", "digits", "--input-size", "100000"], "--input-size"),
        (["views", "--data", "digits", "--epoch", HUGE], "--epoch"),
        (["verify", "none.zarr", "--sample", "-1"], "--sample"),
        (["verify", "none.zarr", "--loader-workers", "-1"], "--loader-workers"),
        (["verify", "none.zarr", "--loader-workers", "100000"], "--loader-workers"),
        (["scan", "--data", "digits", "--threads", "0"], "--threads"),
        (
            ["audit", "--store", "none.zarr", "--run", "r", "--out", "a", "--train-views", "-1"],
            "--train-views",
        ),  # fmt: skip
        (
            ["scan", "--data", "digits", "--storage-options", '{"client_kwargs":5}'],
            "--storage-options 'client_kwargs' must be a JSON object, got 5",
        ),  # fmt: skip
        (["verify", "none.zarr", "--storage-options", '{"config_kwargs":[1]}'], "config_kwargs"),
    ],
)
def test_numbers_that_size_allocations_are_bounded_in_one_line(tmp_path, monkeypatch, args, needle):
    """Each is refused before anything is allocated or created (the dry run of
    --input-size 100000 took 23.6 GB before)."""
    monkeypatch.chdir(tmp_path)
    one_line(invoke(*args), needle)
    assert list(tmp_path.iterdir()) == []


def test_a_hub_parquet_set_with_a_missing_numbered_shard_is_refused_naming_it(
    imagefolder, tmp_path
):
    from benchmarks.layouts import write_parquet

    out = tmp_path / "pq"
    write_parquet(imagefolder, out, shards=2)
    assert invoke("scan", "--data", f"parquet:{out}").exit_code == 0
    (out / "data" / "train-00001-of-00002.parquet").unlink()
    kept = sorted(p.name for p in (out / "data").iterdir())
    one_line(invoke("scan", "--data", f"parquet:{out}"), "train-00001-of-00002.parquet is missing")
    store = tmp_path / "s.zarr"
    one_line(invoke(*pre(f"parquet:{out}"), "--out", store), "train-00001-of-00002.parquet")
    assert not store.exists() and sorted(p.name for p in (out / "data").iterdir()) == kept


def test_files_a_source_does_not_read_are_counted_and_named_in_scan_and_the_log(
    imagefolder, tmp_path, monkeypatch, caplog
):
    import io
    import json
    import tarfile

    from benchmarks.layouts import write_wds
    from deit_pipe.data import open_source

    (imagefolder / "train" / "cat" / "x.gif").write_bytes(b"GIF89a")
    (imagefolder / "train" / "cat" / ".DS_Store").write_bytes(b"")  # hidden: no data
    result = invoke("scan", "--data", f"imagefolder:{imagefolder}")
    assert result.exit_code == 0 and "1 ignored" in result.output
    assert "train/cat/x.gif: unsupported extension .gif" in result.output
    with caplog.at_level("WARNING"):
        for _ in range(2):  # opened twice, said once
            open_source(f"imagefolder:{imagefolder}")
    assert sum("x.gif" in r.getMessage() for r in caplog.records) == 1

    monkeypatch.setenv("DEIT_PIPE_CACHE", str(tmp_path / "cache"))
    for name in ("x.gif", ".DS_Store"):  # the tar is made of the images only
        (imagefolder / "train" / "cat" / name).unlink()
    wds = tmp_path / "wds"
    write_wds(imagefolder, wds)
    with tarfile.open(wds / "train-000000.tar", "a") as tar:  # a second image for key 000000
        member = tarfile.TarInfo("000000.png")
        member.size = 4
        tar.addfile(member, io.BytesIO(b"\x89PNG"))
    result = invoke("scan", "--data", f"wds:{wds}", "--json")
    assert result.exit_code == 0, result.output
    ignored = json.loads(result.output)["ignored"]
    assert ignored == [
        {"path": "train-000000.tar:000000.png", "reason": "repeats an earlier image's key"}
    ]
