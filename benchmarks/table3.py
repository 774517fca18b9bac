"""`make table3`: the DeiT paper's Table 3 rows at small scale on digits, from one store.

Rows: no distillation; usual (soft) distillation and hard-label distillation of a model
without a distillation token; the distillation-token student (hard) read on its class,
distillation and class+distillation heads. Every student replays the same views from the
same store; seeds vary the student's init and drop-path. Writes benchmarks/table3.md and
the section of BENCHMARKS.md between its markers.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from deit_pipe.data import ViewConfig, open_source
from deit_pipe.data.recipe import Recipe
from deit_pipe.demo import STUDENT, DemoConfig, train_teacher
from deit_pipe.pipeline.precompute import precompute
from deit_pipe.pipeline.tasks import Job
from deit_pipe.pipeline.teacher import TeacherConfig
from deit_pipe.student.train import TrainConfig, train

ROWS = [  # (row label, model, distill, tau, alpha, head)
    ("no distillation", "deit_tiny_patch16_224", "none", 1.0, 0.5, "cls"),
    ("usual distillation (soft, τ=3, λ=0.1)", "deit_tiny_patch16_224", "soft", 3.0, 0.1, "cls"),
    ("hard-label distillation", "deit_tiny_patch16_224", "hard", 1.0, 0.5, "cls"),
    ("DeiT⚗: class embedding", "deit_tiny_distilled_patch16_224", "hard", 1.0, 0.5, "cls"),
    ("DeiT⚗: distil. embedding", "deit_tiny_distilled_patch16_224", "hard", 1.0, 0.5, "dist"),
    ("DeiT⚗: class+distillation", "deit_tiny_distilled_patch16_224", "hard", 1.0, 0.5, "avg"),
]
BEGIN, END = "<!-- table3:begin -->", "<!-- table3:end -->"


def run(seeds: tuple[int, ...] = (0, 1), epochs: int = 20) -> str:
    cfg = DemoConfig(student_epochs=epochs)
    root = Path(tempfile.mkdtemp(prefix="deit-pipe-table3-"))
    source = open_source("digits")
    teacher = train_teacher(root / "teacher", cfg)
    url = str(root / "teacher.zarr")
    precompute(
        Job(
            url=url,
            data="digits",
            device="cpu",
            batch_size=256,
            recipe=Recipe(view=ViewConfig.for_source(source)).to_dict(),
            teacher=TeacherConfig("regnety_002", str(root / "teacher" / "checkpoint.pt")),
        ),
        epochs=epochs,
        shard_views=512,
        workers=0,
    )
    results: dict[tuple, list[float]] = {}
    for seed in seeds:
        for model, distill, tau, alpha in sorted({r[1:5] for r in ROWS}):
            out = root / f"{model}-{distill}-{seed}"
            final = train(
                TrainConfig(
                    out=str(out),
                    store=url,
                    model=model,
                    distill=distill,
                    tau=tau,
                    alpha=alpha,
                    model_overrides=STUDENT,
                    epochs=epochs,
                    batch_size=cfg.batch_size,
                    lr=8e-3,
                    warmup_epochs=2,
                    seed=seed,
                    device="cpu",
                )
            )
            for head, v in final.items():
                results.setdefault((model, distill, head), []).append(v["top1"])
    lines = [
        f"Digits val top-1 (%), teacher regnety_002 {100 * teacher['cls']['top1']:.1f}%; "
        f"DeiT students {STUDENT}, {epochs} epochs, seeds {list(seeds)}: mean ± half-range.",
        "",
        "| method | label | teacher | top-1 |",
        "|---|---|---|---|",
    ]
    for label, model, distill, _, _, head in ROWS:
        acc = 100 * np.array(results[(model, distill, head)])
        # Every row keeps the label term, (1−λ)·CE beside the teacher's, as DeiT's code does.
        teacher_col = {"none": "–", "soft": "soft", "hard": "hard"}[distill]
        lines.append(
            f"| {label} | ✓ | {teacher_col} | "
            f"{acc.mean():.1f} ± {(acc.max() - acc.min()) / 2:.1f} |"
        )
    return "\n".join(lines)


def record(table: str) -> None:
    here = Path(__file__).parent
    (here / "table3.md").write_text(table + "\n")
    bench = here.parent / "BENCHMARKS.md"
    text = bench.read_text() if bench.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n## Table 3 at small scale (`make table3`)\n\n{table}\n{END}"
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    bench.write_text(text)


if __name__ == "__main__":
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    table = run(epochs=epochs)
    record(table)
    print(table)
    print(json.dumps({"written": ["benchmarks/table3.md", "BENCHMARKS.md"]}))
