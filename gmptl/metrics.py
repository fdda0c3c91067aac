"""Evaluation: WAR (accuracy), UAR (macro recall), macro-F1, per-class recall, confusion."""

import numpy as np


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows true class, columns predicted."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def scores(y_true, y_pred, labels: list[str]) -> dict:
    """WAR, UAR and macro-F1 in percent, per-class recall, confusion matrix.

    Classes absent from ``y_true`` are left out of UAR and F1 (as scikit-learn does
    when given only the labels present), so a fold without some class is not
    penalised for it.
    """
    m = confusion(y_true, y_pred, len(labels))
    support, predicted, hits = m.sum(1), m.sum(0), np.diag(m)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(len(labels)), where=present)
    precision = np.divide(hits, predicted, out=np.zeros(len(labels)), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(len(labels)), where=denom > 0)
    return {
        "war": 100.0 * hits.sum() / max(m.sum(), 1),
        "uar": 100.0 * recall[present].mean() if present.any() else 0.0,
        "f1": 100.0 * f1[present].mean() if present.any() else 0.0,
        "recall": {label: 100.0 * r for label, r, p in zip(labels, recall, present) if p},
        "confusion": m.tolist(),
        "labels": list(labels),
        "n": int(m.sum()),
    }
