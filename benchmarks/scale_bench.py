"""`make bench-scale` (CPU) and `make bench-gpu` (CUDA): offline distillation at the paper's scale.

A random-init RegNetY-16GF teacher and DeiT-S⚗ / DeiT-Ti⚗ students at 224² on `fake:N:224`
images. For each student, real `train()` runs time the step (targets, fingerprint check,
teacher forward when online, student forward/backward, AdamW; rendering excluded) with no
distillation, offline hard distillation (store targets) and online hard distillation
(teacher forward): medians after warm-up, all in one run. Then the precompute's views/s
against the bare teacher forward on pre-rendered batches, and the loader's views/s with N
render workers. The paper's compute estimate: the teacher forward is ≈ 81% / 54% of a
distilled Ti / S online step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from report import record_section  # benchmarks/ is on the path of a script run from it
from torch.utils.data import DataLoader

from deit_pipe.data import PairDataset, ViewConfig, collate_views, finish, open_source
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.pipeline.precompute import pending, prepare_store, run
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job
from deit_pipe.student.train import TrainConfig, train
from deit_pipe.teacher import TeacherConfig, build_teacher, teacher_logits

TEACHER = "regnety_160"
STUDENTS = {
    "DeiT-S⚗": "deit_small_distilled_patch16_224",
    "DeiT-Ti⚗": "deit_tiny_distilled_patch16_224",
}
PAPER_TEACHER_SHARE = {"DeiT-S⚗": 0.54, "DeiT-Ti⚗": 0.81}


def median_step(run: Path, warmup: int, key: str = "step_s") -> float:
    """The median of a run's per-step `key` (`step_s`, `img_s`) after `warmup` steps."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return float(np.median([r[key] for r in rows if key in r][warmup:]))


def student_steps(root: Path, url: str, data: str, recipe: dict, device: str, a) -> dict:
    """Median step seconds of one student: none, offline hard, online hard."""
    teacher = TeacherConfig(TEACHER, random_init=True)
    out = {}
    for label, model in STUDENTS.items():
        common = dict(
            model=model,
            epochs=1,
            batch_size=a.batch,
            max_steps=a.warmup + a.steps,
            drop_path=0.1,
            device=device,
            loader_workers=a.loader_workers,
            render=a.render,
            log_every=a.warmup + a.steps,  # one read-back: no per-step device sync
        )
        store = dict(store=url, **common)
        online = dict(data=data, recipe=recipe, teacher=teacher, distill="hard", **common)
        runs = {
            "none": TrainConfig(out=str(root / f"{model}-none"), distill="none", **store),
            "offline": TrainConfig(out=str(root / f"{model}-off"), distill="hard", **store),
            "online": TrainConfig(out=str(root / f"{model}-on"), **online),
        }
        for mode, cfg in runs.items():
            train(cfg)
            out[label, mode] = median_step(Path(cfg.out), a.warmup)
            print(f"{label} {mode}: median step {out[label, mode]:.4f} s", flush=True)
    return out


def teacher_forward(job: Job, images: torch.Tensor, device: torch.device, repeats: int) -> float:
    """Views/s of the bare teacher forward on pre-rendered views."""
    model, _ = build_teacher(job.teacher, 10)
    model = model.to(device, memory_format=torch.channels_last)
    teacher_logits(model, images, device).cpu()
    start = time.perf_counter()
    for _ in range(repeats):
        teacher_logits(model, images, device).cpu()
    return repeats * len(images) / (time.perf_counter() - start)


def loader_rate(data: str, recipe: Recipe, batch: int, workers: int, batches: int) -> float:
    split = open_source(data).split("train")
    dataset = PairDataset(split, recipe.epoch_plan(0, split), recipe.view)
    loader = DataLoader(
        dataset, batch_size=batch // 2, num_workers=workers, collate_fn=collate_views
    )
    it = iter(loader)
    next(it)  # workers started
    start, views = time.perf_counter(), 0
    for _ in range(batches):
        views += len(next(it).image)
    return views / (time.perf_counter() - start)


