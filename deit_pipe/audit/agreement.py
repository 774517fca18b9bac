"""Disagreement between classifiers (DeiT paper, Table 4); each classifier's own metrics
are `student.metrics.classifier_metrics`."""

from __future__ import annotations

import numpy as np


def disagreement_matrix(predictions: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Fraction of samples on which each pair of classifiers' top-1 answers differ."""
    names = list(predictions)
    preds = np.stack([np.asarray(predictions[n]) for n in names])
    matrix = (preds[:, None, :] != preds[None, :, :]).mean(axis=2)
    return names, matrix
