"""Starting a student from trained weights: `train --init-from`, with DeiT's `--finetune` semantics.

Sources: a deit-pipe run directory or checkpoint, a timm model file (`.pth` with or without a
`model` key, `.safetensors`; loaded weights-only), or timm hub weights written `timm:TAG`
(the network is used only then). The weights are fitted to the student as DeiT fine-tunes
(facebookresearch/deit `main.py --finetune`):
- position embeddings of the patch grid are resampled bicubically to the student's grid with
  timm's `resample_abs_pos_embed` (bilinear shrinks their norm, the paper notes); the class
  and distillation tokens' embeddings are kept;
- a classifier for another class count is left at its fresh initialisation;
- a source without a distillation token gives a distilled student its class token, that
  token's position embedding and its head for the distillation token and head; a distilled
  source gives a plain student its class side only.
Anything else that differs (patch size, width, depth) is refused, naming both shapes.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from deit_pipe.errors import InitFromError
from deit_pipe.student.checkpoint import check_checksum
from deit_pipe.weights import load_weights_file, sha256_file, state_dict_of

log = logging.getLogger(__name__)
HEADS = ("head", "head_dist")


def load_source(source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, provenance) of an `--init-from` source; provenance holds its sha256 and,
    for a deit-pipe run, that run's config."""
    if source.startswith("timm:"):
        import timm

        tag = source.removeprefix("timm:")
        state = timm.create_model(tag, pretrained=True).state_dict()
        return state, {"source": source, "kind": "timm hub", "sha256": _tensors_sha256(state)}
    path = Path(source)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise InitFromError(
            f"--init-from {source}: no run, checkpoint or weights file there "
            "(timm hub weights are written timm:TAG)"
        )
    obj = load_weights_file(path, "--init-from file")
    info = {"source": str(path), "sha256": sha256_file(path)}
    if isinstance(obj, dict) and {"model", "config", "step"} <= set(obj):
        obj = check_checksum(obj, path)  # a run's checkpoint: its checksum too
        return dict(obj["model"]), {**info, "kind": "deit-pipe run", "run_config": obj["config"]}
    return state_dict_of(obj, path, "--init-from file"), {**info, "kind": "model file"}


def _tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fit_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict, list[str]]:
    """`state` made to fit `model` (see the module docstring); (fitted state, notices)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target = model.state_dict()
    notices: list[str] = []
    _fit_tokens(state, target, notices)
    if "pos_embed" in state and "pos_embed" in target:
        state["pos_embed"] = _fit_pos_embed(state["pos_embed"], model, target, notices)
    _fit_heads(state, target, notices)
    for key, value in state.items():
        if key in target and value.shape != target[key].shape:
            raise InitFromError(
                f"--init-from weights do not fit this student: {key} is "
                f"{tuple(value.shape)} in the source, {tuple(target[key].shape)} here"
            )
    unexpected = sorted(set(state) - set(target))
    missing = sorted(k for k in set(target) - set(state) if k.split(".")[0] not in HEADS)
    if unexpected or missing:
        raise InitFromError(
            "--init-from weights are another architecture: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})"
        )
    return state, notices


def _fit_tokens(state: dict, target: dict, notices: list[str]) -> None:
    if "dist_token" in target and "dist_token" not in state and "cls_token" in state:
        state["dist_token"] = state["cls_token"].clone()
        if "pos_embed" in state:  # the class token's position embedding serves both
            pe = state["pos_embed"]
            state["pos_embed"] = torch.cat([pe[:, :1], pe[:, :1], pe[:, 1:]], dim=1)
        notices.append(
            "the source has no distillation token: it starts as a copy of the class token"
        )
    elif "dist_token" in state and "dist_token" not in target:
        del state["dist_token"]
        if "pos_embed" in state:
            pe = state["pos_embed"]
            state["pos_embed"] = torch.cat([pe[:, :1], pe[:, 2:]], dim=1)
        for key in [k for k in state if k.startswith("head_dist.")]:
            del state[key]
        notices.append("the source's distillation token and head are dropped (plain student)")


def _fit_pos_embed(pe: torch.Tensor, model: nn.Module, target: dict, notices: list[str]):
    prefix = getattr(model, "num_prefix_tokens", 1)
    if pe.shape == target["pos_embed"].shape:
        return pe
    if pe.shape[-1] != target["pos_embed"].shape[-1]:
        return pe  # a width mismatch: refused with both shapes by the caller
    grid = list(model.patch_embed.grid_size)
    old = int(round((pe.shape[1] - prefix) ** 0.5))
    resampled = resample_abs_pos_embed(
        pe, new_size=grid, old_size=[old, old], num_prefix_tokens=prefix, interpolation="bicubic"
    )
    notices.append(
        f"position embeddings resampled bicubically from {old}×{old} to {grid[0]}×{grid[1]}"
    )
    return resampled


def _fit_heads(state: dict, target: dict, notices: list[str]) -> None:
    if "head_dist.weight" in target and "head_dist.weight" not in state and "head.weight" in state:
        state["head_dist.weight"] = state["head.weight"].clone()
        state["head_dist.bias"] = state["head.bias"].clone()
        notices.append("head_dist starts as a copy of head")
    for head in HEADS:
        key = f"{head}.weight"
        if key in state and key in target and state[key].shape[0] != target[key].shape[0]:
            rows = state[key].shape[0]
            for name in [k for k in state if k.startswith(f"{head}.")]:
                del state[name]
            notices.append(
                f"{head} predicts {rows} classes in the source, {target[key].shape[0]} here: "
                "re-initialised"
            )


def init_from(model: nn.Module, source: str, loaded: tuple | None = None) -> dict:
    """Load `source` (or its `load_source` result, `loaded`) into `model`, fitted; returns
    the provenance to record, with notices."""
    state, info = loaded if loaded is not None else load_source(source)
    info = dict(info)
    fitted, notices = fit_state_dict(dict(state), model)
    model.load_state_dict(fitted, strict=False)
    for notice in notices:
        log.warning("--init-from %s: %s", source, notice)
    info.pop("run_config", None)
    return {**info, "notices": notices}
