"""Students: timm DeiT/ViT models, with overrides for small images, and their heads.

A distilled DeiT (`deit_*_distilled_*`) returns (class head, distillation head) in training
and their average in eval; `heads()` exposes each head for evaluation and the audit.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from deit_pipe.errors import ConfigError

ARCH_OVERRIDES = ("img_size", "patch_size", "depth", "embed_dim", "num_heads")


def create_student(
    name: str,
    num_classes: int,
    *,
    drop_path: float = 0.1,
    img_size: int | None = None,
    patch_size: int | None = None,
    depth: int | None = None,
    embed_dim: int | None = None,
    num_heads: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """A student as `deit-pipe train` makes it: a timm model initialised from `seed` (the
    global torch RNG is left as it was), a distilled DeiT set to train both heads.

    Args:
        name: a timm model (`deit_tiny_distilled_patch16_224`, `vit_small_patch16_224`, …).
        num_classes: the store's classes.
        drop_path: the stochastic-depth rate.
        img_size, patch_size, depth, embed_dim, num_heads: ViT overrides (small views).
        seed: the initialisation's seed (`--train-seed`).

    Returns:
        The model on the CPU; a distilled DeiT returns (class, distillation) logits while
        training and their average in eval mode.
    """
    overrides = {
        k: v
        for k, v in zip(
            ARCH_OVERRIDES, (img_size, patch_size, depth, embed_dim, num_heads), strict=True
        )
        if v is not None
    }
    kwargs = {"num_classes": num_classes, "drop_path_rate": drop_path, **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
        except (AssertionError, ValueError, TypeError, RuntimeError) as exc:
            # e.g. timm's "dim should be divisible by num_heads" for --embed-dim/--num-heads
            given = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "its defaults"
            raise ConfigError(f"cannot build student {name} with {given}: {exc}") from None
    if is_distilled(model):
        model.set_distilled_training(True)
    return model


def is_distilled(model: nn.Module) -> bool:
    return hasattr(model, "head_dist")


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def head_names(model: nn.Module) -> tuple[str, ...]:
    return ("cls", "dist", "avg") if is_distilled(unwrap(model)) else ("cls",)


def heads(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits of every head: cls, dist and their average for a distilled DeiT, else cls."""
    m = unwrap(model)
    if not is_distilled(m):
        return {"cls": model(images)}
    feats = m.forward_features(images)
    cls, dist = m.head(feats[:, 0]), m.head_dist(feats[:, 1])
    return {"cls": cls, "dist": dist, "avg": (cls + dist) / 2}
