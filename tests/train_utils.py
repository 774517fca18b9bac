"""A tiny student and teacher for training tests, and reading a run's losses."""

import json

from deit_pipe.data import ViewConfig, open_source
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.student.train import TrainConfig
from deit_pipe.teacher import TeacherConfig

TEACHER = TeacherConfig("regnety_002", random_init=True)


TINY = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)


RECIPE = Recipe(view=ViewConfig.for_source(open_source("digits")))


TINY_ARGS = [
    "--img-size",
    "32",
    "--patch-size",
    "8",
    "--depth",
    "1",
    "--embed-dim",
    "32",
    "--num-heads",
    "2",
]


def base_cfg(out, **kw) -> TrainConfig:
    defaults = dict(
        out=str(out),
        model="deit_tiny_distilled_patch16_224",
        model_overrides=TINY,
        epochs=1,
        batch_size=128,
        warmup_epochs=0.2,
        max_steps=5,
    )
    return TrainConfig(**{**defaults, **kw})


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]
