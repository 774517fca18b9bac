"""Views/s into the student: DeiT-S⚗ trained offline from a store with N loader workers,
its views rendered on the host (`--render host`: Pillow in the workers) and on the device
(`--render device`: the workers decode and draw, the kernels run on the student's device),
all in one run on the same store.

`img_s` is the training loop's own figure: a batch's views over the wall time from the end
of the previous step, waiting for the loader included (`student/train.py`); the table gives
its median after warm-up, and the step alone (`step_s`) for reference. On CUDA this is the
issue's "views/s into the student with 8 loader workers". A third run, `--render auto` with
a render trial of `--trial` timed steps a renderer (`student/rendertrial.py`), records what
the trial measured and chose, to be held against the two columns.
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
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.pipeline.precompute import pending, prepare_store, run
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job
from deit_pipe.student.rendertrial import window_steps
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
        trial = auto_trial(a, url, root / "auto", device) if a.trial else None
        name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
        return {
            "device": name,
            "batch": a.batch,
            "size": a.size,
            "steps": a.steps,
            "loader_workers": a.loader_workers,
            "student": a.student,
            "medians": out,
            "trial": trial,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def auto_trial(a, url: str, out: Path, device: str) -> dict:
    """`--render auto` with a trial of `a.trial` timed steps a renderer; the store's epoch is
    cycled so the trial (and one restart of a window, at the epoch's end) fits."""
    warm, _ = window_steps(a.loader_workers)
    cfg = TrainConfig(
        out=str(out), store=url, model=a.student, distill="hard",
        model_overrides={} if a.size == 224 else {"img_size": a.size}, epochs=3,
        cycle_epochs=True, batch_size=a.batch, max_steps=2 * (warm + a.trial) + a.trial + 1,
        device=device, loader_workers=a.loader_workers, render="auto", render_trial=a.trial,
        log_every=10,
    )  # fmt: skip
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    found = [r["render_trial"] for r in rows if "render_trial" in r]
    print(f"--render auto: {found}", flush=True)
    return found[0] if found else {}


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
    t = r.get("trial")
    if t:
        lines[-1] += (
            f" `--render auto`'s trial ({t['steps']} timed steps a renderer): host "
            f"{t['host_img_s']:,.0f} img/s, device {t['device_img_s']:,.0f} img/s, so the "
            f"{t['chosen']}."
        )
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
    p.add_argument("--trial", type=int, default=6, help="--render auto's timed steps (0: none)")
    p.add_argument("--cpu", action="store_true", help="on the CPU even where CUDA is")
    args = p.parse_args()
    result = main(args)
    (Path(__file__).parent / "feed.json").write_text(json.dumps(result, indent=2))
    text = summary(result)
    if not args.cpu and result["device"] != "cpu":  # the section holds the CUDA figures
        title = "## Views/s into the student, host vs device rendering (`benchmarks/feed_bench.py`)"
        record_section("feed", f"{title}\n\n{text}")
    print(text)
