"""Datasets where users keep them: Parquet (the Hub's layout) and WebDataset shards, local or
behind a URL, read by random access and identified by content: a set missing a numbered shard,
or an image replaced after precompute, is refused naming the file."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.layouts import write_parquet, write_wds
from deit_pipe.data import open_source, scan
from deit_pipe.errors import DataError
from deit_pipe.storage import TargetStore
from tests.cli_utils import invoke, one_line
from tests.run_utils import pre

PRE = ["precompute", "--teacher-model", "regnety_002", "--teacher-random-init", "--epochs", "1"]
PRE += ["--input-size", "32", "--dask-workers", "0", "--top-k", "3", "--repeats", "1"]
PRE += ["--order", "global"]  # one order for all three layouts (blocks: see test_block_order)
TINY = ["--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"]
TINY += ["--num-heads", "2", "--epochs", "1", "--batch-size", "8"]


@pytest.fixture
def layouts(imagefolder, tmp_path, monkeypatch) -> dict[str, str]:
    """One dataset (the `imagefolder` fixture's 24 images) in each layout, as specs."""
    monkeypatch.setenv("DEIT_PIPE_CACHE", str(tmp_path / "cache"))
    write_parquet(imagefolder, tmp_path / "pq")
    write_wds(imagefolder, tmp_path / "wds")
    return {
        "imagefolder": f"imagefolder:{imagefolder}",
        "parquet": f"parquet:{tmp_path / 'pq'}",
        "wds": f"wds:{tmp_path / 'wds'}",
    }


def test_three_layouts_hold_the_same_samples_and_make_the_same_views(layouts, tmp_path):
    sources = {kind: open_source(spec) for kind, spec in layouts.items()}
    reference = sources["imagefolder"]
    assert sources["parquet"].classes == reference.classes  # the Hub's ClassLabel names
    for split in ("train", "val"):
        a = reference.split(split)
        for kind in ("parquet", "wds"):
            b = sources[kind].split(split)
            assert b.labels.tolist() == a.labels.tolist(), kind
            for i in range(len(a)):
                assert np.array_equal(np.asarray(a.load(i)), np.asarray(b.load(i))), (kind, i)
    fingerprints = {}
    for kind, spec in layouts.items():
        url = tmp_path / f"{kind}.zarr"
        assert invoke(*PRE, "--data", spec, "--out", url).exit_code == 0
        store = TargetStore(str(url))
        fingerprints[kind] = {s: store.read_arrays(0, s)["fingerprint"] for s in ("train", "val")}
    for kind in ("parquet", "wds"):
        for split, stored in fingerprints[kind].items():
            assert np.array_equal(stored, fingerprints["imagefolder"][split]), (kind, split)


@pytest.mark.parametrize("kind", ["parquet", "wds"])
def test_precompute_train_audit_from_shards(layouts, tmp_path, kind):
    store, run = tmp_path / "s.zarr", tmp_path / "run"
    assert invoke(*PRE, "--data", layouts[kind], "--out", store).exit_code == 0
    trained = invoke("train", "--store", store, "--out", run, *TINY, "--distill", "hard")
    assert trained.exit_code == 0, trained.output
    audit = invoke("audit", "--store", store, "--run", run, "--out", tmp_path / "audit")
    assert audit.exit_code == 0, audit.output
    assert (tmp_path / "audit" / "agreement.json").exists()


def test_a_moved_copy_is_the_same_dataset_and_a_changed_image_is_not(layouts, tmp_path):
    store = tmp_path / "s.zarr"
    assert invoke(*PRE, "--data", layouts["wds"], "--out", store).exit_code == 0
    moved = tmp_path / "elsewhere"
    shutil.move(layouts["wds"].removeprefix("wds:"), moved)
    checked = invoke("verify", store, "--data", f"wds:{moved}", "--all", "--loader-workers", "0")
    assert checked.exit_code == 0, checked.output
    # The first image (hashed into the dataset's identity) rewritten with other pixels.
    shard = moved / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first = open_source(f"wds:{moved}").split("train").raw(1)
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            data = first if member.name == "000000.jpg" else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    refused = invoke("verify", store, "--data", f"wds:{moved}", "--loader-workers", "0")
    assert refused.exit_code != 0 and "dataset" in refused.output.lower(), refused.output


@pytest.mark.parametrize("kind", ["parquet", "wds"])
def test_a_corrupt_sample_is_named_by_shard_and_key_and_skipped(layouts, tmp_path, kind):
    broken = tmp_path / "broken"
    root = layouts[kind].partition(":")[2]
    if kind == "parquet":
        import pyarrow.parquet as pq

        path = broken / "data" / "train-00000-of-00002.parquet"
        shutil.copytree(root, broken)
        table = pq.read_table(path)
        images = table.column("image").to_pylist()
        images[2] = {"bytes": b"not a jpeg", "path": "2.jpg"}
        table = table.set_column(0, "image", [images])
        pq.write_table(table, path, row_group_size=4)
        name = "data/train-00000-of-00002.parquet:2"
    else:
        shutil.copytree(root, broken)
        with tarfile.open(broken / "train-000001.tar") as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(broken / "train-000001.tar", "w") as tar:
            for member, data in members:
                data = b"not a jpeg" if member.name == "000010.jpg" else data
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        name = "train-000001.tar:000010.jpg"
    spec = f"{kind}:{broken}"
    assert [path for path, _ in scan(open_source(spec)).bad] == [name]
    failed = invoke(*PRE, "--data", spec, "--out", tmp_path / "a.zarr")
    assert failed.exit_code == 1 and failed.output.splitlines()[-1].endswith(
        f"{name}: not an image format Pillow reads"
    ), failed.output
    skipped = invoke(*PRE, "--data", spec, "--out", tmp_path / "b.zarr", "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    assert TargetStore(str(tmp_path / "b.zarr")).skipped().to_pylist()[0]["path"] == name


def test_shards_that_cannot_be_read_are_one_line(tmp_path, layouts):
    with pytest.raises(DataError, match="no training shards"):
        open_source(f"parquet:{tmp_path}")
    wds = tmp_path / "w"
    shutil.copytree(layouts["wds"].removeprefix("wds:"), wds)
    (wds / "train-000001.tar").write_bytes(b"\0" * 100 + b"x" * 1000)
    one_line(invoke("scan", "--data", f"wds:{wds}"), "train-000001.tar")
    one_line(
        invoke("scan", "--data", f"parquet:{layouts['parquet'].partition(':')[2]}?label=nope"),
        "nope",
    )


@pytest.mark.parametrize("cut", ["half", "end blocks"])
def test_a_tar_shard_cut_short_is_refused_not_read_as_a_shorter_one(tmp_path, layouts, cut):
    wds = tmp_path / "w"
    shutil.copytree(layouts["wds"].removeprefix("wds:"), wds)
    shard = wds / "train-000001.tar"
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
        end = tar.offset  # where the end-of-archive blocks start
    assert len(members) > 2 and data[end:] == b"\0" * (len(data) - end)
    shard.write_bytes(data[: len(data) // 2] if cut == "half" else data[:end])
    one_line(invoke("scan", "--data", f"wds:{wds}"), "truncated", "train-000001.tar")
    refused = invoke(*PRE, "--data", f"wds:{wds}", "--out", tmp_path / "s.zarr")
    one_line(refused, "train-000001.tar")
    assert not (tmp_path / "s.zarr").exists()


def test_a_changed_image_the_identity_does_not_hash_is_caught_by_the_replay(layouts, tmp_path):
    import pyarrow.parquet as pq

    store = tmp_path / "s.zarr"
    assert invoke(*PRE, "--data", layouts["parquet"], "--out", store).exit_code == 0
    root = tmp_path / "copy"
    shutil.copytree(layouts["parquet"].removeprefix("parquet:"), root)
    path = root / "data" / "train-00000-of-00002.parquet"
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[1]["bytes"] = images[3]["bytes"]  # row 1: not among the images hashed
    pq.write_table(table.set_column(0, "image", [images]), path, row_group_size=4)
    assert (
        open_source(f"parquet:{root}").fingerprint()
        == open_source(layouts["parquet"]).fingerprint()
    )
    refused = invoke("verify", store, "--data", f"parquet:{root}", "--all", "--loader-workers", "0")
    assert refused.exit_code == 1 and "data/train-00000-of-00002.parquet:1" in refused.output


@pytest.mark.parametrize(("label", "needle"), [(-1, "negative label at"), (7, "label 7 but")])
def test_labels_a_split_cannot_train_on_are_one_line(layouts, tmp_path, label, needle):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "labels"
    shutil.copytree(layouts["parquet"].removeprefix("parquet:"), root)
    path = root / "data" / "validation-00000-of-00002.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    labels[0] = label
    table = table.set_column(1, "label", pa.array(labels, pa.int64()))
    pq.write_table(table, path)
    one_line(invoke("scan", "--data", f"parquet:{root}"), needle)


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
