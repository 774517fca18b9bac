"""The teacher, for both stages: any timm model, from a local checkpoint, a timm pretrained tag
or a seeded init, and its forward (precompute stores it; online distillation runs it per step).

Checkpoints are untrusted input: `.pth` files load with `weights_only=True`, `.safetensors`
through safetensors. The sha256 of the file is recorded in the store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch

from deit_pipe.errors import TeacherError
from deit_pipe.weights import load_weights_file, sha256_file, state_dict_of


@dataclass(frozen=True)
class TeacherConfig:
    name: str = "regnety_160"
    checkpoint: str | None = None  # local .pth/.pt/.safetensors
    pretrained: bool = False  # timm hub weights for a tag such as regnety_160.deit_in1k
    random_init: bool = False  # tests and benchmarks only
    init_seed: int = 0
    model_kwargs: tuple[tuple[str, object], ...] = ()  # extra timm.create_model kwargs

    def to_dict(self) -> dict:
        return {**asdict(self), "model_kwargs": dict(self.model_kwargs)}


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors` or a `.pth` with or without a `model` key."""
    return state_dict_of(load_weights_file(path, "teacher checkpoint"), path, "teacher checkpoint")


def build_teacher(cfg: TeacherConfig, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on CPU, metadata for the store). Refuses a class-count mismatch."""
    kwargs = dict(cfg.model_kwargs)
    try:
        if cfg.checkpoint or cfg.random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.init_seed)  # identical random teachers on every worker
                model = timm.create_model(
                    cfg.name, pretrained=False, num_classes=num_classes, **kwargs
                )
        else:
            model = timm.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs)
    except RuntimeError as exc:
        raise TeacherError(f"cannot build teacher {cfg.name}: {exc}") from None
    sha = None
    if cfg.checkpoint:
        sha = _load_checkpoint(model, cfg, num_classes)
    elif not cfg.random_init and not cfg.pretrained:
        raise TeacherError(
            "the teacher needs weights: --teacher-checkpoint PATH, a timm "
            "pretrained tag with --teacher-pretrained, or --teacher-random-init (tests only)"
        )
    if model.num_classes != num_classes:
        raise TeacherError(
            f"teacher {cfg.name} predicts {model.num_classes} classes; the "
            f"dataset has {num_classes}"
        )
    model.eval()
    data_cfg = timm.data.resolve_data_config({}, model=model)
    info = {
        "name": cfg.name,
        "checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None,
        "checkpoint_sha256": sha,
        "pretrained": cfg.pretrained,
        "random_init": cfg.random_init,
        "init_seed": cfg.init_seed if cfg.random_init else None,
        "model_kwargs": dict(cfg.model_kwargs),
        "num_classes": num_classes,
        "input_size": list(data_cfg["input_size"]),
        "mean": list(data_cfg["mean"]),
        "std": list(data_cfg["std"]),
    }
    return model, info


def create_teacher(
    name: str,
    num_classes: int,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    random_init: bool = False,
    init_seed: int = 0,
    **model_kwargs: object,
) -> torch.nn.Module:
    """A teacher to run online (`ReplayLoader(teacher=…)`), as `precompute` builds its own.

    Args:
        name: a timm model (`regnety_160`, or a tag such as `regnety_160.deit_in1k`).
        num_classes: the dataset's classes (refused where the weights predict others).
        checkpoint: local weights (`.pth` loads with weights_only=True, or `.safetensors`).
        pretrained: timm's weights for the tag (downloaded by timm where not cached).
        random_init: a seeded random teacher (`init_seed`): tests and benchmarks only.
        model_kwargs: more `timm.create_model` arguments.

    Returns:
        The model in eval mode, on the CPU.
    """
    cfg = TeacherConfig(
        name,
        str(checkpoint) if checkpoint else None,
        pretrained,
        random_init,
        init_seed,
        tuple(sorted(model_kwargs.items())),
    )
    return build_teacher(cfg, num_classes)[0]


def _load_checkpoint(model: torch.nn.Module, cfg: TeacherConfig, num_classes: int) -> str:
    """Load `cfg.checkpoint` into `model`, naming what does not fit; its sha256."""
    path = Path(cfg.checkpoint)
    state = load_state_dict(path)
    head = _classifier_rows(model, state)
    if head is not None and head != num_classes:
        raise TeacherError(
            f"teacher checkpoint {path} predicts {head} classes; the dataset has {num_classes}"
        )
    own = model.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise TeacherError(
                f"teacher checkpoint {path} does not fit {cfg.name}: {key} has shape "
                f"{list(value.shape)} in the file, {list(own[key].shape)} in the model "
                "(weights of another architecture or size?)"
            )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TeacherError(
            f"teacher checkpoint {path} does not fit {cfg.name}: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:2]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
        )
    return sha256_file(path)


def check_normalization(info: dict, mean: tuple, std: tuple) -> None:
    """The plan's normalisation must be the one the teacher was trained with."""

    def close(a, b):
        return all(abs(x - y) < 1e-4 for x, y in zip(a, b, strict=True))

    if not (close(info["mean"], mean) and close(info["std"], std)):
        raise TeacherError(
            f"teacher {info['name']} expects mean {info['mean']} std {info['std']} but the plan "
            f"normalizes with mean {list(mean)} std {list(std)}"
        )


def _classifier_rows(model: torch.nn.Module, state: dict) -> int | None:
    name = model.default_cfg.get("classifier") if hasattr(model, "default_cfg") else None
    weight = state.get(f"{name}.weight") if name else None
    return int(weight.shape[0]) if weight is not None else None


@torch.inference_mode()
def teacher_logits(
    model: torch.nn.Module, images: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """float32 logits on `device`; bf16 autocast and channels_last on CUDA."""
    x = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(x)
    return out.float()
