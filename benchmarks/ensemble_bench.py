"""`make bench-ensemble`: one teacher or a two-teacher ensemble, Table 3 style, on digits.

Two teachers trained as the demo trains its own (regnety_002, light recipe), differing only
in their init seed, fill one store (the `small` recipe, same views): the second is added
with `--teacher-name`. DeiT⚗ students (hard distillation, the paper's method) distil from
teacher A, from teacher B, and from their equal-weight ensemble (`--teacher-name A,B`: the
argmax of the mean of their stored probabilities); seeds vary the students' init and
drop-path. Whatever the outcome, BENCHMARKS.md gets it between markers.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from report import record_section  # benchmarks/ is on the path of a script run from it

from deit_pipe.demo import STUDENT, DemoConfig, store_job, train_teacher
from deit_pipe.pipeline.precompute import precompute
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.student.train import TrainConfig, train

DEIT = "deit_tiny_distilled_patch16_224"
TEACHERS = {"A": 0, "B": 1}  # name → the teacher's init seed
CHOICES = ("A", "B", "A,B")


def prepare(root: Path, epochs: int) -> tuple[str, dict[str, float]]:
    """Both teachers and the store holding both; (store, each teacher's val top-1)."""
    url, top1 = str(root / "teachers.zarr"), {}
    for name, seed in TEACHERS.items():
        result = train_teacher(root / f"teacher-{name}", DemoConfig(), seed=seed)
        top1[name] = next(iter(result.values()))["top1"]
        ckpt = root / f"teacher-{name}" / "checkpoint.pt"
        job = replace(store_job(url, ckpt), teacher_name=name)
        precompute(job, StoreRequest(epochs=epochs), workers=2)
    return url, top1


def student(root: Path, url: str, choice: str, seed: int, epochs: int) -> dict[str, float]:
    result = train(
        TrainConfig(
            out=str(root / f"deit-{choice.replace(',', '+')}-{seed}"),
            store=url,
            teacher_name=choice,
            model=DEIT,
            model_overrides=STUDENT,
            distill="hard",
            epochs=epochs,
            batch_size=64,
            eval_every=epochs,
            train_seed=seed,
            device="cpu",
        )
    )
    return {head: v["top1"] for head, v in result.items()}


def render(runs: dict, teachers: dict, seeds, epochs: int, seconds: float) -> str:
    lines = [
        f"Digits val top-1 (%, 360 images), `small` recipe store of {epochs} epochs holding "
        "two teachers (regnety_002, the demo's recipe, init seeds 0 and 1); DeiT⚗ students "
        f"{STUDENT}, hard distillation, batch 64, {epochs} epochs; seeds {list(seeds)}: "
        f"mean ± std. {seconds / 60:.0f} min on this machine.",
        "",
        f"Teachers alone: A {100 * teachers['A']:.1f}, B {100 * teachers['B']:.1f}.",
        "",
        "| distilled from | class head | distil. head | class+distil. |",
        "|---|---|---|---|",
    ]
    for choice in CHOICES:
        cells = []
        for head in ("cls", "dist", "avg"):
            values = [100 * r[head] for r in runs[choice]]
            cells.append(f"{np.mean(values):.1f} ± {np.std(values):.1f}")
        label = "A + B (equal-weight ensemble)" if choice == "A,B" else f"teacher {choice}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    best_single = max(np.mean([r["avg"] for r in runs[c]]) for c in ("A", "B"))
    ensemble = np.mean([r["avg"] for r in runs["A,B"]])
    verdict = "beats" if ensemble > best_single else "does not beat"
    lines += [
        "",
        f"On these means the ensemble {verdict} the better single teacher "
        f"({100 * ensemble:.1f} vs {100 * best_single:.1f}, class+distil.).",
    ]
    return "\n".join(lines)


def main(seeds=(0, 1, 2), epochs: int = 30) -> str:
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="deit-pipe-ensemble-"))
    url, teachers = prepare(root, epochs)
    runs = {c: [student(root, url, c, s, epochs) for s in seeds] for c in CHOICES}
    seconds = time.perf_counter() - t0
    (Path(__file__).parent / "ensemble.json").write_text(
        json.dumps(
            {
                "seeds": list(seeds),
                "epochs": epochs,
                "teachers": teachers,
                "runs": runs,
                "seconds": seconds,
            },
            indent=2,
        )  # fmt: skip
    )
    text = render(runs, teachers, seeds, epochs, seconds)
    record_section("ensemble", f"## One teacher or two (`make bench-ensemble`)\n\n{text}")
    return text


if __name__ == "__main__":
    print(main())
