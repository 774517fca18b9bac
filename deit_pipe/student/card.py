"""The model card (`README.md`) of an exported student: what was trained on what, from which
teacher, how it scores per head, and how far it agrees with its teacher (from `audit`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deit_pipe.errors import DeitPipeError

if TYPE_CHECKING:
    from deit_pipe.student.runs import Run


@dataclass
class ExportResult:
    """What `export` wrote, which the card describes."""

    out: Path
    head: str
    ema: bool
    step: int
    metrics: dict[str, dict]  # per head: top1, top5, precision, recall, f1, auc on val
    audit: dict | None
    total_steps: int | None = None  # the run's planned steps (None: not recorded)

    @property
    def unfinished(self) -> str | None:
        """`step S of T`, where the run stopped before its last step (`--max-steps`, a kill)."""
        if self.total_steps is None or self.step >= self.total_steps:
            return None
        return f"step {self.step} of {self.total_steps}"


HEAD_LABELS = {"cls": "cls head", "dist": "dist head", "avg": "cls+dist"}
METRICS = ("top1", "top5", "precision", "recall", "f1", "auc")


def classifier_label(run_name: str, head: str, heads: int) -> str:
    """The audit's name for one head of a run (a single-head run is named by the run)."""
    return run_name if heads == 1 else f"{run_name} / {HEAD_LABELS[head]}"


def audit_summary(report: Path, run: Run, ema: bool) -> dict:
    """This run's part of an audit report (`agreement.json`): per head, its val metrics, its
    val disagreement with the teacher and its agreement on replayed training views. Refused
    if the report audited another run, other weights or an older checkpoint."""
    try:
        doc = json.loads((report / "agreement.json").read_text())
    except (OSError, ValueError) as exc:
        raise DeitPipeError(f"--audit {report}: no readable agreement.json ({exc})") from None
    name = next(
        (n for n, r in doc["runs"].items() if Path(r["path"]).resolve() == run.path.resolve()),
        None,
    )
    if name is None:
        raise DeitPipeError(f"--audit {report} did not audit run {run.path}")
    audited = doc["runs"][name]
    if audited["step"] != run.checkpoint["step"] or audited["ema"] != ema:
        raise DeitPipeError(
            f"--audit {report} audited {run.path} at step {audited['step']} "
            f"(ema {audited['ema']}), the export is of step {run.checkpoint['step']} (ema {ema}): "
            "audit the run again"
        )
    heads = run.heads()
    teacher = doc["classifiers"].index("teacher")
    result = {"store": doc["store"], "heads": {}}
    for head in heads:
        label = classifier_label(name, head, len(heads))
        row = doc["matrix"][doc["classifiers"].index(label)]
        result["heads"][head] = {
            **doc["metrics"][label],
            "val_disagreement_with_teacher": row[teacher],
            "train_view_agreement": doc["train_view_agreement"].get(name, {}).get(head),
        }
    result["teacher"] = doc["metrics"]["teacher"]
    return result


