"""Teacher–student agreement, offline: the teacher's answers come from the store, never a model.

Classifiers: ground truth, the teacher (store `val/`), and every head of every run (cls,
dist, cls+dist for a distilled DeiT). Outputs: agreement.json, agreement.png, curves.png and
report.md in the output folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from deit_pipe.audit.agreement import disagreement_matrix
from deit_pipe.audit.plots import agreement_heatmap
from deit_pipe.data import collate_views, finish, mismatches, stored_views
from deit_pipe.data.device.render import device_pixels, render_mode
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.data.sources.cache import DataCache
from deit_pipe.device import resolve_device
from deit_pipe.errors import DeitPipeError, OutputPathError, ReplayError
from deit_pipe.outputs import check_output_dir, check_replace, make_dir, mark_output
from deit_pipe.place import Place
from deit_pipe.storage import TargetStore
from deit_pipe.student.card import HEAD_LABELS, audit_summary, classifier_label
from deit_pipe.student.curves import training_curves
from deit_pipe.student.evaluate import predict
from deit_pipe.student.metrics import classifier_metrics
from deit_pipe.student.models import heads
from deit_pipe.student.runs import Run, load_run, store_source
from deit_pipe.student.tblog import TB_DIR, add_audit


@dataclass
class AuditResult:
    classifiers: list[str]
    matrix: np.ndarray
    metrics: dict[str, dict]
    train_agreement: dict[str, dict]
    files: dict[str, Path]

    def disagreement(self, a: str, b: str) -> float:
        i, j = self.classifiers.index(a), self.classifiers.index(b)
        return float(self.matrix[i, j])

    def to_json(self) -> dict:
        return {
            "classifiers": self.classifiers,
            "matrix": self.matrix.round(6).tolist(),
            "metrics": self.metrics,
            "train_view_agreement": self.train_agreement,
        }


def check_run_against_store(run: Run, store: TargetStore) -> None:
    fp, content = store.spec.dataset["fingerprint"], store.spec.dataset.get("content")
    other_kind = (
        run.config["dataset"].partition(":")[0] != store.spec.dataset["spec"].partition(":")[0]
    )
    same_content = (
        other_kind and content is not None and run.config.get("dataset_content") == content
    )
    if run.config["dataset_fingerprint"] != fp and not same_content:
        raise DeitPipeError(
            f"run {run.path} was trained on dataset {run.config['dataset']} "
            f"(fingerprint {run.config['dataset_fingerprint'][:12]}), the store "
            f"{store.url} holds {store.spec.dataset['spec']} ({fp[:12]})"
        )
    theirs = run.config.get("store_identity")
    ours = {k: v for k, v in store.identity.items() if k != "url"}
    if theirs and {k: v for k, v in theirs.items() if k != "url"} != ours:
        raise DeitPipeError(
            f"run {run.path} was trained on another store ({theirs['url']}, "
            f"created {theirs['created']}), not {store.url}"
        )


def _names(runs: list[Run]) -> list[str]:
    labels = [r.label for r in runs]
    return [
        f"{lab} ({r.path.name})" if labels.count(lab) > 1 else lab
        for lab, r in zip(labels, runs, strict=True)
    ]


AUDIT_FILES = ("agreement.json", "agreement.png", "curves.png", "report.md")


def audit(
    place: Place | str,
    run_paths: list[Path | str],
    out: Path,
    *,
    ema: bool = False,
    train_views: int = 512,
    device: str = "auto",
    data_options: dict | None = None,
    data_cache: DataCache | None = None,
    teacher: str | None = None,
    force: bool = False,
    render: str = "auto",
) -> AuditResult:
    out = check_output_dir(out, AUDIT_FILES, "audit report")
    check_replace(out, AUDIT_FILES, "audit report", force)  # a user's report.md is theirs
    if not run_paths:
        raise DeitPipeError("audit needs at least one --run")
    runs = [load_run(p) for p in run_paths]
    store = _open_store(place, runs, teacher)
    dev = resolve_device(device)
    render = render_mode(render, dev)
    val = store.read_epoch(0, "val")
    # The val pixels scored below against the stored teacher answers: the store's own.
    source = store_source(runs[0], store, data_options, data_cache)
    labels = source.split("val").labels
    predictions, metrics = _teacher_scores(place, store, val, labels)
    train_agreement = {}
    for name, run in zip(_names(runs), runs, strict=True):
        model = run.model(ema).to(dev, memory_format=torch.channels_last)
        run_predictions, run_metrics = _run_scores(
            name, model, run, source, labels, store.spec.num_classes, dev, render
        )
        predictions.update(run_predictions)
        metrics.update(run_metrics)
        train_agreement[name] = train_view_agreement(
            model, run, store, source, train_views, dev, render
        )
    names, matrix = disagreement_matrix(predictions)
    result = AuditResult(names, matrix, metrics, train_agreement, {})
    write_outputs(result, out, runs, store, ema)
    store.close()
    for run in runs:  # the agreement beside the run's curves, for a run with RUN/tb
        if (run.path / TB_DIR).is_dir():
            add_audit(run.path, run.checkpoint["step"], audit_summary(out, run, ema), ema)
    return result


def _open_store(place: Place | str, runs: list[Run], teacher: str | None) -> TargetStore:
    """The store the runs are scored against: the teacher(s) the first run distilled from,
    unless asked (one teacher or an ensemble); refused without a complete val split, or
    where a run was trained on another dataset or store."""
    recorded = (runs[0].config.get("store_identity") or {}).get("teacher")
    store = TargetStore(place, teacher=teacher or recorded)
    store.check_files()
    if "val" not in store.spec.splits or store.progress().missing("val"):
        raise DeitPipeError(
            f"{store.url} has no complete val/ split; make it with "
            "`deit-pipe precompute --split val …` (same data, seed and teacher)"
        )
    for run in runs:
        check_run_against_store(run, store)
    return store


def _teacher_scores(
    place: Place | str, store: TargetStore, val, labels
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """(top-1 predictions of ground truth, the teacher read and, in a store of several
    teachers, each teacher alone; the teacher's val metrics), from the stored answers."""
    num_classes = store.spec.num_classes
    if store.spec.targets == "soft":
        teacher_probs = val.soft(np.arange(len(val)), 1.0).numpy()
    else:  # a hard-target store knows the teacher's top-1 only: score it as certain
        teacher_probs = np.eye(num_classes)[val.top1]
    predictions = {"ground truth": labels, "teacher": val.top1}
    metrics = {"teacher": classifier_metrics(teacher_probs, labels, num_classes)}
    if len(store.spec.teacher_names) > 1:  # each teacher alone, beside the one(s) distilled
        for name in store.spec.teacher_names:
            alone = TargetStore(place, teacher=name)
            predictions[f"teacher {name}"] = alone.read_epoch(0, "val").top1
            alone.close()
    return predictions, metrics


def _run_scores(
    name: str,
    model,
    run: Run,
    source,
    labels,
    num_classes: int,
    device: torch.device,
    render: str,
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """(top-1 predictions, val metrics against `labels`) of every head of run `name`'s
    model, by the audit's name for the head."""
    logits = predict(model, source.split("val"), run.recipe.view, device=device, render=render)
    predictions, metrics = {}, {}
    for head, values in logits.items():
        label = classifier_label(name, head, len(logits))
        probs = torch.softmax(values, dim=1).numpy()
        predictions[label] = probs.argmax(axis=1)
        metrics[label] = classifier_metrics(probs, labels, num_classes)
    return predictions, metrics


def write_outputs(result: AuditResult, out: Path, runs: list[Run], store, ema: bool) -> None:
    """The heatmap, the curves, `agreement.json` and `report.md` (paths into `result.files`),
    in a folder marked as an audit report's; a full disk or a read-only folder is one line."""
    make_dir(out, "audit report folder")
    try:
        mark_output(out, "audit report")
        _write_outputs(result, out, runs, store, ema)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputPathError(f"cannot write the audit report into {out}: {reason}") from None


def _write_outputs(result: AuditResult, out: Path, runs: list[Run], store, ema: bool) -> None:
    named = dict(zip(_names(runs), runs, strict=True))
    files = result.files
    files["agreement.png"] = agreement_heatmap(
        result.classifiers, result.matrix, out / "agreement.png"
    )
    files["curves.png"] = training_curves(
        {n: r.path for n, r in named.items()},
        out / "curves.png",
        teacher_top1=result.metrics["teacher"]["top1"],
    )
    doc = {
        **result.to_json(),
        "store": store.identity,
        "runs": {
            n: {"path": str(r.path), "step": r.checkpoint["step"], "ema": ema}
            for n, r in named.items()
        },
    }
    (out / "agreement.json").write_text(json.dumps(doc, indent=2))
    files["agreement.json"] = out / "agreement.json"
    (out / "report.md").write_text(render_report(result, doc))
    files["report.md"] = out / "report.md"


@torch.inference_mode()
def train_view_agreement(
    model,
    run: Run,
    store: TargetStore,
    source,
    count: int,
    device: torch.device,
    render: str = "host",
) -> dict:
    """Student top-1 (every head) vs the stored teacher top-1 on replayed training views."""
    complete = store.progress().complete_epochs("train")
    if not complete or count <= 0:
        return {}
    epochs = sorted({complete[0], complete[-1]})
    recipe = Recipe.from_dict(store.spec.recipe)  # the teacher's views, whatever the run used
    if recipe.view.input_size != run.recipe.view.input_size:
        return {
            "skipped": f"run input size {run.recipe.view.input_size} ≠ store's "
            f"{recipe.view.input_size}"
        }
    agree: dict[str, list[int]] = {}
    seen = 0
    for epoch in epochs:
        targets = store.read_epoch(epoch)
        dataset = stored_views(source, recipe, "train", epoch, render)
        plan = dataset.plan
        rng = np.random.default_rng([epoch, 0xA0D17])
        pairs = np.sort(
            rng.choice(
                plan.num_pairs, min(count // (2 * len(epochs)) + 1, plan.num_pairs), replace=False
            )
        )
        loader = DataLoader(
            Subset(dataset, pairs.tolist()),
            batch_size=64,
            collate_fn=collate_views,
        )
        for batch in loader:
            batch = device_pixels(batch, device)
            slots = batch.slot.numpy()
            if len(mismatches(targets.fingerprint, slots, batch.fingerprint.numpy())):
                raise ReplayError(
                    f"training views of epoch {epoch} do not replay the ones in "
                    f"{store.url}: library versions differ from the store's?"
                )
            x = finish(batch, recipe.view, device).contiguous(memory_format=torch.channels_last)
            teacher_top1 = targets.top1[slots]
            for head, logits in heads(model, x).items():
                hits = (logits.argmax(1).cpu().numpy() == teacher_top1).astype(int).tolist()
                agree.setdefault(head, []).extend(hits)
            seen += len(slots)
    return {
        "views": seen,
        "epochs": epochs,
        **{head: float(np.mean(v)) for head, v in agree.items()},
    }


def render_report(result: AuditResult, doc: dict) -> str:
    names = result.classifiers
    lines = [
        "# Teacher–student agreement",
        "",
        f"Store: `{doc['store']['url']}` (teacher {doc['store']['teacher']}, created "
        f"{doc['store']['created']}). Teacher answers come from the store's `val/`; no "
        "teacher model ran.",
        "",
        "## Disagreement (fraction of val images with different top-1; paper Table 4)",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for name, row in zip(names, result.matrix, strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += [
        "",
        "![agreement](agreement.png)",
        "",
        "## Metrics on val",
        "",
        "| classifier | top-1 | top-5 | precision | recall | F1 | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in result.metrics.items():
        auc = f"{m['auc']:.3f}" if m["auc"] is not None else "–"
        lines.append(
            f"| {name} | {m['top1']:.3f} | {m['top5']:.3f} | {m['precision']:.3f} | "
            f"{m['recall']:.3f} | {m['f1']:.3f} | {auc} |"
        )
    lines += [
        "",
        "## Agreement with the teacher on replayed training views",
        "",
        "| run | views | epochs | " + " | ".join(HEAD_LABELS.values()) + " |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in result.train_agreement.items():
        cells = [f"{a[h]:.3f}" if h in a else "–" for h in HEAD_LABELS]
        lines.append(
            f"| {name} | {a.get('views', 0)} | {a.get('epochs', [])} | " + " | ".join(cells) + " |"
        )
    lines += ["", "## Training curves", "", "![curves](curves.png)", ""]
    return "\n".join(lines)
