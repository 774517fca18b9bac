"""`deit-pipe demo`: the whole method end to end on the embedded digits set, on a laptop CPU.

1. a small RegNetY teacher trained with its own light recipe (digits are 8×8 scans; the full
   DeiT augmentation leaves a 2-layer-budget teacher weak, and digits must not be flipped),
2. its targets precomputed on dask (2 local workers) over the students' views and val,
3. two DeiT students from the store, same seed and views: no distillation, and hard
   distillation through the distillation token,
4. the agreement audit, and a summary.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deit_pipe.audit import audit
from deit_pipe.data import MixConfig, ViewConfig, open_source
from deit_pipe.data.recipe import Recipe
from deit_pipe.pipeline.precompute import precompute
from deit_pipe.pipeline.tasks import Job
from deit_pipe.pipeline.teacher import TeacherConfig
from deit_pipe.storage import TargetStore, summarize
from deit_pipe.student.train import TrainConfig, train

STUDENT = dict(img_size=32, patch_size=4, depth=4, embed_dim=96, num_heads=3)


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    teacher_epochs: int = 15
    student_epochs: int = 18
    batch_size: int = 128
    workers: int = 2  # dask workers for the precompute

    @classmethod
    def quick(cls, out: str) -> DemoConfig:
        return cls(out=out, teacher_epochs=3, student_epochs=2)


def teacher_recipe(source) -> Recipe:
    """Light augmentation: a random crop of most of the digit, nothing else."""
    view = ViewConfig.for_source(
        source, scale=(0.6, 1.0), auto_augment=None, re_prob=0.0, color_jitter=0.0, hflip=0.0
    )
    return Recipe(seed=1, repeats=1, view=view, mix=MixConfig(mixup_alpha=0.0, cutmix_alpha=0.0))


def train_teacher(out: Path, cfg: DemoConfig) -> dict:
    """Plain supervised regnety_002 on digits with the light recipe; returns its val eval."""
    return train(
        TrainConfig(
            out=str(out),
            data="digits",
            recipe=teacher_recipe(open_source("digits")).to_dict(),
            model="regnety_002",
            drop_path=0.0,
            distill="none",
            epochs=cfg.teacher_epochs,
            batch_size=cfg.batch_size,
            lr=3.2e-2,  # per 512 images: 8e-3 at batch 128
            warmup_epochs=1,
            min_lr=1e-5,
            device="cpu",
        )
    )


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = lambda _: None) -> dict:
    out = Path(cfg.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    source = open_source("digits")
    seconds: dict[str, float] = {}

    log(f"1/4 training the teacher (regnety_002, {cfg.teacher_epochs} epochs)")
    t0 = time.perf_counter()
    teacher_eval = train_teacher(out / "teacher", cfg)
    seconds["teacher"] = time.perf_counter() - t0

    log(
        f"2/4 precomputing targets for {cfg.student_epochs} epochs + val on dask "
        f"({cfg.workers} workers)"
    )
    t0 = time.perf_counter()
    store_url = str(out / "teacher.zarr")
    student_recipe = Recipe(view=ViewConfig.for_source(source))  # the DeiT recipe
    job = Job(
        url=store_url,
        data="digits",
        recipe=student_recipe.to_dict(),
        batch_size=256,
        teacher=TeacherConfig("regnety_002", str(out / "teacher" / "checkpoint.pt")),
        device="cpu",
    )
    precompute(job, epochs=cfg.student_epochs, shard_views=512, workers=cfg.workers)
    seconds["precompute"] = time.perf_counter() - t0
    store_info = summarize(TargetStore(store_url))

    students = {
        "deit none": ("deit_tiny_patch16_224", "none"),
        "deit⚗ hard": ("deit_tiny_distilled_patch16_224", "hard"),
    }
    results = {}
    for i, (name, (model, distill)) in enumerate(students.items()):
        log(f"3/4 training student {i + 1}/2: {name} ({cfg.student_epochs} epochs)")
        t0 = time.perf_counter()
        results[name] = train(
            TrainConfig(
                out=str(out / name.replace("⚗", "_distilled").replace(" ", "_")),
                store=store_url,
                model=model,
                model_overrides=STUDENT,
                distill=distill,
                epochs=cfg.student_epochs,
                batch_size=cfg.batch_size,
                lr=8e-3,  # per 512 images: 2e-3 at batch 128
                warmup_epochs=min(2, cfg.student_epochs / 4),
                device="cpu",
            )
        )
        seconds[f"student {name}"] = time.perf_counter() - t0

    log("4/4 auditing teacher-student agreement")
    t0 = time.perf_counter()
    run_dirs = [out / n.replace("⚗", "_distilled").replace(" ", "_") for n in students]
    report = audit(store_url, run_dirs, out / "audit", train_views=512, device="cpu")
    seconds["audit"] = time.perf_counter() - t0
    idx = {n: i for i, n in enumerate(report.classifiers)}
    with_teacher = {
        n: float(report.matrix[idx["teacher"], i])
        for n, i in idx.items()
        if n not in ("teacher", "ground truth")
    }
    summary = {
        "teacher_top1": teacher_eval["cls"]["top1"],
        "teacher_store_val_top1": store_info["val_teacher_top1"],
        "students": {n: {h: v["top1"] for h, v in r.items()} for n, r in results.items()},
        "disagreement_with_teacher": with_teacher,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "total_seconds": round(sum(seconds.values()), 1),
        "store_bytes_per_view": store_info["bytes_per_view"],
        "store": store_url,
        "report": str(out / "audit" / "report.md"),
        "plots": [str(out / "audit" / "agreement.png"), str(out / "audit" / "curves.png")],
        "config": cfg.__dict__,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
