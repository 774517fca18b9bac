"""`export`: a run's student in timm's folder layout (`model.safetensors`, `config.json`),
with a model card (`README.md`) and its training curves, ready for `huggingface_hub upload`.

timm's own `save_for_hf` writes the weights and config, so `timm.create_model("local-dir:DIR",
pretrained=True)` rebuilds the architecture (the kwargs that differ from timm's defaults) and
`resolve_data_config` + `create_transform` give the run's eval views. A distilled DeiT's
forward returns (cls + dist) / 2 in eval and timm has no switch for one head, so `--head cls`
or `dist` arranges the weights: the chosen head doubled, the other zeroed. Doubling and halving
are exact in floating point, so the forward returns that head's logits bit for bit.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import torch

from deit_pipe.choices import EXPORT_HEADS
from deit_pipe.errors import CheckpointError, ConfigError, DeitPipeError, OutputPathError
from deit_pipe.outputs import (
    check_output_dir,
    check_replace,
    make_dir,
    mark_output,
    replace_owned,
)
from deit_pipe.student.card import ExportResult, audit_summary, render_card
from deit_pipe.student.evaluate import predict
from deit_pipe.student.runs import Run, load_run, run_source

EXPORT_FILES = ("model.safetensors", "config.json", "README.md", "curves.png")
WHAT = "exported model"
# pretrained_cfg fields timm copies from the architecture's source checkpoint (facebook's
# DeiT): they describe weights this export does not hold.
SOURCE_FIELDS = ("tag", "license", "hf_hub_id", "url", "origin_url", "paper_ids", "paper_name")


def verify_checkpoint(path: Path) -> None:
    """Refuse a checkpoint whose records fail their CRC-32: torch.load does not check them,
    so a flipped bit would otherwise ship as silently different weights."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path} is damaged ({exc}): export a run with a whole checkpoint"
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"{path} fails its checksum (record {bad} is damaged): restore the run's "
            "checkpoint.pt, or retrain"
        )


def arrange_head(state: dict, head: str) -> dict:
    """Weights whose eval forward, (head(cls) + head_dist(dist)) / 2, is `head`'s logits."""
    if head == "avg":
        return state
    keep, drop = ("head", "head_dist") if head == "cls" else ("head_dist", "head")
    state = dict(state)
    for p in ("weight", "bias"):
        state[f"{keep}.{p}"] = state[f"{keep}.{p}"] * 2  # exact: a power of two
        state[f"{drop}.{p}"] = torch.zeros_like(state[f"{drop}.{p}"])
    return state


def choose_head(run: Run, head: str | None) -> str:
    names = run.heads()
    if head is None:
        return "avg" if "avg" in names else "cls"
    if head not in EXPORT_HEADS:
        raise ConfigError(f"--head must be one of {', '.join(EXPORT_HEADS)}, got {head!r}")
    if head not in names:
        raise ConfigError(
            f"--head {head}: {run.config['model']} has no distillation token, only a cls head"
        )
    return head


def val_metrics(run: Run, model: torch.nn.Module) -> dict[str, dict]:
    """Every head's top-1/top-5/P/R/F1/AUC on the run's clean val views (`eval`'s views)."""
    from deit_pipe.student.metrics import classifier_metrics

    source = run_source(run)
    if "val" not in source.splits:
        return {}
    split = source.split("val")
    logits = predict(model, split, run.recipe.view)
    return {
        h: classifier_metrics(torch.softmax(v, 1).numpy(), split.labels, run.config["num_classes"])
        for h, v in logits.items()
    }


def export_run(
    run_path: Path | str,
    out: Path | str,
    *,
    ema: bool = False,
    head: str | None = None,
    audit: Path | str | None = None,
    force: bool = False,
) -> ExportResult:
    """Write `out`: the run's student (or EMA) answering with `head`, its config and card."""
    out = check_output_dir(out, EXPORT_FILES, WHAT)
    check_replace(out, EXPORT_FILES, WHAT, force)
    run_path = Path(run_path)
    ckpt = run_path / "checkpoint.pt" if run_path.is_dir() else run_path
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt} not found: export needs a run that saved a checkpoint")
    verify_checkpoint(ckpt)
    run = load_run(ckpt)
    head = choose_head(run, head)
    model = run.model(ema)
    metrics = val_metrics(run, model)
    audited = audit_summary(Path(audit), run, ema) if audit else None
    model.load_state_dict(arrange_head(model.state_dict(), head))
    per_epoch, epochs = run.config.get("steps_per_epoch"), run.config.get("epochs")
    total = per_epoch * epochs if per_epoch and epochs else None
    step = int(run.checkpoint["step"])
    result = ExportResult(out, head, ema, step, metrics, audited, total_steps=total)
    try:
        make_dir(out, "export folder")
        replace_owned(out, EXPORT_FILES)
        mark_output(out, WHAT)
        write_timm_folder(model, run, result)
        from deit_pipe.student.curves import training_curves

        training_curves({run.label: run.path}, out / "curves.png")
        (out / "README.md").write_text(render_card(run, result))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputPathError(f"cannot write the {WHAT} into {out}: {reason}") from None
    return result


def write_timm_folder(model: torch.nn.Module, run: Run, result: ExportResult) -> None:
    from timm.models import save_for_hf

    view = run.recipe.view
    data_config = {
        "input_size": (3, view.input_size, view.input_size),
        "interpolation": view.interpolation,
        "crop_pct": view.crop_pct,
        "crop_mode": "center",
        "mean": tuple(view.mean),
        "std": tuple(view.std),
    }
    provenance = {
        "run": str(run.path),
        "step": result.step,
        "ema": result.ema,
        "head": result.head,
        "val": result.metrics,
        "audit": result.audit,
    }
    try:
        save_for_hf(
            model,
            str(result.out),
            model_config={"label_names": list(run.config["classes"]), "deit_pipe": provenance},
            safe_serialization=True,
            data_config=data_config,
        )
    except (ValueError, AssertionError) as exc:  # an argument timm cannot serialise
        raise DeitPipeError(f"timm cannot export {run.config['model']}: {exc}") from None
    # safetensors writes its file owner-only (0600): it is to share, as config.json is
    path = result.out / "config.json"
    os.chmod(result.out / "model.safetensors", stat.S_IMODE(path.stat().st_mode))
    config = json.loads(path.read_text())
    for key in SOURCE_FIELDS:
        config["pretrained_cfg"].pop(key, None)
    path.write_text(json.dumps(config, indent=2))
