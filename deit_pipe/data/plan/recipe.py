"""Recipes: everything that decides which views an epoch holds, and the named presets.

A `Recipe` (seed, repeats, transforms, mixing) is what a store is made with: the precompute
records `Recipe.to_dict()` as the store's plan and the student rebuilds it from the store, so
it cannot drift from what the teacher saw. A `Preset` pairs a recipe template with the
training schedule it was tuned with; `PRESETS` holds the named ones:

- `deit`: the paper's ImageNet recipe (Touvron et al. 2021, facebookresearch/deit defaults).
- `small`: thousands of tiny images (digits, CIFAR-size), chosen by measurement on digits
  (BENCHMARKS.md): one view per image per epoch, gentler crops, the rest of DeiT's recipe.
- `finetune`: DeiT's ↑resolution fine-tuning (`--finetune`: lr 5e-6 constant, weight
  decay 1e-8, 30 epochs) on the DeiT views.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from deit_pipe.choices import PRESET_SUMMARIES
from deit_pipe.data.plan.epoch import RA_BLOCK, EpochPlan, MixConfig, plan
from deit_pipe.data.sources.source import Source
from deit_pipe.data.sources.split import Split
from deit_pipe.data.views.host import ViewConfig
from deit_pipe.errors import PlanError, check
from deit_pipe.limits import MAX_REPEATS, check_at_most

# Bump when plan() or render() would produce other views for the same recipe.
PLAN_VERSION = 3  # 2: portable erasing noise; 3: uint8 views finished on the device


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    repeats: int = 3
    view: ViewConfig = field(default_factory=ViewConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    name: str = "deit"  # the preset it started from; its values are recorded beside it
    order: str = "global"  # or "blocks:W" (see data.plan.epoch), W resolved by data.plan.order

    def __post_init__(self) -> None:
        check(self.repeats >= 1, f"--repeats must be at least 1, got {self.repeats}")
        check_at_most(self.repeats, MAX_REPEATS, "--repeats")
        check(self.seed >= 0, f"--plan-seed must be ≥ 0, got {self.seed}")
        check(
            self.order == "global" or self.window > 0,
            f"--order must be global or blocks:W with W ≥ 1 blocks, got {self.order!r}",
        )

    @property
    def window(self) -> int:
        """Blocks per window of the block order (0 for the global order)."""
        kind, _, w = self.order.partition(":")
        return int(w) if kind == "blocks" and w.isdigit() else 0

    def epoch_plan(self, epoch: int, split: Split | int) -> EpochPlan:
        """`epoch`'s slot table over `split` (its size is enough for the global order)."""
        if isinstance(split, int):
            if self.window:
                raise PlanError("the block order plans over a split's blocks, not a count")
            n, blocks = split, None
        else:
            n, blocks = len(split), split.blocks() if self.window else None
        return plan(
            self.seed, epoch, n, self.repeats, self.mix, self.view.input_size, blocks, self.window
        )

    def to_dict(self) -> dict:
        """JSON-normalised (tuples → lists) so it compares equal to what a store holds."""
        d = {
            "plan_version": PLAN_VERSION,
            "recipe": self.name,
            "seed": self.seed,
            "repeats": self.repeats,
            "ra_block": RA_BLOCK,
            "input_size": self.view.input_size,
            "transform": self.view.to_dict(),
            "mix": self.mix.to_dict(),
        }
        if self.window:  # absent for the global order: stores made before it compare equal
            d["order"] = self.order
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        return cls(
            seed=int(d["seed"]),
            repeats=int(d["repeats"]),
            view=ViewConfig.from_dict(d["transform"]),
            mix=MixConfig.from_dict(d["mix"]),
            name=d.get("recipe", "custom"),
            order=d.get("order", "global"),
        )


@dataclass(frozen=True)
class Schedule:
    """The optimisation side of a preset (DeiT defaults); `TrainConfig` fields left unset
    take these values. `lr` is per 512 images of global batch."""

    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 5
    weight_decay: float = 0.05
    drop_path: float = 0.1
    smoothing: float = 0.1
    epochs: int = 300


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    repeats: int
    view: dict  # ViewConfig fields over DeiT's defaults (input size and flip: the source's)
    mix: MixConfig
    schedule: Schedule

    def recipe(self, source: Source, seed: int = 0, **overrides: object) -> Recipe:
        """This preset's recipe for `source`, with non-None overrides (view, mix, repeats)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        mix_fields = set(MixConfig.__dataclass_fields__)
        mix = replace(self.mix, **{k: v for k, v in given.items() if k in mix_fields})
        view = {**self.view, **{k: v for k, v in given.items() if k not in mix_fields}}
        repeats = int(view.pop("repeats", self.repeats))
        order = str(view.pop("order", None) or "global")
        unknown = set(view) - set(ViewConfig.__dataclass_fields__)
        if unknown:
            raise PlanError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
        return Recipe(seed, repeats, ViewConfig.for_source(source, **view), mix, self.name, order)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "deit",
            PRESET_SUMMARIES["deit"],
            repeats=3,
            view={},
            mix=MixConfig(),
            schedule=Schedule(),
        ),
        Preset(
            "small",
            PRESET_SUMMARIES["small"],
            repeats=1,
            view={"scale": (0.35, 1.0)},
            mix=MixConfig(),
            schedule=Schedule(lr=1.6e-2, epochs=60),
        ),
        Preset(
            "finetune",
            PRESET_SUMMARIES["finetune"],
            repeats=3,
            view={},
            mix=MixConfig(),
            schedule=Schedule(lr=5e-6, min_lr=5e-6, weight_decay=1e-8, epochs=30),
        ),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise PlanError(f"unknown recipe {name!r} (choose from {', '.join(PRESETS)})")
    return PRESETS[name]


def schedule_of(name: str) -> Schedule:
    """The optimisation defaults a recipe named `name` trains with: its preset's, or DeiT's
    for a recipe of no preset."""
    return PRESETS[name].schedule if name in PRESETS else Schedule()
