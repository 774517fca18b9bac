"""`make table3` / `make table4`: the DeiT paper's Tables 3 and 4 at small scale on digits.

One teacher, one store (the `small` recipe), every student replaying the same views; seeds
vary the students' init and drop-path. Table 3: val top-1 per distillation variant (mean ±
std over seeds). Table 4: the disagreement matrix between ground truth, the teacher, the
undistilled ViT and the three heads of DeiT⚗ (mean over seeds). The paper's orderings are
checked from the numbers; BENCHMARKS.md gets both tables and the checks between markers.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import record_section  # benchmarks/ is on the path of a script run from it

from deit_pipe.audit import audit, classifier_label
from deit_pipe.demo import STUDENT, DemoConfig, store_job, train_teacher
from deit_pipe.pipeline.precompute import precompute
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.student.runs import load_run
from deit_pipe.student.train import TrainConfig, train

VIT, DEIT = "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"
RUNS = {  # run → (model, distill, tau, alpha)
    "vit none": (VIT, "none", None, None),
    "vit soft": (VIT, "soft", 3.0, 0.1),
    "vit hard": (VIT, "hard", None, None),
    "deit⚗ hard": (DEIT, "hard", None, None),
}
TABLE3 = [  # (paper row, label column, teacher column, run, head, paper DeiT-Ti top-1)
    ("no distillation", "✓", "–", "vit none", "cls", 72.2),
    ("usual distillation (soft, τ=3, λ=0.1)", "✓", "soft", "vit soft", "cls", 72.2),
    ("hard-label distillation", "✓", "hard", "vit hard", "cls", 74.3),
    ("DeiT⚗: class embedding", "✓", "hard", "deit⚗ hard", "cls", 73.9),
    ("DeiT⚗: distil. embedding", "✓", "hard", "deit⚗ hard", "dist", 74.6),
    ("DeiT⚗: class+distillation", "✓", "hard", "deit⚗ hard", "avg", 74.5),
]
TABLE4 = ["ground truth", "teacher", "DeiT (no distill.)", "DeiT⚗ class", "DeiT⚗ distil.",
          "DeiT⚗ class+distil."]  # fmt: skip


def prepare(root: Path, epochs: int) -> tuple[str, float]:
    """The teacher (demo recipe) and its store for the students' views; (store, seconds)."""
    t0 = time.perf_counter()
    train_teacher(root / "teacher", DemoConfig())
    url = str(root / "teacher.zarr")
    precompute(
        store_job(url, root / "teacher" / "checkpoint.pt"), StoreRequest(epochs=epochs), workers=2
    )
    return url, time.perf_counter() - t0


def run_seed(root: Path, url: str, seed: int, epochs: int) -> tuple[dict, np.ndarray]:
    """Every run of one seed: ({(run, head): top-1}, the Table 4 matrix)."""
    dirs, top1 = {}, {}
    for name, (model, distill, tau, alpha) in RUNS.items():
        dirs[name] = root / f"{name.replace('⚗', '_distilled').replace(' ', '_')}-{seed}"
        result = train(
            TrainConfig(
                out=str(dirs[name]),
                store=url,
                model=model,
                model_overrides=STUDENT,
                distill=distill,
                tau=tau,
                alpha=alpha,
                epochs=epochs,
                batch_size=64,
                eval_every=epochs,
                train_seed=seed,
                device="cpu",
            )
        )
        top1.update({(name, head): v["top1"] for head, v in result.items()})
    report = audit(
        url, [dirs["vit none"], dirs["deit⚗ hard"]], root / f"audit-{seed}", device="cpu"
    )
    deit = load_run(dirs["deit⚗ hard"])
    order = ["ground truth", "teacher", load_run(dirs["vit none"]).label]
    order += [classifier_label(deit.label, h, 3) for h in ("cls", "dist", "avg")]
    index = [report.classifiers.index(n) for n in order]
    return top1, report.matrix[np.ix_(index, index)]


