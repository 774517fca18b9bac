"""The audit's agreement heatmap (the training curves are `student.curves`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def agreement_heatmap(names: list[str], matrix: np.ndarray, out: Path) -> Path:
    n = len(names)
    fig, ax = plt.subplots(figsize=(2.2 + 1.1 * n, 1.6 + 0.9 * n))
    im = ax.imshow(matrix, cmap="viridis_r", vmin=0, vmax=max(float(matrix.max()), 1e-9))
    ax.set_xticks(range(n), names, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.3f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    ax.set_title("fraction of val images with different top-1 decisions", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
