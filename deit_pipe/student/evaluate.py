"""Clean-view evaluation: logits of every head on a split, top-1/top-5 per head."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from deit_pipe.data import EvalDataset, Split, ViewConfig, collate_views, finish
from deit_pipe.data.device.render import device_pixels
from deit_pipe.student.models import heads


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    split: Split,
    view: ViewConfig,
    *,
    batch_size: int = 256,
    device: torch.device = torch.device("cpu"),
    indices=None,
    workers: int = 0,
    render: str = "host",
) -> dict[str, torch.Tensor]:
    """float32 logits per head for the clean views of `split` (or of `indices`), in order,
    rendered by Pillow (`render="host"`) or by the kernels on `device` (the same bytes)."""
    was_training = model.training
    model.eval()
    dataset = EvalDataset(split, view, render)
    if indices is not None:
        dataset = Subset(dataset, indices)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_views
    )
    out: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        batch = device_pixels(batch, device)
        x = finish(batch, view, device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = heads(model, x)
        for name, value in logits.items():
            out.setdefault(name, []).append(value.float().cpu())
    model.train(was_training)
    return {name: torch.cat(values) for name, values in out.items()}


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, int]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {f"top{k}": int(hits[:, :k].any(dim=1).sum()) for k in ks}


def evaluate(
    model: torch.nn.Module,
    split: Split,
    view: ViewConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    **predict_kw,
) -> dict[str, dict[str, float]]:
    """Top-1/top-5 (fractions) per head; ranks evaluate interleaved shares and sum counts.
    `predict_kw`: `predict`'s batch_size, device and render."""
    indices = list(range(rank, len(split), world_size))
    logits = predict(model, split, view, indices=indices, **predict_kw)
    device = predict_kw.get("device", torch.device("cpu"))
    labels = torch.as_tensor(split.labels[indices])
    names = sorted(logits)
    counts = torch.tensor(
        [[topk_correct(logits[n], labels)[k] for k in ("top1", "top5")] for n in names],
        dtype=torch.float64,
    )
    if world_size > 1:
        counts = counts.to(device)
        dist.all_reduce(counts)
        counts = counts.cpu()
    return {
        n: {"top1": float(c[0]) / len(split), "top5": float(c[1]) / len(split)}
        for n, c in zip(names, counts, strict=True)
    }