def orderings(acc: dict, m: np.ndarray) -> list[tuple[str, bool, str, str]]:
    """The paper's claims, each checked on the means: (claim, holds, measured here, paper's
    DeiT-Ti numbers). Table 3 in top-1 %, Table 4 in disagreement."""
    none, soft, hard = acc["vit none", "cls"], acc["vit soft", "cls"], acc["vit hard", "cls"]
    cls, dist, avg = (acc["deit⚗ hard", h] for h in ("cls", "dist", "avg"))
    t = 1  # the teacher's row in the Table 4 matrix
    heads = m[t, 3:]

    def pct(a: float, b: float) -> str:
        return f"{100 * a:.1f} vs {100 * b:.1f}"

    return [
        ("hard-label distillation beats no distillation", hard > none, pct(hard, none),
         "74.3 vs 72.2"),
        ("hard-label distillation beats soft distillation", hard > soft, pct(hard, soft),
         "74.3 vs 72.2"),
        ("soft distillation is no better than none", soft <= none + 0.01, pct(soft, none),
         "72.2 vs 72.2"),
        ("DeiT⚗'s distillation head beats its class head", dist > cls, pct(dist, cls),
         "74.6 vs 73.9"),
        ("DeiT⚗ class+distillation beats the single-token hard student", avg > hard,
         pct(avg, hard), "74.5 vs 74.3"),
        ("distilled heads agree more with the teacher than the undistilled ViT does",
         bool(heads.max() < m[t, 2]), f"{heads.min():.3f}–{heads.max():.3f} vs {m[t, 2]:.3f}",
         "0.100–0.112 vs 0.133"),
        ("the distillation head agrees most with the teacher", bool(m[t, 4] == m[t, 2:].min()),
         f"{m[t, 4]:.3f} vs best {m[t, 2:].min():.3f}", "0.100, the best"),
        ("the undistilled ViT disagrees most with ground truth", bool(m[0, 2] == m[0, 2:].max()),
         f"{m[0, 2]:.3f} vs most {m[0, 2:].max():.3f}", "0.182, the most"),
        ("the class and distillation heads agree with each other more than with the teacher",
         bool(m[3, 4] < min(m[t, 3], m[t, 4])),
         f"{m[3, 4]:.3f} vs {min(m[t, 3], m[t, 4]):.3f}", "0.050 vs 0.100"),
    ]  # fmt: skip


def render(results: list[dict], matrices: list[np.ndarray], seeds, epochs, secs) -> str:
    keys = {(r, h) for r, h in results[0]}
    mean = {k: float(np.mean([100 * r[k] for r in results])) for k in keys}
    std = {k: float(np.std([100 * r[k] for r in results])) for k in keys}
    m, s = np.mean(matrices, axis=0), np.std(matrices, axis=0)
    lines = [
        f"Digits val top-1 (%, 360 images), `small` recipe store, {epochs} epochs, students "
        f"{STUDENT} at batch 64; seeds {list(seeds)}: mean ± std. {secs / 60:.0f} min on this "
        "machine for both tables.",
        "",
        "### Table 3",
        "",
        "| method | label | teacher | top-1 (digits) | paper DeiT-Ti |",
        "|---|---|---|---|---|",
    ]
    for row, label, teacher, run, head, paper in TABLE3:
        cell = f"{mean[run, head]:.1f} ± {std[run, head]:.1f}"
        lines.append(f"| {row} | {label} | {teacher} | {cell} | {paper} |")
    lines += ["", "### Table 4 (fraction of val images with different top-1 decisions)", ""]
    lines += ["| | " + " | ".join(TABLE4) + " |", "|---" * (len(TABLE4) + 1) + "|"]
    for i, name in enumerate(TABLE4):
        cells = [f"{m[i, j]:.3f} ± {s[i, j]:.3f}" if i != j else "0" for j in range(len(TABLE4))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "### The paper's orderings, checked on these means", ""]
    for claim, holds, here, paper in orderings({k: mean[k] / 100 for k in keys}, m):
        verdict = "holds" if holds else "**does not hold**"
        lines.append(f"- {verdict}: {claim} — digits {here} (paper, DeiT-Ti: {paper})")
    return "\n".join(lines)


def main(seeds=(0, 1, 2), epochs: int = 60) -> str:
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="deit-pipe-tables-"))
    url, _ = prepare(root, epochs)
    runs = [run_seed(root, url, seed, epochs) for seed in seeds]
    text = render(
        [r[0] for r in runs], [r[1] for r in runs], seeds, epochs, time.perf_counter() - t0
    )
    (Path(__file__).parent / "paper_tables.json").write_text(
        json.dumps(
            {
                "seeds": list(seeds),
                "epochs": epochs,
                "top1": [{f"{k[0]} / {k[1]}": v for k, v in r[0].items()} for r in runs],
                "table4": [r[1].tolist() for r in runs],
                "classifiers": TABLE4,
                "seconds": time.perf_counter() - t0,
            },
            indent=2,
        )
    )
    record_section("paper-tables", f"## Tables 3 and 4 at small scale (`make table3`)\n\n{text}")
    return text


def rerender() -> str:
    """The section again from `paper_tables.json`, without training (after a wording change)."""
    saved = json.loads((Path(__file__).parent / "paper_tables.json").read_text())
    results = [{tuple(k.split(" / ")): v for k, v in r.items()} for r in saved["top1"]]
    matrices = [np.array(m) for m in saved["table4"]]
    text = render(results, matrices, saved["seeds"], saved["epochs"], saved["seconds"])
    record_section("paper-tables", f"## Tables 3 and 4 at small scale (`make table3`)\n\n{text}")
    return text


if __name__ == "__main__":
    if sys.argv[1:] == ["--rerender"]:
        print(rerender())
    else:
        seeds = tuple(int(s) for s in sys.argv[1].split(",")) if len(sys.argv) > 1 else (0, 1, 2)
        print(main(seeds))