def _num(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def render_card(run: Run, result: ExportResult) -> str:
    weights = "EMA weights" if result.ema else "weights"
    lines = [
        *_header(run, result, weights),
        *_training_table(run.config),
        *_evaluation_table(result, weights),
        *(_agreement_table(result.audit) if result.audit else []),
        "",
        "## Training curves",
        "",
        "![curves](curves.png)",
        "",
    ]
    return "\n".join(lines)


def _header(run: Run, result: ExportResult, weights: str) -> list[str]:
    """The front matter timm's hub reads, what the folder holds, and how to load it."""
    return [
        "---",
        "library_name: timm",
        "tags: [image-classification, timm, deit, distillation, deit-pipe]",
        "---",
        f"# {run.config['model']} student ({result.head} head)",
        "",
        f"A DeiT student trained with deit-pipe: the {weights} of run `{run.path.name}` at step "
        f"{result.step}; its forward returns the **{HEAD_LABELS[result.head]}** logits.",
        "",
        *(
            [f"**Unfinished run**: exported at {result.unfinished} (stopped early).", ""]
            if result.unfinished
            else []
        ),
        *_rearranged(result.head),
        "```python",
        "import timm",
        "from timm.data import create_transform, resolve_data_config",
        "",
        'model = timm.create_model("local-dir:PATH", pretrained=True).eval()',
        "transform = create_transform(**resolve_data_config(model=model))",
        "```",
        "",
    ]


def _training_table(cfg: dict) -> list[str]:
    """What the run trained on and how: dataset, store, teacher, recipe, schedule, model."""
    store = cfg.get("store_identity") or {}
    teacher = store.get("teacher") or (cfg.get("teacher") or {}).get("name") or "none"
    sha = store.get("teacher_checkpoint_sha256") or "–"
    recipe = cfg["recipe"]
    view, mix = recipe["transform"], recipe["mix"]
    return [
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| dataset | `{cfg['dataset']}` (fingerprint `{cfg['dataset_fingerprint']}`) |",
        f"| classes | {cfg['num_classes']} |",
        f"| store | `{cfg.get('store') or '–'}` (created {store.get('created', '–')}) |",
        f"| teacher | {teacher} (checkpoint sha256 `{sha}`) |",
        f"| distillation | {cfg['distill']}, τ = {cfg['tau']:g}, α = {cfg['alpha']:g} |",
        f"| recipe | views {recipe['recipe']}, {recipe['repeats']} repeats, aa "
        f"{view['auto_augment']}, mixup {mix['mixup_alpha']:g} / cutmix {mix['cutmix_alpha']:g}; "
        f"schedule {cfg['preset']} |",
        f"| schedule | {cfg['epochs']} epochs, batch {cfg['batch_size']}, lr {cfg['lr']:g} "
        f"per 512, weight decay {cfg['weight_decay']:g}, drop-path {cfg['drop_path']:g} |",
        f"| architecture | {cfg['model']} {json.dumps(cfg['model_overrides'])} |",
        f"| eval view | {view['input_size']}px, crop_pct {view['crop_pct']:g}, "
        f"{view['interpolation']}, mean {list(view['mean'])}, std {list(view['std'])} |",
        "",
    ]


def _evaluation_table(result: ExportResult, weights: str) -> list[str]:
    """Each head's val metrics."""
    lines = [
        f"## Evaluation on val ({weights}, clean views)",
        "",
        "| head | top-1 | top-5 | precision | recall | F1 | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for head, m in result.metrics.items():
        lines.append(f"| {head} | " + " | ".join(_num(m[k]) for k in METRICS) + " |")
    return lines


def _agreement_table(a: dict) -> list[str]:
    """Each head's agreement with the teacher, from an `audit_summary`."""
    lines = [
        "",
        f"## Agreement with the teacher (audit of store `{a['store']['url']}`)",
        "",
        "| head | val disagreement with the teacher | agreement on training views |",
        "|---|---|---|",
    ]
    for head, h in a["heads"].items():
        lines.append(
            f"| {head} | {_num(h['val_disagreement_with_teacher'])} | "
            f"{_num(h['train_view_agreement'])} |"
        )
    lines.append(f"\nThe teacher's own val top-1: {_num(a['teacher']['top1'])}.")
    return lines


def _rearranged(head: str) -> list[str]:
    """What a single-head export did to the weights: timm's distilled ViT averages its two
    heads at eval, so that head was doubled and the other zeroed (exact in floating point).
    Fine-tuning from this folder starts from those weights, not the run's."""
    if head == "avg":
        return []
    other = "dist" if head == "cls" else "cls"
    return [
        f"To make timm's distilled ViT (which averages its two heads at eval) return the "
        f"{head} head alone, its weights and bias were doubled and the {other} head's zeroed: "
        "the logits are exact, but fine-tune from the run's checkpoint, not this folder.",
        "",
    ]
