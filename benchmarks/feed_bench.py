"""Views/s into the student: DeiT-S⚗ trained offline from a store with N loader workers,
its views rendered on the host (`--render host`: Pillow in the workers) and on the device
(`--render device`: the workers decode and draw, the kernels run on the student's device),
all in one run on the same store.

`img_s` is the training loop's own figure: a batch's views over the wall time from the end
of the previous step, waiting for the loader included (`student/train.py`); the table gives
its median after warm-up, and the step alone (`step_s`) for reference. On CUDA this is the
issue's "views/s into the student with 8 loader workers"; `--render auto` may turn to the
device there only where the device column is the larger.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from report import record_section  # benchmarks/ is on the path of a script run from it
from scale_bench import median_step

from deit_pipe.data import ViewConfig, open_source
from deit_pipe.data.recipe import Recipe
from deit_pipe.pipeline.precompute import pending, prepare_store, run
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job
from deit_pipe.student.train import TrainConfig, train
from deit_pipe.teacher import TeacherConfig

RENDERS = ("host", "device")


def main(a) -> dict:
    device = "cuda" if torch.cuda.is_available() and not a.cpu else "cpu"
    root = Path(tempfile.mkdtemp(prefix="deit-pipe-feed-"))
    try:
        data = f"fake:{a.batch * (a.warmup + a.steps)}:{a.source_size}"
        recipe = Recipe(view=ViewConfig.for_source(open_source(data), input_size=a.size))
        url = str(root / "store.zarr")
        job = Job(
            url=url, data=data, recipe=recipe,
            teacher=TeacherConfig(a.teacher, random_init=True), batch_size=a.batch,
            loader_workers=a.loader_workers, threads=torch.get_num_threads(), device=device,
        )  # fmt: skip
        request = StoreRequest(epochs=1, splits=("train",), targets="hard")
        run(job, pending(prepare_store(job, request)), workers=0)
        out = {}
        for render in RENDERS:
            cfg = TrainConfig(
                out=str(root / render), store=url, model=a.student, distill="hard",
                model_overrides={} if a.size == 224 else {"img_size": a.size},
                epochs=1, batch_size=a.batch, max_steps=a.warmup + a.steps, device=device,
                loader_workers=a.loader_workers, render=render, log_every=a.warmup + a.steps,
            )  # fmt: skip
            train(cfg)
            out[render] = {k: median_step(Path(cfg.out), a.warmup, k) for k in ("img_s", "step_s")}
            print(f"--render {render}: {out[render]}", flush=True)
        name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
        return {
            "device": name,
            "batch": a.batch,
            "size": a.size,
            "steps": a.steps,
            "loader_workers": a.loader_workers,
            "student": a.student,
            "medians": out,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summary(r: dict) -> str:
    m = r["medians"]
    lines = [
        f"Device **{r['device']}**, `{r['student']}` offline (hard targets from a store), batch "
        f"{r['batch']}, {r['size']}², {r['loader_workers']} loader workers; medians of "
        f"{r['steps']} steps after warm-up, one run.",
        "",
        "| `--render` | views/s into the student | step alone (s) |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v['img_s']:,.0f} | {v['step_s']:.3f} |" for k, v in m.items()]
    ratio = m["device"]["img_s"] / m["host"]["img_s"]
    lines += ["", f"device ÷ host: **{ratio:.2f}**."]
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--loader-workers", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="the views' side")
    p.add_argument("--source-size", type=int, default=256, help="the fake images' side")
    p.add_argument("--student", default="deit_small_distilled_patch16_224")
    p.add_argument("--teacher", default="regnety_160")
    p.add_argument("--cpu", action="store_true", help="on the CPU even where CUDA is")
    args = p.parse_args()
    result = main(args)
    (Path(__file__).parent / "feed.json").write_text(json.dumps(result, indent=2))
    text = summary(result)
    if not args.cpu and result["device"] != "cpu":  # the section holds the CUDA figures
        title = "## Views/s into the student, host vs device rendering (`benchmarks/feed_bench.py`)"
        record_section("feed", f"{title}\n\n{text}")
    print(text)
