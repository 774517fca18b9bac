import json
import multiprocessing as mp
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from deit_pipe.cli import main
from deit_pipe.data import ViewConfig, open_source
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.errors import (
    StoreCorruptError,
    StoreFormatError,
    StoreIncompleteError,
    StoreMismatchError,
)
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.storage import StoreWriter, TargetStore, create_store, write_manifest
from deit_pipe.student.targets import stored_batch
from tests.store_utils import fill, fill_all, logits, make_spec, write_shards_in_process


def softmax(z, tau):
    e = np.exp(z / tau - (z / tau).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("tau", [1.0, 3.0])
# float16 logits carry ~2^-11 relative error, so their probabilities are exact only to ~0.5%.
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float16", 5e-3)])
def test_round_trip_topk_and_tail_mass_are_exact(tau, dtype, tol):
    spec = make_spec(dtype=dtype)
    fill_all(f"memory://rt-{dtype}-{tau}", spec)
    store = TargetStore(f"memory://rt-{dtype}-{tau}")
    z = np.concatenate(
        [logits("train", 1, range(s, min(s + 32, 100)), 20) for s in range(0, 100, 32)]
    )
    p = softmax(z, tau)
    top = np.argsort(-z, axis=1)[:, :5]
    epoch = store.read_epoch(1)
    batch = stored_batch(epoch, np.arange(100), tau, True, torch.device("cpu"))
    soft = batch.soft.numpy()
    np.testing.assert_allclose(
        np.take_along_axis(soft, top, 1), np.take_along_axis(p, top, 1), atol=tol, rtol=tol
    )
    tail_true = 1 - np.take_along_axis(p, top, 1).sum(1)
    mask = np.ones_like(p, bool)
    np.put_along_axis(mask, top, False, axis=1)
    np.testing.assert_allclose(soft[mask].reshape(100, 15).sum(1), tail_true, atol=tol)
    np.testing.assert_allclose(
        soft[mask].reshape(100, 15), np.repeat(tail_true[:, None] / 15, 15, 1), atol=tol
    )
    np.testing.assert_allclose(soft.sum(1), 1, atol=1e-5)
    assert (batch.hard.numpy() == z.argmax(1)).all()


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_full_k_float32_equals_softmax(tau):
    spec = make_spec(classes=12, k=12)
    fill_all("memory://fullk", spec)
    z = logits("train", 0, range(0, 32), 12)
    soft = TargetStore("memory://fullk").read_epoch(0).soft(np.arange(32), tau).numpy()
    np.testing.assert_allclose(soft, softmax(z, tau), atol=1e-6)


def test_unstored_temperature_is_refused():
    fill_all("memory://tau", make_spec())
    with pytest.raises(StoreMismatchError, match="τ=2"):
        TargetStore("memory://tau").read_epoch(0).soft(np.arange(3), 2.0)


@pytest.mark.parametrize("scheme", ["path", "file://", "memory://"])
def test_local_file_and_memory_urls(tmp_path, scheme):
    url = {
        "path": str(tmp_path / "s.zarr"),
        "file://": f"file://{tmp_path}/s.zarr",
        "memory://": "memory://urls",
    }[scheme]
    fill_all(url, make_spec())
    store = TargetStore(url)
    assert store.progress().complete_epochs() == [0, 1] and store.progress().missing("val") == []


def _files(root: Path) -> dict[str, bytes]:
    """Every data object (a shard's completion time, `done_at`, differs on a rewrite)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "done_at" not in p.parts
    }


def test_concurrent_writers_and_idempotent_rewrite(tmp_path):
    url = str(tmp_path / "c.zarr")
    spec = make_spec(train=256, epochs=1, shard=32)
    create_store(url, spec)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=write_shards_in_process, args=(url, shards))
        for shards in ([0, 2, 4, 6], [1, 3, 5, 7])
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = TargetStore(url)
    assert store.progress().missing("train") == []
    reference = fill_all("memory://sequential", spec, skip={("val", 0, 0)})
    ref = TargetStore("memory://sequential").read_epoch(0)
    got = store.read_epoch(0)
    for name in ("values", "indices", "lse", "fingerprint"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    before = _files(tmp_path / "c.zarr")
    fill(StoreWriter(url), "train", 0, 3)
    assert _files(tmp_path / "c.zarr") == before
    assert reference.spec == spec


def test_incomplete_shard_is_missing_never_read(tmp_path):
    url = str(tmp_path / "i.zarr")
    writer = fill_all(url, make_spec(), skip={("train", 1, 2)})
    # A crash between the data and the done flag: data present, flag not set.
    writer.group["train"]["topk_values"][1, 64:96] = 1.0
    store = TargetStore(url)
    assert store.progress().missing() == [(1, 2)] and store.progress().complete_epochs() == [0]
    with pytest.raises(StoreIncompleteError, match="epoch 1 has unfinished shards"):
        store.read_epoch(1)
    with pytest.raises(StoreIncompleteError, match="epoch 1 is incomplete"):
        store.check_run(epochs=2)
    store.check_run(epochs=1)


def test_refusals_each_name_what_differs(tmp_path):
    url = str(tmp_path / "r.zarr")
    fill_all(url, make_spec())
    store = TargetStore(url)

    def source(fingerprint: str):  # what check_run asks of a data.Source
        return SimpleNamespace(data="fake:test", fingerprint=lambda: fingerprint, splits={})

    store.check_run(source=source("f" * 32), recipe=make_spec().recipe, epochs=2)
    with pytest.raises(StoreMismatchError, match="made for dataset fake:test"):
        store.check_run(source=source("0" * 32))
    with pytest.raises(StoreMismatchError, match="input_size = 32 in the store, 64 here"):
        store.check_run(recipe={**make_spec().recipe, "input_size": 64})
    with pytest.raises(StoreIncompleteError, match="holds 2 training epochs but this run needs 5"):
        store.check_run(epochs=5)
    store.check_run(epochs=5, cycle_epochs=True)
    assert store.stored_epoch(3, cycle_epochs=True) == 1
    with pytest.raises(StoreIncompleteError, match="--cycle-epochs"):
        store.stored_epoch(3)
    group = zarr.open_group(url, mode="r+")
    meta = group.attrs["deit_pipe"]
    group.attrs["deit_pipe"] = {**meta, "format_version": 4}
    with pytest.raises(StoreFormatError, match="format version 4; this deit-pipe reads version 3"):
        TargetStore(url)
    with pytest.raises(StoreFormatError, match="no target store"):
        TargetStore(str(tmp_path / "nothing.zarr"))


def test_flipped_byte_is_corruption_not_numbers(tmp_path):
    url = str(tmp_path / "x.zarr")
    fill_all(url, make_spec())
    shard = tmp_path / "x.zarr" / "train" / "topk_values" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[40] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = TargetStore(url)
    store.read_epoch(0)
    with pytest.raises(StoreCorruptError, match="train/topk_values"):
        store.read_epoch(1)


def test_same_job_resumes_other_job_refused(tmp_path):
    url = str(tmp_path / "j.zarr")
    fill_all(url, make_spec(), skip={("train", 0, 1)})
    again = create_store(url, make_spec())
    assert TargetStore(url).progress().missing() == [(0, 1)]
    fill(again, "train", 0, 1)
    with pytest.raises(StoreMismatchError, match="differs in k"):
        create_store(url, make_spec(k=4))
    create_store(url, make_spec(k=4), overwrite=True)
    assert len(TargetStore(url).progress().missing()) == 8


def test_prefetch_serves_next_epoch():
    fill_all("memory://pf", make_spec())
    store = TargetStore("memory://pf")
    first = store.epoch(0, prefetch=1)
    assert ("train", 1) in store._pending
    second = store.epoch(1)
    np.testing.assert_array_equal(second.fingerprint, store.read_epoch(1).fingerprint)
    assert first.epoch == 0 and second.epoch == 1


def test_inspect_json_and_manifest(tmp_path):
    url = str(tmp_path / "m.zarr")
    source = open_source("digits")
    spec = make_spec(classes=10, k=3, train=1437, val=360, epochs=1, shard=512)
    spec = type(spec)(**{**spec.__dict__, "dataset": {**spec.dataset, "classes": source.classes}})
    writer = fill_all(url, spec)
    write_manifest(writer, source)
    result = CliRunner().invoke(main, ["inspect", url, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    for key in (
        "format_version",
        "k",
        "temperatures",
        "epochs",
        "views_per_epoch",
        "complete",
        "missing_shards",
        "bytes_on_disk",
        "bytes_per_view",
        "topk_mass_mean",
    ):
        assert key in info
    assert info["complete"] and info["views_per_epoch"] == 1437 and 0 < info["topk_mass_mean"] <= 1
    assert 0 <= info["val_teacher_top1"] <= 1
    import pyarrow.parquet as pq

    manifest = pq.read_table(tmp_path / "m.zarr" / "manifest.parquet")
    assert manifest.num_rows == 1797 and set(manifest.column_names) >= {
        "index",
        "path",
        "label",
        "split",
        "bytes",
    }
    text = CliRunner().invoke(main, ["inspect", url])
    assert text.exit_code == 0 and "bytes/view" in text.output
    bad = CliRunner().invoke(main, ["inspect", str(tmp_path / "none.zarr")])
    assert bad.exit_code == 1 and "no target store" in bad.output


def test_a_small_dataset_store_is_not_padded(tmp_path):
    """Default options size chunks from the split: digits epochs are 1,437 views, not 4,096."""
    from deit_pipe.pipeline.precompute import precompute
    from deit_pipe.pipeline.tasks import Job
    from deit_pipe.teacher import TeacherConfig

    url = tmp_path / "digits.zarr"
    job = Job(
        url=str(url),
        data="digits",
        recipe=Recipe(view=ViewConfig.for_source(open_source("digits"))),
        teacher=TeacherConfig("regnety_002", random_init=True),
    )
    precompute(job, StoreRequest(epochs=2, splits=("train",)), workers=0)
    store = TargetStore(str(url))
    assert store.meta["layout"]["train"] == {"shard_views": 1437, "chunk_views": 1437}
    assert zarr.open_group(str(url))["train/fingerprint"].chunks == (1, 1437)
    train_bytes = sum(p.stat().st_size for p in (url / "train").rglob("*") if p.is_file())
    assert train_bytes / (2 * 1437) <= 36
