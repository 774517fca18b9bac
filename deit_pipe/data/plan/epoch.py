"""The stateless epoch plan: which sample, which view seed and which pair mix each slot gets.

Everything is a pure function of (seed, epoch, num_samples, repeats, mix config, image size,
and for the block order the dataset's block layout): no RNG state is carried between epochs,
so any process can compute any epoch's plan and the teacher job and the student's loader
agree without talking to each other.

Two orders. `global`: a seeded permutation of all samples. `blocks:W` (sharded data): a
seeded permutation of the dataset's blocks (Parquet row groups, runs of a tar's members,
runs of files), then a seeded shuffle of the samples within each window of W consecutive
blocks — so a loader reads each block once per window instead of once per sample
(MosaicML Streaming's and WebDataset's idea, kept a pure function of the seed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from deit_pipe.errors import PlanError, check

MIX_NONE, MIX_MIXUP, MIX_CUTMIX = 0, 1, 2
MIX_NAMES = ("none", "mixup", "cutmix")
# Distinct SeedSequence streams per purpose so changing one never shifts another.
_TAG_ORDER, _TAG_VIEW, _TAG_MIX, _TAG_BLOCKS = 0x0D, 0x71, 0x3C, 0xB1
# Repeated augmentation keeps the r views of an image within r·block consecutive slots
# (so they share a global step, as in DeiT's RASampler) and shuffles each round so a
# pair's partner differs between rounds.
RA_BLOCK = 64


@dataclass(frozen=True)
class MixConfig:
    """Mixup/CutMix per pair, with timm's `Mixup` semantics (DeiT defaults)."""

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    cutmix_minmax: tuple[float, float] | None = None
    correct_lam: bool = True

    def __post_init__(self) -> None:
        # finite: Beta(inf, inf) draws nan, and a nan λ casts to garbage box sizes
        for flag, alpha in (("--mixup", self.mixup_alpha), ("--cutmix", self.cutmix_alpha)):
            check(
                math.isfinite(alpha) and alpha >= 0,
                f"{flag} must be finite and ≥ 0 (0 = off), got {alpha:g}",
            )
        for flag, p in (("--mixup-prob", self.prob), ("--mixup-switch-prob", self.switch_prob)):
            check(0 <= p <= 1, f"{flag} is a probability in [0, 1], got {p:g}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MixConfig:
        mm = d.get("cutmix_minmax")
        return cls(**{**d, "cutmix_minmax": tuple(mm) if mm is not None else None})


@dataclass(frozen=True)
class EpochPlan:
    """Slot table of one epoch. Slot arrays have length V; pair arrays ⌈V/2⌉.

    Pair p is slots (2p, 2p+1). Mixed views: x'_2p = λ·x_2p + (1−λ)·x_2p+1 and
    x'_2p+1 = λ·x_2p+1 + (1−λ)·x_2p (cutmix: the box comes from the partner).
    """

    epoch: int
    sample: np.ndarray  # [V] int64 index into the split
    repeat: np.ndarray  # [V] int16 which repeat of its sample this view is
    view_seed: np.ndarray  # [V] uint64
    mix_op: np.ndarray  # [P] uint8 MIX_NONE | MIX_MIXUP | MIX_CUTMIX
    lam: np.ndarray  # [P] float64 weight of a slot's own image (and label)
    box: np.ndarray  # [P, 4] int32 cutmix box (y0, y1, x0, x1), zeros otherwise

    def __len__(self) -> int:
        return len(self.sample)

    @property
    def num_pairs(self) -> int:
        return len(self.mix_op)

    def pair_slots(self, pair: int) -> range:
        return range(2 * pair, min(2 * pair + 2, len(self)))

    def partner(self, slots: np.ndarray) -> np.ndarray:
        """The slot each slot is mixed with (itself for an odd last slot)."""
        other = np.asarray(slots) ^ 1
        return np.where(other < len(self), other, slots)


def plan(
    seed: int,
    epoch: int,
    num_samples: int,
    repeats: int = 3,
    mix: MixConfig | None = None,
    image_size: int = 224,
    blocks: np.ndarray | None = None,
    window: int = 0,
) -> EpochPlan:
    """The slot table of `epoch`: V = num_samples slots, pairs (2p, 2p+1). With `blocks`
    (each block's first sample, ascending from 0) the order is `blocks:window`."""
    if num_samples < 1:
        raise PlanError(f"cannot plan an epoch of {num_samples} samples")
    if epoch < 0:  # SeedSequence would fail on it with a traceback
        raise PlanError(f"epochs are numbered from 0, got {epoch}")
    if repeats < 1:
        raise PlanError(f"repeats must be >= 1, got {repeats}")
    mix = mix or MixConfig()
    if blocks is None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, _TAG_ORDER]))
        order = rng.permutation(num_samples).astype(np.int64)
    else:
        rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, _TAG_BLOCKS]))
        order = _block_order(rng, num_samples, check_blocks(blocks, num_samples), window)
    sample, repeat = _repeat(rng, order, repeats)
    seeds = np.random.default_rng(np.random.SeedSequence([seed, epoch, _TAG_VIEW]))
    view_seed = seeds.integers(0, np.iinfo(np.uint64).max, num_samples, np.uint64, endpoint=True)
    mix_op, lam, box = _pair_mix(seed, epoch, (num_samples + 1) // 2, mix, image_size)
    if num_samples % 2:  # the odd last slot has no partner
        mix_op[-1], lam[-1], box[-1] = MIX_NONE, 1.0, 0
    return EpochPlan(epoch, sample, repeat, view_seed, mix_op, lam, box)


def check_blocks(blocks: np.ndarray, num_samples: int) -> np.ndarray:
    """`blocks` as int64 first samples: 0 first, strictly ascending, all below the count."""
    blocks = np.asarray(blocks, dtype=np.int64)
    ok = len(blocks) and blocks[0] == 0 and (np.diff(blocks) > 0).all()
    if not ok or blocks[-1] >= num_samples:
        raise PlanError(f"bad block layout for {num_samples} samples: {blocks[:8]}…")
    return blocks


def block_of(blocks: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """The block each sample lies in."""
    return np.searchsorted(blocks, samples, side="right") - 1


def _block_order(rng, n: int, blocks: np.ndarray, window: int) -> np.ndarray:
    """The samples by seeded block order, shuffled within windows of `window` blocks."""
    if window < 1:
        raise PlanError(f"the block order's window must be at least 1 block, got {window}")
    sizes = np.diff(np.append(blocks, n))
    perm = rng.permutation(len(blocks))
    starts = np.repeat(blocks[perm], sizes[perm])
    within = np.arange(n) - np.repeat(np.cumsum(sizes[perm]) - sizes[perm], sizes[perm])
    windows = np.repeat(np.arange(len(blocks)) // window, sizes[perm])
    keys = rng.random(n)
    return (starts + within)[np.lexsort((keys, windows))]


def _repeat(rng, perm: np.ndarray, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ⌈n/r⌉ samples of `perm`, each r times with distinct repeat ids, the r views
    of an image within r·RA_BLOCK consecutive slots."""
    n = len(perm)
    if repeats == 1:
        return perm, np.zeros(n, np.int16)
    chosen = perm[: -(-n // repeats)]  # ⌈n/r⌉ images, each seen r times
    blocks = -(-len(chosen) // RA_BLOCK)
    padded = np.full(blocks * RA_BLOCK, -1, np.int64)
    padded[: len(chosen)] = chosen
    padded = padded.reshape(blocks, 1, RA_BLOCK)
    keys = rng.random((blocks, repeats, RA_BLOCK))
    keys[np.broadcast_to(padded < 0, keys.shape)] = 2.0  # padding sorts to the end of a round
    order = np.argsort(keys, axis=-1, kind="stable")
    sample = np.take_along_axis(np.broadcast_to(padded, keys.shape), order, axis=-1)
    rep = np.broadcast_to(np.arange(repeats, dtype=np.int16)[None, :, None], keys.shape)
    keep = sample.reshape(-1) >= 0
    return sample.reshape(-1)[keep][:n], rep.reshape(-1)[keep][:n].copy()


def _pair_mix(
    seed: int, epoch: int, pairs: int, mix: MixConfig, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """timm Mixup's per-element parameters, drawn per pair from (seed, epoch)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, _TAG_MIX]))
    draw_mix = rng.random(pairs) < mix.prob
    use_cutmix = rng.random(pairs) < mix.switch_prob
    lam_mixup = rng.beta(mix.mixup_alpha, mix.mixup_alpha, pairs) if mix.mixup_alpha > 0 else None
    lam_cut = rng.beta(mix.cutmix_alpha, mix.cutmix_alpha, pairs) if mix.cutmix_alpha > 0 else None
    cy, cx = rng.integers(0, size, pairs), rng.integers(0, size, pairs)
    if lam_mixup is not None and lam_cut is not None:
        lam = np.where(use_cutmix, lam_cut, lam_mixup)
    elif lam_mixup is not None:
        lam, use_cutmix = lam_mixup, np.zeros(pairs, bool)
    elif lam_cut is not None:
        lam, use_cutmix = lam_cut, np.ones(pairs, bool)
    else:
        draw_mix = np.zeros(pairs, bool)
        lam = np.ones(pairs)
    # timm casts λ to float32 before using it.
    lam = np.where(draw_mix, lam.astype(np.float32).astype(np.float64), 1.0)
    mix_op = np.where(draw_mix, np.where(use_cutmix, MIX_CUTMIX, MIX_MIXUP), MIX_NONE)
    box = np.zeros((pairs, 4), np.int32)
    cut = mix_op == MIX_CUTMIX
    if cut.any():
        box[cut], lam[cut] = _cutmix_boxes(lam[cut], cy[cut], cx[cut], size, mix, rng)
    return mix_op.astype(np.uint8), lam, box


def _cutmix_boxes(lam, cy, cx, size, mix: MixConfig, rng) -> tuple[np.ndarray, np.ndarray]:
    """timm's `rand_bbox` / `rand_bbox_minmax` + area-corrected λ, vectorised."""
    if mix.cutmix_minmax is not None:
        lo, hi = int(size * mix.cutmix_minmax[0]), int(size * mix.cutmix_minmax[1])
        cut_h, cut_w = rng.integers(lo, hi, len(lam)), rng.integers(lo, hi, len(lam))
        y0 = (rng.random(len(lam)) * (size - cut_h)).astype(np.int64)
        x0 = (rng.random(len(lam)) * (size - cut_w)).astype(np.int64)
        y1, x1 = y0 + cut_h, x0 + cut_w
    else:
        cut = (size * np.sqrt(1.0 - lam)).astype(np.int64)
        y0, y1 = np.clip(cy - cut // 2, 0, size), np.clip(cy + cut // 2, 0, size)
        x0, x1 = np.clip(cx - cut // 2, 0, size), np.clip(cx + cut // 2, 0, size)
    if mix.correct_lam or mix.cutmix_minmax is not None:
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(size * size)
    return np.stack([y0, y1, x0, x1], axis=1).astype(np.int32), lam


def steps_per_epoch(num_slots: int, global_batch: int) -> int:
    """Full global batches in an epoch; the remainder slots are not consumed (drop-last)."""
    return num_slots // global_batch


def step_slots(step: int, global_batch: int, world_size: int = 1, rank: int = 0) -> range:
    """Slots rank `rank` consumes at `step`: a contiguous, even-sized share of the batch.

    Which slots a step covers depends only on the global batch, never on the world size.
    """
    if global_batch < 2 or global_batch % 2:
        raise PlanError(f"global batch must be even and >= 2, got {global_batch}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise PlanError(f"rank {rank} is outside world size {world_size}")
    per_rank = global_batch // world_size
    if global_batch % world_size or per_rank % 2:
        raise PlanError(
            f"global batch {global_batch} must split into an even share for each of "
            f"{world_size} ranks (pairs never straddle ranks)"
        )
    start = step * global_batch + rank * per_rank
    return range(start, start + per_rank)
