"""What a store's records prove: each teacher's group is sealed to its teacher (arrays copied
from another teacher are caught) and manifest.parquet to the store that wrote it; stores made
before either record still open."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.cli_utils import invoke, one_line
from tests.small_store_utils import PRE, SMALL, A, B
from tests.store_utils import data_files


@pytest.fixture
def store(made, tmp_path) -> Path:
    """A copy of `made` to damage."""
    copy = tmp_path / "s.zarr"
    shutil.copytree(made, copy)
    return copy


@pytest.fixture(scope="module")
def two(made, tmp_path_factory) -> Path:
    """`made` with a second teacher, B, under teachers/B."""
    url = tmp_path_factory.mktemp("two") / "s.zarr"
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
