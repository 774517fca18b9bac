"""A labelled grid of the first slots of an epoch: what the teacher will see."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from deit_pipe.data.device.finish import finish
from deit_pipe.data.loaders.dataset import PairDataset, collate_views
from deit_pipe.data.plan.epoch import MIX_NAMES, EpochPlan
from deit_pipe.data.sources.source import Source
from deit_pipe.data.views.host import ViewConfig
from deit_pipe.errors import check
from deit_pipe.limits import MAX_EPOCHS
from deit_pipe.outputs import check_output_file, write_output

PICTURE_FORMATS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # matplotlib writes each
MAX_SLOTS = 512  # 64 rows of 8: a figure of 12,000 pixels is already taller than useful


def check_view_request(out: Path | str, epoch: int, count: int, force: bool) -> Path:
    """The picture's path, if `views --out/--epoch/--count/--force` ask for one that can be
    made; checked before the dataset is opened or anything rendered."""
    check(0 <= epoch < MAX_EPOCHS, f"--epoch must be in [0, {MAX_EPOCHS}), got {epoch}")
    check(1 <= count <= MAX_SLOTS, f"--count must be between 1 and {MAX_SLOTS}, got {count}")
    return check_output_file(out, "picture", PICTURE_FORMATS, force)


def save_view_grid(
    source: Source, epoch_plan: EpochPlan, cfg: ViewConfig, count: int, out: Path, cols: int = 8
) -> Path:
    """Render slots [0, count) (whole pairs) and save them as an annotated grid (the format
    follows `out`'s extension); `out` is replaced whole or not at all."""
    check(1 <= count <= MAX_SLOTS, f"--count must be between 1 and {MAX_SLOTS}, got {count}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = source.split("train")
    dataset = PairDataset(split, epoch_plan, cfg)
    pairs = min((count + 1) // 2, len(dataset))
    batch = collate_views([dataset[p] for p in range(pairs)])
    images = _to_uint8(finish(batch, cfg, torch.device("cpu")), cfg)[:count]
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, slot in zip(axes.flat, images, batch.slot.tolist(), strict=False):
        pair, label = slot // 2, source.classes[split.labels[epoch_plan.sample[slot]]]
        partner = int(epoch_plan.partner(np.array([slot]))[0])
        other = source.classes[split.labels[epoch_plan.sample[partner]]]
        op, lam = MIX_NAMES[epoch_plan.mix_op[pair]], epoch_plan.lam[pair]
        title = f"#{slot} {label}" if op == "none" else f"#{slot} {label}·{lam:.2f}+{other}\n{op}"
        ax.imshow(img)
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"{source.data} epoch {epoch_plan.epoch}: slots 0–{len(images) - 1}", fontsize=9)
    fig.tight_layout()
    picture = io.BytesIO()
    fig.savefig(picture, dpi=100, format=out.suffix.lower().lstrip(".").replace("jpg", "jpeg"))
    plt.close(fig)
    write_output(out, picture.getvalue(), "picture")
    return out


def _to_uint8(views: torch.Tensor, cfg: ViewConfig) -> np.ndarray:
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    pixels = (views * std + mean).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
