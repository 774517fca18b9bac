"""The block order: blocks permuted, samples shuffled within windows of W blocks, each block
read once per window by one loader worker; stateless like the global order, so the slots
never depend on ranks, loader workers or a resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.layouts import write_parquet, write_wds
from deit_pipe.data import open_source
from deit_pipe.data.device.render import device_pixels
from deit_pipe.data.loaders.blocks import BlockRun, block_loader, merge_parts
from deit_pipe.data.loaders.dataset import ReplayDataset
from deit_pipe.data.plan.epoch import block_of, plan
from deit_pipe.data.plan.recipe import PRESETS
from deit_pipe.storage import TargetStore
from tests.cli_utils import invoke, one_line

PRE = ["precompute", "--teacher-model", "regnety_002", "--teacher-random-init", "--epochs", "1"]
PRE += ["--input-size", "16", "--dask-workers", "0", "--top-k", "3", "--repeats", "1"]
OLD_STORE = Path(__file__).parent / "data" / "store_before_block_order.zarr"


@pytest.fixture
def shards(imagefolder, tmp_path, monkeypatch) -> dict[str, str]:
    """The 18-image `imagefolder` as Parquet with 4-row groups (6 blocks), as Parquet with
    one row group per shard and as tars (both 2 blocks of 9)."""
    monkeypatch.setenv("DEIT_PIPE_CACHE", str(tmp_path / "cache"))
    write_parquet(imagefolder, tmp_path / "pq4", row_group=4)
    write_parquet(imagefolder, tmp_path / "pq9", row_group=9)
    write_wds(imagefolder, tmp_path / "wds")
    (tmp_path / "wds" / "classes.txt").write_text("cat\ndog\neel\n")  # as the Hub's names
    return {
        "pq4": f"parquet:{tmp_path / 'pq4'}",
        "pq9": f"parquet:{tmp_path / 'pq9'}",
        "wds": f"wds:{tmp_path / 'wds'}",
    }


def test_the_plan_reads_windows_of_blocks_and_repeats_each_chosen_sample():
    blocks = np.arange(0, 1000, 50)  # 20 blocks of 50
    for repeats in (1, 3):
        p = plan(7, 2, 1000, repeats, blocks=blocks, window=4)
        again = plan(7, 2, 1000, repeats, blocks=blocks, window=4)
        assert np.array_equal(p.sample, again.sample) and np.array_equal(
            p.view_seed, again.view_seed
        )
        counts = np.bincount(p.sample, minlength=1000)
        chosen = counts > 0
        assert chosen.sum() == -(-1000 // repeats) and counts.sum() == 1000
        # ⌈N/r⌉·r ≥ N: the slots run out a view or two short at the epoch's end
        assert (counts[chosen] == repeats).sum() >= chosen.sum() - (repeats - 1)
        # The first window's 200 images come from exactly 4 blocks, all of their samples.
        first = np.unique(p.sample[: 200 * repeats]) if repeats == 1 else None
        if first is not None:
            assert len(np.unique(block_of(blocks, first))) == 4 and len(first) == 200
    other = plan(7, 3, 1000, 1, blocks=blocks, window=4)
    assert not np.array_equal(other.sample, plan(7, 2, 1000, 1, blocks=blocks, window=4).sample)


def _recipe(source, window: int):
    return PRESETS["small"].recipe(source, input_size=16, order=f"blocks:{window}")


def _steps(split, recipe, world: int, workers: int, start: int = 0) -> list[tuple]:
    """(slots, fingerprints) of each step of a 3-epoch run, the ranks' shares joined."""
    per_rank = []
    for rank in range(world):
        replay = ReplayDataset(split, recipe)
        run = BlockRun(replay, 12, 3, world_size=world, rank=rank, start_step=start)
        merged = [
            merge_parts(parts, torch.device("cpu"), device_pixels)
            for parts in block_loader(run, workers)
        ]
        per_rank.append([(b.slot.numpy(), b.fingerprint.numpy()) for b in merged])
    return [
        tuple(np.concatenate([r[i][k] for r in per_rank]) for k in (0, 1))
        for i in range(len(per_rank[0]))
    ]


def test_the_same_views_for_any_ranks_loader_workers_and_resume(shards):
    source = open_source(shards["pq4"])
    split, recipe = source.split("train"), _recipe(source, 2)
    reference = _steps(split, recipe, 1, 0)
    assert len(reference) == 3
    for slots, _ in reference:
        assert (np.diff(slots) == 1).all()  # each step's slots, in order
    for world in (1, 2, 3):
        for workers in (0, 1, 2):
            got = _steps(split, recipe, world, workers)
            for (a, fa), (b, fb) in zip(reference, got, strict=True):
                assert np.array_equal(a, b) and np.array_equal(fa, fb), (world, workers)
    resumed = _steps(split, recipe, 2, 2, start=1)
    for (a, fa), (b, fb) in zip(reference[1:], resumed, strict=True):
        assert np.array_equal(a, b) and np.array_equal(fa, fb)


def test_a_block_is_read_once_per_window(shards):
    source = open_source(shards["pq4"])
    split = source.split("train")
    replay = ReplayDataset(split, _recipe(source, 2))
    run = BlockRun(replay, 18, 1)  # one epoch, one step of every slot
    for parts in block_loader(run, 0):
        merge_parts(parts, torch.device("cpu"), device_pixels)
    assert split.cache.bytes_read == split.group_bytes.sum()  # every row group once
    assert split.block_bytes() > 0


def test_a_parquet_store_replays_from_tars_with_the_same_blocks_and_refuses_others(
    shards, tmp_path
):
    store = tmp_path / "s.zarr"
    made = invoke(*PRE, "--data", shards["pq9"], "--out", store)
    assert made.exit_code == 0, made.output
    assert TargetStore(str(store)).spec.recipe["order"] == "blocks:2"
    checked = invoke("verify", store, "--data", shards["wds"], "--all", "--loader-workers", "0")
    assert checked.exit_code == 0, checked.output
    other = tmp_path / "o.zarr"
    assert invoke(*PRE, "--data", shards["pq4"], "--out", other).exit_code == 0
    refused = invoke("verify", other, "--data", shards["wds"], "--loader-workers", "0")
    one_line(refused, "block order over 6 blocks", "2 other blocks")


def test_order_flag_dry_run_and_bad_values(shards, tmp_path):
    dry = invoke(*PRE, "--data", shards["pq4"], "--out", tmp_path / "d.zarr", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "order: blocks:6 — 6 blocks (row groups" in dry.output
    glob = invoke(*PRE, "--data", shards["pq4"], "--order", "global", "--out", tmp_path / "g")
    assert glob.exit_code == 0 and "order" not in TargetStore(str(tmp_path / "g")).spec.recipe
    for bad in ("blocks:0", "blocks:x", "random", "global:3"):
        out = tmp_path / "bad.zarr"
        one_line(invoke(*PRE, "--data", shards["pq4"], "--order", bad, "--out", out), "--order")
        assert not out.exists()


def test_a_store_made_before_the_block_order_still_verifies(tmp_path):
    store = tmp_path / "old.zarr"
    shutil.copytree(OLD_STORE, store)
    assert "order" not in TargetStore(str(store)).spec.recipe
    checked = invoke("verify", store, "--all", "--loader-workers", "0")
    assert checked.exit_code == 0 and "0 differ" in checked.output, checked.output
