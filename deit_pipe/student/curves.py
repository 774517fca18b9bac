"""A run's training curves as a PNG: loss terms per step and val top-1 per epoch and head
(`export` and `audit` draw them from `metrics.jsonl`)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def ema_smooth(values: list[float], weight: float = 0.9) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average, debiased so the first
    points are not pulled towards zero."""
    out, avg = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out[i] = avg / (1 - weight ** (i + 1))
    return out


def training_curves(runs: dict[str, Path], out: Path, teacher_top1: float | None = None) -> Path:
    """Per run: loss terms per step (left); val top-1 per run and head per epoch, with the
    teacher's val top-1 as a reference line (right)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for label, run_dir in runs.items():
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "loss" in r]
        for term in ("loss", "base", "teacher"):
            if steps and term in steps[0]:
                x, y = [r["step"] for r in steps], [r[term] for r in steps]
                (raw,) = ax_loss.plot(x, y, lw=0.6, alpha=0.25)  # faint raw, as TensorBoard
                ax_loss.plot(
                    x, ema_smooth(y), lw=1.4, color=raw.get_color(), label=f"{label}: {term}"
                )
        evals = [r for r in rows if "eval" in r and r["eval"]]
        for head in sorted(evals[0]["eval"]) if evals else []:
            ax_acc.plot(
                [r["epoch"] + 1 for r in evals],
                [r["eval"][head]["top1"] for r in evals],
                marker="o",
                ms=3,
                label=f"{label}: {head}",
            )
    if teacher_top1 is not None:
        ax_acc.axhline(teacher_top1, color="black", ls="--", lw=1, label="teacher")
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss terms (EMA 0.9 over raw)")
    ax_acc.set(xlabel="epoch", ylabel="val top-1", title="validation top-1 per run and head")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
