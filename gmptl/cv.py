"""Speaker-independent cross-validation: every fold, then mean and standard deviation."""

import json
import logging
import time
from pathlib import Path

import numpy as np

from . import dist
from .config import Config, config_from_dict
from .corpora import load_corpus
from .errors import ConfigError
from .pipeline import run_fold
from .provenance import provenance
from .train import atomic_json

log = logging.getLogger(__name__)


def fold_means(results: list[dict], metrics=("war", "uar", "f1")) -> dict:
    """``<metric>_mean`` and ``<metric>_std`` over folds (sample standard deviation; 0 for one fold)."""
    out = {}
    for metric in metrics:
        values = np.array([r[metric] for r in results])
        out[f"{metric}_mean"] = float(values.mean())
        out[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def summarize_folds(results: list[dict], labels: list[str]) -> dict:
    """Mean and standard deviation over folds of WAR, UAR, F1; summed confusion matrix."""
    out = {"folds": [{k: r[k] for k in ("fold", "war", "uar", "f1", "n")} for r in results], **fold_means(results)}
    out["recall_mean"] = {label: float(np.mean([r["recall"][label] for r in results if label in r["recall"]]))
                          for label in labels if any(label in r["recall"] for r in results)}
    out["confusion"] = np.sum([np.array(r["confusion"]) for r in results], axis=0).tolist()
    out["labels"] = labels
    return out


def plot_confusion(confusion, labels: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (recall per true class) with counts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(confusion, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{100 * norm[i, j]:.0f}\n({int(m[i, j])})", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(summary: dict) -> str:
    lines = [f"{'fold':>6} {'WAR':>7} {'UAR':>7} {'F1':>7} {'n':>6}"]
    for f in summary["folds"]:
        lines.append(f"{f['fold']:>6} {f['war']:7.2f} {f['uar']:7.2f} {f['f1']:7.2f} {f['n']:>6}")
    lines.append(f"{'mean':>6} {summary['war_mean']:7.2f} {summary['uar_mean']:7.2f} {summary['f1_mean']:7.2f}")
    lines.append(f"{'std':>6} {summary['war_std']:7.2f} {summary['uar_std']:7.2f} {summary['f1_std']:7.2f}")
    return "\n".join(lines)


def check_folds(corpus, folds: list[int] | None) -> list[int]:
    """``folds`` (all of the corpus's when None), each one checked to exist."""
    available = [f.index for f in corpus.folds()]
    if bad := [k for k in folds or [] if k not in available]:
        raise ConfigError(f"--folds: {corpus.name} has folds {available[0]}..{available[-1]}, not {bad}")
    return folds or available


def claim_run_dir(cfg: Config, out: Path) -> None:
    """Save the resolved config in ``out``; refuse to resume a run of another config there.

    A run saved by an older gmptl resumes when the options added since then hold
    their defaults (the saved config is read with today's defaults filled in).
    """
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    resolved = cfg.to_dict()
    if saved.exists():
        try:
            before = config_from_dict(json.loads(saved.read_text())).to_dict()
        except ConfigError:
            before = None
        if before != resolved:
            raise ConfigError(f"{out}: holds a run of another config; use another --out or remove it")
    atomic_json(resolved, saved)


def run_cv(cfg: Config, out: Path, folds: list[int] | None = None) -> dict:
    """Run the configured system on ``folds`` (all by default) and write ``summary.json``."""
    corpus = load_corpus(cfg.data.corpus, cfg.data.root, classes=cfg.data.classes)
    for p in corpus.problems:
        log.warning("left out %s: %s", p.path, p.reason)
    folds = check_folds(corpus, folds)
    claim_run_dir(cfg, out)
    start = time.perf_counter()
    results = []
    for k in folds:
        log.info("fold %d of %s", k, ", ".join(map(str, folds)))
        results.append(run_fold(cfg, corpus, k, out / f"fold{k}"))
    summary = {"corpus": corpus.name, "labels": corpus.labels, "system": cfg.system, "encoder": cfg.encoder.spec,
               **summarize_folds(results, corpus.labels), "wall_s": round(time.perf_counter() - start, 1),
               **provenance()}
    atomic_json(summary, out / "summary.json")
    if dist.is_main():
        plot_confusion(summary["confusion"], corpus.labels, out / "confusion.png",
                       f"{cfg.system} on {corpus.name}, folds {','.join(map(str, folds))}: "
                       f"UAR {summary['uar_mean']:.1f}")
    return summary
