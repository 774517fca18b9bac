"""A classifier's metrics from its class scores: top-1/top-5, macro precision, recall, F1 and
one-vs-rest AUC (what `export` puts on a model card and `audit` tabulates)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score


def classifier_metrics(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """top-1, top-5, macro precision/recall/F1 and one-vs-rest macro AUC from class scores."""
    labels = np.asarray(labels)
    top = np.argsort(-probs, axis=1, kind="stable")
    pred = top[:, 0]
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, pred, labels=np.arange(num_classes), average="macro", zero_division=0
    )
    return {
        "top1": float((pred == labels).mean()),
        "top5": float((top[:, :5] == labels[:, None]).any(axis=1).mean()),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auc": _auc(probs, labels, num_classes),
    }


def _auc(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> float | None:
    present = np.unique(labels)
    if len(present) < 2:
        return None
    scores = probs / probs.sum(axis=1, keepdims=True)
    if len(present) < num_classes:  # AUC is undefined for classes absent from the labels
        scores = scores[:, present] / scores[:, present].sum(axis=1, keepdims=True)
        labels = np.searchsorted(present, labels)
    if scores.shape[1] == 2:
        return float(roc_auc_score(labels, scores[:, 1]))
    return float(roc_auc_score(labels, scores, multi_class="ovr", average="macro"))
