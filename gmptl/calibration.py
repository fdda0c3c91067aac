"""Temperature scaling (Guo et al. 2017): one T > 0, fitted on validation speakers, divides the scores before
the softmax; NLL, ECE and reliability bins say how well the probabilities match how often they are right."""

import math

import numpy as np

from .errors import GmptlError

BINS = 15
BOUNDS = (0.05, 20.0)  # T searched in this range (on log T)
MIN_N = 20  # fewer validation utterances than this: T = 1, a fit on so few would be noise


def softmax(scores, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``scores / temperature`` in float64."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def nll(probs, y) -> float:
    """Mean negative log-probability of the true classes ``y``."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(y)), np.asarray(y)]
    return float(-np.log(np.maximum(p, 1e-300)).mean())


def fit_temperature(scores, y) -> float:
    """The T in ``BOUNDS`` minimising ``nll(softmax(scores / T), y)`` (bounded Brent on log T: the NLL is
    convex in 1 / T, so one minimum; deterministic)."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(lambda log_t: nll(softmax(scores, np.exp(log_t)), y), bounds=np.log(BOUNDS),
                            method="bounded", options={"xatol": 1e-5})
    return float(np.exp(found.x))


def reliability(probs, y, bins: int = BINS) -> dict:
    """Per equal-width bin of max-probability ((i / bins, (i + 1) / bins], the first one closed): ``count``,
    mean ``confidence`` and ``accuracy`` (0 in empty bins). Bins of several sets pool by their counts."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    confidence, right = probs.max(1), probs.argmax(1) == y
    which = np.clip(np.searchsorted(np.linspace(0, 1, bins + 1), confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)

    def mean(values) -> list[float]:
        return np.divide(np.bincount(which, values, bins), count, out=np.zeros(bins), where=count > 0).tolist()
    return {"count": count.tolist(), "confidence": mean(confidence), "accuracy": mean(right)}


def bins_ece(b: dict) -> float:
    """Expected calibration error of reliability bins: the count-weighted mean of |accuracy - confidence|."""
    count = np.asarray(b["count"], dtype=np.float64)
    gap = np.abs(np.asarray(b["accuracy"]) - np.asarray(b["confidence"]))
    return float((count * gap).sum() / max(count.sum(), 1))


def ece(probs, y, bins: int = BINS) -> float:
    """Expected calibration error (fraction, 0..1) over ``bins`` equal-width confidence bins."""
    return bins_ece(reliability(probs, y, bins))


def pool_bins(parts: list[dict]) -> dict:
    """The reliability bins of several sets (folds) as one set's."""
    count = np.sum([p["count"] for p in parts], axis=0)
    pooled = {"count": count.tolist()}
    for key in ("confidence", "accuracy"):
        total = np.sum([np.multiply(p[key], p["count"]) for p in parts], axis=0)
        pooled[key] = np.divide(total, count, out=np.zeros(len(count)), where=count > 0).tolist()
    return pooled


def calibrate(valid_scores, valid_labels, test_scores=None, test_labels=None, speakers=(),
              fitted_on: str = "validation speakers") -> tuple[dict, dict | None]:
    """Fit T on validation scores (already times the probability scale) and labels; returns the model's
    config.json record and, with test scores and labels, the result.json record (test NLL, ECE and
    reliability bins before and after). With fewer than ``MIN_N`` validation utterances T is 1, with a reason.
    ``fitted_on`` says what the held-out scores are, for both records."""
    valid_scores, valid_labels = np.asarray(valid_scores, dtype=np.float64), np.asarray(valid_labels)
    for z, y, name in ((valid_scores, valid_labels, "validation"), (test_scores, test_labels, "test")):
        if (z is None) != (y is None) or z is not None and (np.ndim(z) != 2 or len(z) != len(y)):
            raise ValueError(f"calibrate: {name} scores must be (N, C) with N labels, got {np.shape(z)} and "
                             f"{np.shape(y)}")
    record = {"temperature": 1.0, "fitted_on": fitted_on, "speakers": sorted(speakers),
              "n": len(valid_labels)}
    if len(valid_labels) < MIN_N:
        record.update(fitted_on=None, reason=f"{len(valid_labels)} validation utterance(s), a fit needs {MIN_N}")
    else:
        T = fit_temperature(valid_scores, valid_labels)
        before, after = softmax(valid_scores), softmax(valid_scores, T)
        record.update(temperature=T, nll_before=nll(before, valid_labels), nll_after=nll(after, valid_labels),
                      ece_before=ece(before, valid_labels), ece_after=ece(after, valid_labels))
    if test_scores is None:
        return record, None
    T, test_labels = record["temperature"], np.asarray(test_labels)
    test = {"temperature": T, "fitted_on": record["fitted_on"], "n": len(test_labels)}
    if "reason" in record:
        test["reason"] = record["reason"]
    for when, probs in (("before", softmax(test_scores)), ("after", softmax(test_scores, T))):
        test[f"nll_{when}"], test[f"ece_{when}"] = nll(probs, test_labels), ece(probs, test_labels)
        test[f"reliability_{when}"] = reliability(probs, test_labels)
    return record, test


def temperature_of(meta: dict) -> float:
    """The fitted T of a model's config.json (or ONNX metadata); 1 for a model without one."""
    found = (meta.get("calibration") or {}).get("temperature", meta.get("temperature", 1.0))
    try:
        T = float(found)
    except (TypeError, ValueError):
        T = math.nan
    if not 0 < T < math.inf:
        raise GmptlError(f"calibration temperature {found!r}: not a positive number (refit, or remove the record)")
    return T


def plot_reliability(before: dict, after: dict, path, title: str = "") -> None:
    """Reliability diagrams side by side, before and after temperature scaling: accuracy per confidence bin
    against the diagonal, and each bin's share of the predictions."""
    from .utils import figure

    with figure(path, 1, 2, figsize=(9, 4.2), sharey=True) as (fig, axes):
        for ax, bins, name in zip(axes, (before, after), ("before", "after")):
            n = len(bins["count"])
            centres, share = (np.arange(n) + 0.5) / n, np.asarray(bins["count"]) / max(sum(bins["count"]), 1)
            ax.bar(centres, bins["accuracy"], width=1 / n, edgecolor="black", linewidth=0.5, label="accuracy")
            ax.plot(centres, share, "o-", color="grey", markersize=3, linewidth=1, label="share of predictions")
            ax.plot([0, 1], [0, 1], "k--", linewidth=1)
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)",
                   title=f"{name} temperature scaling: ECE {100 * bins_ece(bins):.1f} %")
        axes[0].set_ylabel("accuracy")
        axes[0].legend(loc="upper left", fontsize=8)
        if title:
            fig.suptitle(title, fontsize=10)
