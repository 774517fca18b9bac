"""`deit-pipe demo`: the whole method end to end on the embedded digits set, on a laptop CPU.

1. a small RegNetY teacher trained with its own light recipe (digits are 8×8 scans: the
   full DeiT augmentation leaves a small convnet weak, and digits must not be flipped),
2. its targets precomputed on dask (2 local workers) for 20 epochs of the students' views
   and val, with the `small` recipe preset (DeiT's augmentation, crops of ≥ 35%, one view
   per image); the views' Pillow stage rendered batched by the tensor kernels on the
   teacher's device (`--render device`),
3. two students of the same size from the store, same seed and views, trained side by side
   for 60 epochs that replay the 20 stored ones three times (`--cycle-epochs`): the ViT
   baseline (no distillation token, no teacher) and DeiT⚗ with hard distillation through
   its token; they render the views with Pillow (`--render auto` on a CPU), and every
   view's fingerprint is checked against the one the kernels stored: 2 x 60 epochs of
   proof that the kernels' bytes are Pillow's,
4. the agreement audit, and a summary with top-1/top-5, precision/recall/F1 and AUC per head.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from deit_pipe.audit import audit, classifier_label
from deit_pipe.audit.audit import AUDIT_FILES
from deit_pipe.data import MixConfig, ViewConfig, open_source
from deit_pipe.data.plan.recipe import PRESETS, Recipe
from deit_pipe.outputs import (
    check_output_dir,
    check_replace,
    make_dir,
    mark_output,
    replace_owned,
)
from deit_pipe.pipeline.precompute import precompute
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job
from deit_pipe.place import Place
from deit_pipe.storage import TargetStore, summarize
from deit_pipe.storage.overwrite import refuse_foreign, store_paths, store_teachers
from deit_pipe.student.rundir import RUN_FILES
from deit_pipe.student.runs import load_run
from deit_pipe.student.train import TrainConfig, train
from deit_pipe.teacher import TeacherConfig

# 16 tokens of 8×8 pixels (each 2×2 of the original scan): patch 4's 64 tokens cost 3× the
# time per epoch for no gain at this budget (BENCHMARKS.md).
STUDENT = dict(img_size=32, patch_size=8, depth=4, embed_dim=96, num_heads=3)
STUDENTS = {  # demo name → (timm model, distillation)
    "vit none": ("deit_tiny_patch16_224", "none"),
    "deit⚗ hard": ("deit_tiny_distilled_patch16_224", "hard"),
}


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    teacher_epochs: int = 15
    student_epochs: int = 60
    store_epochs: int = 20  # the students replay stored epoch e mod 20 (--cycle-epochs)
    batch_size: int = 64
    eval_every: int = 5
    workers: int = 2  # dask workers for the precompute
    store_render: str = "device"  # the stored views by the kernels; the students: auto
    seed: int = 0  # the students' init and drop-path

    @classmethod
    def quick(cls, out: str) -> DemoConfig:
        return cls(out=out, teacher_epochs=2, student_epochs=2, store_epochs=1, eval_every=1)


def teacher_recipe(source) -> Recipe:
    """Light augmentation: a random crop of most of the digit, nothing else."""
    view = ViewConfig.for_source(
        source, scale=(0.6, 1.0), auto_augment=None, re_prob=0.0, color_jitter=0.0, hflip=0.0
    )
    mix = MixConfig(mixup_alpha=0.0, cutmix_alpha=0.0)
    return Recipe(seed=1, repeats=1, view=view, mix=mix, name="teacher-light")


def train_teacher(out: Path, cfg: DemoConfig, seed: int = 0) -> dict:
    """Plain supervised regnety_002 on digits with the light recipe (`seed`: its init);
    returns its val eval."""
    return train(
        TrainConfig(
            out=str(out),
            data="digits",
            recipe=teacher_recipe(open_source("digits")).to_dict(),
            model="regnety_002",
            drop_path=0.0,
            distill="none",
            epochs=cfg.teacher_epochs,
            batch_size=128,
            lr=3.2e-2,  # per 512 images: 8e-3 at batch 128
            warmup_epochs=1,
            eval_every=cfg.teacher_epochs,
            train_seed=seed,
            device="cpu",
        )
    )


def store_job(
    url: str, teacher_checkpoint: Path | str, render: str = "auto", **recipe_overrides
) -> Job:
    """The students' store: digits views of the `small` recipe, the demo teacher's targets
    (`render`: who renders the views, `--render`)."""
    recipe = PRESETS["small"].recipe(open_source("digits"), **recipe_overrides)
    return Job(
        url=url,
        data="digits",
        recipe=recipe,
        batch_size=256,
        teacher=TeacherConfig("regnety_002", str(teacher_checkpoint)),
        device="cpu",
        render=render,
    )


def student_config(out: Path, url: str, name: str, cfg: DemoConfig) -> TrainConfig:
    model, distill = STUDENTS[name]
    return TrainConfig(
        out=str(out),
        store=url,
        model=model,
        model_overrides=STUDENT,
        distill=distill,
        epochs=cfg.student_epochs,
        warmup_epochs=min(5, cfg.student_epochs / 4),
        batch_size=cfg.batch_size,
        eval_every=cfg.eval_every,
        cycle_epochs=cfg.store_epochs < cfg.student_epochs,
        train_seed=cfg.seed,
        device="cpu",
    )


def _train_alone(cfg: TrainConfig, threads: int) -> dict:
    torch.set_num_threads(threads)
    return train(cfg)


def train_side_by_side(configs: list[TrainConfig]) -> list[dict]:
    """Train independent runs at once, one forked process each, sharing the cores: a small
    student's step cannot keep two cores busy (its views are rendered between steps), two
    students can. Falls back to one after another where fork is unavailable."""
    threads = max(1, (os.cpu_count() or 1) // len(configs))
    if len(configs) == 1 or "fork" not in mp.get_all_start_methods():
        return [train(c) for c in configs]
    with ProcessPoolExecutor(len(configs), mp_context=mp.get_context("fork")) as pool:
        return list(pool.map(_train_alone, configs, [threads] * len(configs)))


def demo_outputs() -> tuple[str, ...]:
    """What the demo writes into its folder: a rerun replaces these and touches nothing else."""
    runs = (name.replace("⚗", "_distilled").replace(" ", "_") for name in STUDENTS)
    return ("teacher", "teacher.zarr", *runs, "audit", "summary.json")


def check_earlier_demo(out: Path, force: bool) -> None:
    """A rerun removes an earlier demo's entries whole: refuse first if the folder is not
    marked as a demo's (unless `force`), or if a user put anything into those entries."""
    check_replace(out, demo_outputs(), "demo", force)
    runs = demo_outputs()[:1] + demo_outputs()[2:-2]  # the teacher's and the students'
    for name in runs:
        if (out / name).is_dir():
            check_output_dir(out / name, RUN_FILES, "run")
    if (out / "audit").is_dir():
        check_output_dir(out / "audit", AUDIT_FILES, "audit report")
    store = Place(out / "teacher.zarr")
    if (out / "teacher.zarr").is_dir():
        refuse_foreign(store, store_paths(store, store_teachers(store))[2], "the demo reruns")