def main(a) -> dict:
    device = "cuda" if a.gpu else "cpu"
    if a.gpu and not torch.cuda.is_available():
        raise SystemExit("make bench-gpu needs a CUDA device; this machine has none")
    root = Path(tempfile.mkdtemp(prefix="deit-pipe-scale-"))
    try:
        views = a.batch * (a.warmup + a.steps)
        data = f"fake:{views}:256"
        recipe = Recipe(view=ViewConfig.for_source(open_source(data), input_size=224))
        job = Job(
            url=str(root / "store.zarr"), data=data, recipe=recipe,
            teacher=TeacherConfig(TEACHER, random_init=True), batch_size=a.batch,
            loader_workers=a.loader_workers, threads=torch.get_num_threads(), device=device,
            render=a.render,
        )  # fmt: skip
        # Warm-up: the teacher is built once per process (and cached), as on a dask worker.
        warm = replace(job, url=str(root / "warm.zarr"))
        run(
            warm,
            pending(prepare_store(warm, StoreRequest(epochs=1, splits=("train",), targets="hard"))),
            workers=0,
        )
        writer = prepare_store(job, StoreRequest(epochs=1, splits=("train",), targets="hard"))
        summary = run(job, pending(writer), workers=0)
        print(f"precompute: {summary.views_per_second:.1f} views/s", flush=True)
        steps = student_steps(root, job.url, data, recipe.to_dict(), device, a)
        split = open_source(data).split("train")
        pairs = PairDataset(split, recipe.epoch_plan(0, split), recipe.view)
        rendered = collate_views([pairs[p] for p in range(a.batch // 2)])
        images = finish(rendered, recipe.view, torch.device(device))
        forward = teacher_forward(job, images, torch.device(device), a.steps)
        loader = loader_rate(data, recipe, a.batch, a.loader_workers, a.steps)
        return {
            "device": torch.cuda.get_device_name(0) if a.gpu else "cpu",
            "threads": torch.get_num_threads(),
            "batch": a.batch,
            "measured_steps": a.steps,
            "step_s": {f"{k[0]} {k[1]}": v for k, v in steps.items()},
            "precompute_views_per_s": summary.views_per_second,
            "teacher_forward_views_per_s": forward,
            "loader_views_per_s": loader,
            "loader_workers": a.loader_workers,
            "render": a.render,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def render(r: dict) -> str:
    lines = [
        f"Device **{r['device']}** ({r['threads']} threads), batch {r['batch']}, 224², "
        f"random-init `{TEACHER}` teacher, views rendered on the {r.get('render', 'host')} "
        f"(`--render`); median of {r['measured_steps']} steps after warm-up, all in one run.",
        "",
        "| student | no KD step (s) | offline KD (s) | online KD (s) | online ÷ offline | "
        "offline ÷ none | teacher share of an online step (paper) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in STUDENTS:
        none, off, on = (r["step_s"][f"{label} {m}"] for m in ("none", "offline", "online"))
        share = 1 - off / on
        lines.append(
            f"| {label} | {none:.2f} | {off:.2f} | {on:.2f} | **{on / off:.2f}×** | "
            f"{off / none:.3f} | {share:.0%} ({PAPER_TEACHER_SHARE[label]:.0%}) |"
        )
    p3 = r["precompute_views_per_s"] / r["teacher_forward_views_per_s"]
    lines += [
        "",
        f"- precompute (render + teacher + write, `--loader-workers {r['loader_workers']}`): "
        f"{r['precompute_views_per_s']:.2f} views/s; bare teacher forward "
        f"{r['teacher_forward_views_per_s']:.2f} views/s → {p3:.2f}",
        f"- loader with {r['loader_workers']} render worker(s): "
        f"{r['loader_views_per_s']:,.0f} views/s at 224²",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA, bf16, channels_last")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--loader-workers", type=int, default=1)
    parser.add_argument(
        "--render", default="host", help="host | device: who renders the views (train, precompute)"
    )
    args = parser.parse_args()
    result = main(args)
    name = "gpu" if args.gpu else "cpu"
    (Path(__file__).parent / f"scale_{name}.json").write_text(json.dumps(result, indent=2))
    text = render(result)
    target = "bench-gpu" if args.gpu else "bench-scale"
    title = f"## Offline vs online distillation at 224² (`make {target}`)"
    record_section(f"scale-{name}", f"{title}\n\n{text}")
    print(text)
