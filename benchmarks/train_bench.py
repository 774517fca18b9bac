"""P1 offline-KD step ÷ no-KD step, and P2 online-KD ÷ offline-KD step against the ideal.

Ideal speed-up of offline over online = 1 + teacher forward / offline step (the teacher's
forward is the only work offline training skips). Steps are timed from metrics.jsonl's
`step_s` (target gathering, fingerprint checks, teacher forward when online, student
forward, backward, optimizer; rendering excluded); medians after warm-up.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deit_pipe.data import PairDataset, ViewConfig, collate_views, finish, open_source
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.pipeline.precompute import precompute
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job
from deit_pipe.student.train import TrainConfig, train
from deit_pipe.teacher import TeacherConfig, build_teacher, teacher_logits

STUDENT = dict(img_size=32, patch_size=4, depth=4, embed_dim=96, num_heads=3)


def step_seconds(run: Path, batch: int, warmup: int = 3) -> float:
    """Median seconds per image of the step itself (targets, forward, backward, AdamW).

    Rendering is excluded: it is identical for all three runs and its per-step variance
    (RandAugment draws different ops every step) would drown the differences measured.
    """
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_s"] / batch for r in rows if "step_s" in r][warmup:]
    return float(np.median(times))


def run_bench(teacher: str = "regnety_016", steps: int = 24, batch: int = 128) -> dict:
    root = Path(tempfile.mkdtemp(prefix="deit-pipe-train-bench-"))
    try:
        tcfg = TeacherConfig(teacher, random_init=True)
        recipe = Recipe(view=ViewConfig.for_source(open_source("digits")))
        url = str(root / "store.zarr")
        precompute(
            Job(
                url=url,
                data="digits",
                recipe=recipe,
                teacher=tcfg,
                batch_size=256,
                threads=torch.get_num_threads(),
            ),
            StoreRequest(epochs=3, splits=("train",), shard_views=512),
            workers=0,
        )
        common = dict(
            model="deit_tiny_distilled_patch16_224",
            model_overrides=STUDENT,
            epochs=3,
            batch_size=batch,
            max_steps=steps,
            device="cpu",
        )
        runs = {
            "none": TrainConfig(out=str(root / "none"), store=url, distill="none", **common),
            "offline": TrainConfig(out=str(root / "off"), store=url, distill="hard", **common),
            "online": TrainConfig(
                out=str(root / "on"),
                data="digits",
                teacher=tcfg,
                recipe=recipe.to_dict(),
                distill="hard",
                **common,
            ),
        }
        per_image = {}
        for name, cfg in runs.items():
            train(cfg)
            per_image[name] = step_seconds(Path(cfg.out), batch)
        model, _ = build_teacher(tcfg, 10)
        split = open_source("digits").split("train")
        ds = PairDataset(split, recipe.epoch_plan(0, split), recipe.view)
        batch_views = collate_views([ds[p] for p in range(batch // 2)])
        images = finish(batch_views, recipe.view, torch.device("cpu"))
        teacher_logits(model, images, torch.device("cpu"))
        t0 = time.perf_counter()
        for _ in range(5):
            teacher_logits(model, images, torch.device("cpu"))
        teacher_per_image = (time.perf_counter() - t0) / (5 * batch)
        ideal = 1 + teacher_per_image / per_image["offline"]
        achieved = per_image["online"] / per_image["offline"]
        return {
            "teacher": teacher,
            "student": STUDENT,
            "batch": batch,
            "steps": steps,
            "step_ms": {k: v * batch * 1e3 for k, v in per_image.items()},
            "teacher_forward_ms": teacher_per_image * batch * 1e3,
            "p1_ratio": per_image["offline"] / per_image["none"],
            "online_over_offline": achieved,
            "ideal": ideal,
            "p2_ratio": achieved / ideal,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run_bench(), indent=2))