def run_demo(
    cfg: DemoConfig, log: Callable[[str], None] = lambda _: None, *, force: bool = False
) -> dict:
    out = check_output_dir(cfg.out, demo_outputs(), "demo").resolve()
    check_earlier_demo(out, force)
    replace_owned(out, demo_outputs())
    make_dir(out, "demo folder")
    mark_output(out, "demo")
    seconds: dict[str, float] = {}

    def timed(stage: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[stage] = time.perf_counter() - t0
        return result

    log(f"1/4 training the teacher (regnety_002, {cfg.teacher_epochs} epochs)")
    timed("teacher", train_teacher, out / "teacher", cfg)
    epochs, stored = cfg.student_epochs, cfg.store_epochs
    log(
        f"2/4 precomputing targets for {stored} epochs + val on dask ({cfg.workers} workers), "
        f"views rendered with --render {cfg.store_render}"
    )
    url = str(out / "teacher.zarr")
    job = store_job(url, out / "teacher" / "checkpoint.pt", render=cfg.store_render)
    request = StoreRequest(epochs=stored)
    made = timed("precompute", precompute, job, request, workers=cfg.workers)
    run_dirs = {name: out / demo_outputs()[2 + i] for i, name in enumerate(STUDENTS)}
    log(
        f"3/4 training the students side by side: {', '.join(STUDENTS)} ({epochs} epochs), "
        "each replayed view's fingerprint checked against the store"
    )
    configs = [student_config(run_dirs[name], url, name, cfg) for name in STUDENTS]
    timed("students", train_side_by_side, configs)
    log("4/4 auditing teacher-student agreement")
    report = timed("audit", audit, url, list(run_dirs.values()), out / "audit", device="cpu")
    rendering = {
        "store": {"render": cfg.store_render, "views": made.views, "kernels": made.kernel_views},
        "students": {name: _render_used(run_dirs[name]) for name in STUDENTS},
    }
    summary = summarize_demo(cfg, out, url, run_dirs, report, seconds)
    summary["rendering"] = rendering
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _render_used(run_dir: Path) -> str:
    """The path a run's training views took (`--render` resolved), from its eval records."""
    records = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["render"] for r in records if "render" in r][-1]


def summarize_demo(cfg, out: Path, url: str, run_dirs: dict, report, seconds: dict) -> dict:
    """Metrics per classifier and head, agreement with the teacher, times, where things are."""
    store_info = summarize(TargetStore(url))
    teacher = f"teacher {store_info['teacher']['name']}"
    classifiers = {teacher: {"val": report.metrics["teacher"]}}
    disagreement = {}
    for name, run_dir in run_dirs.items():
        run = load_run(run_dir)
        heads = run.heads()
        labels = {h: classifier_label(run.label, h, len(heads)) for h in heads}
        classifiers[name] = {h: report.metrics[label] for h, label in labels.items()}
        disagreement[name] = {h: report.disagreement("teacher", lb) for h, lb in labels.items()}
    return {
        "classifiers": classifiers,
        "disagreement_with_teacher": disagreement,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "total_seconds": round(sum(seconds.values()), 1),
        "recipe": "small",
        "student": STUDENT,
        "store_bytes_per_view": store_info["bytes_per_view"],
        "store": url,
        "report": str(out / "audit" / "report.md"),
        "plots": [str(out / "audit" / "agreement.png"), str(out / "audit" / "curves.png")],
        "config": asdict(cfg),
    }
