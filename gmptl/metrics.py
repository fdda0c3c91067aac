"""Evaluation: WAR (accuracy), UAR (macro recall), macro-F1, per-class recall, confusion."""

import numpy as np


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows true class, columns predicted."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def uar_of(confusion) -> float:
    """UAR in percent of a (C, C) confusion matrix, over the classes it has examples of (as ``scores``)."""
    m = np.asarray(confusion)
    support, present = m.sum(1), m.sum(1) > 0
    return 100.0 * float((np.diag(m)[present] / support[present]).mean()) if present.any() else 0.0


def scores(y_true, y_pred, labels: list[str]) -> dict:
    """WAR, UAR and macro-F1 in percent, per-class recall, confusion matrix.

    Classes absent from ``y_true`` are left out of UAR and F1 (as scikit-learn does when given only the labels
    present), so a fold without some class is not penalised for it.
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
        "uar": uar_of(m),
        "f1": 100.0 * f1[present].mean() if present.any() else 0.0,
        "recall": {label: 100.0 * r for label, r, p in zip(labels, recall, present) if p},
        "confusion": m.tolist(), "labels": list(labels), "n": int(m.sum()),
    }


def paired_difference(y_true, pred_a, pred_b, speakers, folds, num_classes: int, rounds: int = 10000,
                      seed: int = 0) -> dict:
    """How sure is "system A beats system B"? Both systems' predictions on the same test utterances.

    The statistic is the one the tables report: WAR and UAR computed per fold, averaged over folds, A minus B.
    ``pred_a`` and ``pred_b`` are (N,) or, for replicate runs of a system (seeds, reruns), (R, N): a system's
    hits are then averaged over its runs, so its WAR and UAR are the means over its runs (recall is linear in
    the hits), and R may differ between A and B. Speakers are the unit of resampling (utterances of one
    speaker are not independent):

    - ``*_ci``: 95 % percentile interval of a bootstrap over the test speakers (drawn with replacement from all
      folds, ``rounds`` times; each keeps its fold, and a fold counts by how many of its speakers were drawn),
      so that the spread between folds counts too;
    - ``p_*``: two-sided paired permutation test, each speaker's predictions of A and B swapped at random; the
      chance of a difference at least as large if the two systems were interchangeable.
    """
    y = np.asarray(y_true)
    a, b = (np.atleast_2d(np.asarray(v)) for v in (pred_a, pred_b))
    if a.shape[1] != len(y) or b.shape[1] != len(y):
        raise ValueError(f"predictions for {a.shape[1]} and {b.shape[1]} utterances, labels for {len(y)}")
    spk_names, spk = np.unique(np.asarray(speakers), return_inverse=True)
    fold_of = np.zeros(len(spk_names), dtype=np.int64)
    fold_of[spk] = np.asarray(folds)
    if len({(s, f) for s, f in zip(spk, folds)}) != len(spk_names):
        raise ValueError("a speaker appears in more than one fold")
    support = np.zeros((len(spk_names), num_classes))
    np.add.at(support, (spk, y), 1)
    hits_a, hits_b = (np.zeros_like(support) for _ in range(2))
    np.add.at(hits_a, (spk, y), (a == y).mean(0))
    np.add.at(hits_b, (spk, y), (b == y).mean(0))
    fold_ids = np.unique(fold_of)

    def war_uar(weights, hits, swap=None, other=None):
        """(R, S) speaker weights and (S, C) hits -> (R,) WAR and UAR: each fold's, averaged over the
        folds weighted by how many of their speakers were drawn (equal weights for the observed
        folds). With ``swap`` (R, S) in {0, 1}, swapped speakers score ``other``'s hits."""
        war, uar, drawn = 0.0, 0.0, 0.0
        for f in fold_ids:
            m = fold_of == f
            sup = weights[:, m] @ support[m]                                      # (R, C)
            hit = weights[:, m] @ hits[m]
            if swap is not None:
                hit = hit + swap[:, m] @ (other[m] - hits[m])
            present = sup > 0
            n = weights[:, m].sum(1)
            war = war + n * hit.sum(1) / np.maximum(sup.sum(1), 1)
            uar = uar + n * np.where(present, hit / np.where(present, sup, 1), 0).sum(1) / np.maximum(present.sum(1), 1)
            drawn = drawn + n
        return 100 * war / drawn, 100 * uar / drawn

    ones = np.ones((1, len(spk_names)))
    (war_a,), (uar_a,) = war_uar(ones, hits_a)
    (war_b,), (uar_b,) = war_uar(ones, hits_b)
    rng = np.random.default_rng(seed)
    boot = rng.multinomial(len(spk_names), np.full(len(spk_names), 1 / len(spk_names)), size=rounds).astype(float)
    war_ba, uar_ba = war_uar(boot, hits_a)
    war_bb, uar_bb = war_uar(boot, hits_b)
    swap = (rng.random((rounds, len(spk_names))) < 0.5).astype(float)
    every = np.ones((rounds, len(spk_names)))
    war_pa, uar_pa = war_uar(every, hits_a, swap, hits_b)
    war_pb, uar_pb = war_uar(every, hits_b, swap, hits_a)

    def p_value(observed, permuted):
        return float((1 + np.sum(np.abs(permuted) >= abs(observed) - 1e-9)) / (1 + rounds))

    return {"war_diff": float(war_a - war_b), "uar_diff": float(uar_a - uar_b),
            "war_ci": np.percentile(war_ba - war_bb, [2.5, 97.5]).tolist(),
            "uar_ci": np.percentile(uar_ba - uar_bb, [2.5, 97.5]).tolist(),
            "p_war": p_value(war_a - war_b, war_pa - war_pb), "p_uar": p_value(uar_a - uar_b, uar_pa - uar_pb),
            "speakers": len(spk_names), "folds": len(fold_ids), "utterances": len(y), "rounds": rounds}
