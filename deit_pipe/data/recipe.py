"""The recipe: everything that decides which views an epoch holds (seed, repeats, transforms, mix).

The precompute records `Recipe.to_dict()` as the store's plan; the student rebuilds the
recipe from the store, so it cannot drift from what the teacher saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from deit_pipe.data.plan import RA_BLOCK, EpochPlan, MixConfig, plan
from deit_pipe.data.views import ViewConfig

# Bump when plan() or render() would produce other views for the same recipe.
PLAN_VERSION = 2  # 2: portable random-erasing noise


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    repeats: int = 3
    view: ViewConfig = field(default_factory=ViewConfig)
    mix: MixConfig = field(default_factory=MixConfig)

    def epoch_plan(self, epoch: int, num_samples: int) -> EpochPlan:
        return plan(self.seed, epoch, num_samples, self.repeats, self.mix, self.view.input_size)

    def to_dict(self) -> dict:
        """JSON-normalised (tuples → lists) so it compares equal to what a store holds."""
        d = {
            "plan_version": PLAN_VERSION,
            "seed": self.seed,
            "repeats": self.repeats,
            "ra_block": RA_BLOCK,
            "input_size": self.view.input_size,
            "transform": self.view.to_dict(),
            "mix": self.mix.to_dict(),
        }
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        return cls(
            seed=int(d["seed"]),
            repeats=int(d["repeats"]),
            view=ViewConfig.from_dict(d["transform"]),
            mix=MixConfig.from_dict(d["mix"]),
        )
