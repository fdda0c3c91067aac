"""Speaker-independent cross-validation: every fold, then mean and standard deviation."""

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import dist
from .calibration import BINS, plot_reliability, pool_bins
from .config import Config, config_from_dict
from .corpora import configured_corpus
from .errors import ConfigError
from .pipeline import run_fold
from .provenance import provenance
from .utils import atomic_json, check_precision, figure

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
    return {"folds": [{k: r[k] for k in ("fold", "war", "uar", "f1", "n")} for r in results], **fold_means(results),
            "recall_mean": {label: float(np.mean([r["recall"][label] for r in results if label in r["recall"]]))
                            for label in labels if any(label in r["recall"] for r in results)},
            "confusion": np.sum([np.array(r["confusion"]) for r in results], axis=0).tolist(), "labels": labels,
            "calibration": calibration_summary(results)}


CALIBRATION = ("temperature", "ece_before", "ece_after", "nll_before", "nll_after")


def calibration_summary(results: list[dict]) -> dict | None:
    """Each fold's temperature and test ECE and NLL before and after it, their means over the folds, and the
    folds' reliability bins pooled; folds without a calibration record are left out (None when none has one)."""
    found = [r for r in results if r.get("calibration")]
    if not found:
        return None
    folds = [{"fold": r["fold"], **{k: r["calibration"][k] for k in CALIBRATION}} for r in found]
    return {"folds": folds, **{f"{k}_mean": float(np.mean([f[k] for f in folds])) for k in CALIBRATION},
            **{f"reliability_{w}": pool_bins([r["calibration"][f"reliability_{w}"] for r in found])
               for w in ("before", "after")}}


def plot_confusion(confusion, labels: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (recall per true class) with counts."""
    m = np.asarray(confusion, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    with figure(path, figsize=(1.1 * len(labels) + 2, 1.0 * len(labels) + 1.5)) as (_, ax):
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for (i, j), share in np.ndenumerate(norm):
            ax.text(j, i, f"{100 * share:.0f}\n({int(m[i, j])})", ha="center", va="center", fontsize=8,
                    color="white" if share > 0.5 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set(xlabel="predicted", ylabel="true", title=title)


def format_table(summary: dict) -> str:
    lines = [f"{'fold':>6} {'WAR':>7} {'UAR':>7} {'F1':>7} {'n':>6}"]
    for f in summary["folds"]:
        lines.append(f"{f['fold']:>6} {f['war']:7.2f} {f['uar']:7.2f} {f['f1']:7.2f} {f['n']:>6}")
    lines.append(f"{'mean':>6} {summary['war_mean']:7.2f} {summary['uar_mean']:7.2f} {summary['f1_mean']:7.2f}")
    lines.append(f"{'std':>6} {summary['war_std']:7.2f} {summary['uar_std']:7.2f} {summary['f1_std']:7.2f}")
    if c := summary.get("calibration"):
        lines += ["", f"test calibration (T fitted on validation speakers; ECE in %, {BINS} bins):",
                  f"{'fold':>6} {'T':>6} {'ECE before':>10} {'after':>6} {'NLL before':>10} {'after':>6}"]
        for f in c["folds"] + [{"fold": "mean", **{k: c[f"{k}_mean"] for k in CALIBRATION}}]:
            lines.append(f"{f['fold']:>6} {f['temperature']:6.2f} {100 * f['ece_before']:10.2f} "
                         f"{100 * f['ece_after']:6.2f} {f['nll_before']:10.3f} {f['nll_after']:6.3f}")
    return "\n".join(lines)


def read_fold_predictions(run: Path) -> dict[int, tuple[list[str], dict[str, dict]]]:
    """``{fold: (labels, {utterance id: prediction row})}`` of a run directory's ``fold*/predictions.jsonl``."""
    found = {}
    for path in sorted(Path(run).glob("fold*/predictions.jsonl")):
        fold = path.parent.name[4:]
        result = path.parent / "result.json"
        if not fold.isdigit() or not result.exists():
            continue
        labels = json.loads(result.read_text())["labels"]
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not JSON lines ({e})") from None
        for n, r in enumerate(rows, 1):
            if not isinstance(r, dict) or not {"id", "speaker", "emotion", "predicted"} <= set(r):
                raise ConfigError(f"{path}: line {n} lacks id, speaker, emotion or predicted")
            if r["emotion"] not in labels or r["predicted"] not in labels:
                raise ConfigError(f"{path}: line {n}: label not among the run's classes {labels}")
        found[int(fold)] = (labels, {r["id"]: r for r in rows})
    return found


def compare_runs(a: Path | Sequence[Path], b: Path | Sequence[Path], rounds: int = 10000, seed: int = 0) -> dict:
    """Paired comparison of two systems on the folds all their runs finished (``metrics.paired_difference``).

    ``a`` and ``b`` are run directories with ``fold{k}/predictions.jsonl`` and ``result.json``
    (a ``gmptl cv`` run, one system of ``gmptl reproduce`` or one config of ``gmptl sweep``), or
    lists of such directories: replicate runs of one system (seeds, reruns), averaged.
    """
    from .metrics import paired_difference, scores

    if rounds < 1:
        raise ConfigError(f"--rounds {rounds}: give at least 1")
    runs_a, runs_b = ([Path(r)] if isinstance(r, (str, Path)) else [Path(x) for x in r] for r in (a, b))
    if not runs_a or not runs_b:
        raise ConfigError("compare: give at least one run directory on each side")
    resolved = [run.resolve() for run in runs_a + runs_b]
    if twice := next((run for n, run in enumerate(runs_a + runs_b) if resolved[n] in resolved[:n]), None):
        raise ConfigError(f"{twice}: the same run directory given twice")
    preds = {run: read_fold_predictions(run) for run in runs_a + runs_b}
    for run, found in preds.items():
        if not found:
            raise ConfigError(f"{run}: no finished fold (fold*/predictions.jsonl with result.json)")
    folds = sorted(set.intersection(*(set(found) for found in preds.values())))
    if not folds:
        raise ConfigError("share no finished fold: " + ", ".join(f"{run} (folds {sorted(found)})"
                                                                 for run, found in preds.items()))
    ref = runs_a[0]
    y, speakers, fold_of, per_fold = [], [], [], []
    predicted = {run: [] for run in preds}
    per_run = {run: [] for run in preds}  # each fold's scores
    for k in folds:
        labels, rows_ref = preds[ref][k]
        index, ids = {c: i for i, c in enumerate(labels)}, sorted(rows_ref)
        ty = [index[rows_ref[i]["emotion"]] for i in ids]
        for run in preds:
            other_labels, rows = preds[run][k]
            if other_labels != labels:
                raise ConfigError(f"fold {k}: {ref} has classes {labels}, {run} has {other_labels}")
            if rows.keys() != rows_ref.keys():
                raise ConfigError(f"fold {k}: {ref} and {run} were tested on different utterances "
                                  f"({len(rows_ref.keys() - rows.keys())} and {len(rows.keys() - rows_ref.keys())} "
                                  "not in the other)")
            p = [index[rows[i]["predicted"]] for i in ids]
            predicted[run] += p
            per_run[run].append(scores(ty, p, labels))
        per_fold.append({"fold": k, "uar_a": float(np.mean([per_run[r][-1]["uar"] for r in runs_a])),
                         "uar_b": float(np.mean([per_run[r][-1]["uar"] for r in runs_b]))})
        y += ty
        speakers += [rows_ref[i]["speaker"] for i in ids]
        fold_of += [k] * len(ids)
    stats = paired_difference(y, [predicted[r] for r in runs_a], [predicted[r] for r in runs_b],
                              speakers, fold_of, len(labels), rounds=rounds, seed=seed)
    if len(runs_a) == len(runs_b) == 1:
        return {"a": str(ref), "b": str(runs_b[0]), "per_fold": per_fold, **stats}
    out = {"a": [str(r) for r in runs_a], "b": [str(r) for r in runs_b], "per_fold": per_fold, **stats}
    for side, runs in (("a", runs_a), ("b", runs_b)):  # each run's own means: the spread between reruns
        out[f"runs_{side}"] = [{"run": str(r), "war": float(np.mean([f["war"] for f in per_run[r]])),
                                "uar": float(np.mean([f["uar"] for f in per_run[r]]))} for r in runs]
    return out


def format_comparison(c: dict) -> str:
    """The per-fold UARs of a ``compare_runs`` result and the difference with its interval and p-value."""
    lines = []
    for side in ("a", "b"):
        if isinstance(c[side], str):
            lines.append(f"{side.upper()} = {c[side]}")
        else:
            runs = [f"{r['run']}  (UAR {r['uar']:.2f}, WAR {r['war']:.2f})" for r in c[f"runs_{side}"]]
            lines += [f"{side.upper()} = {runs[0]}"] if len(runs) == 1 else \
                [f"{side.upper()} = mean of {len(runs)} runs:", *(f"    {r}" for r in runs)]
    lines += [f"{c['folds']} fold(s), {c['speakers']} test speakers, {c['utterances']} utterances", "",
              f"{'fold':>6} {'UAR A':>7} {'UAR B':>7} {'A - B':>7}"]
    for f in c["per_fold"]:
        lines.append(f"{f['fold']:>6} {f['uar_a']:7.2f} {f['uar_b']:7.2f} {f['uar_a'] - f['uar_b']:+7.2f}")
    lines.append("")
    for m in ("uar", "war"):
        lo, hi = c[f"{m}_ci"]
        lines.append(f"{m.upper()} A - B: {c[f'{m}_diff']:+.2f} points, 95 % CI [{lo:+.2f}, {hi:+.2f}] "
                     f"(test speakers resampled), p = {c[f'p_{m}']:.3g} "
                     f"(speakers' predictions swapped at random, {c['rounds']} rounds)")
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
    their defaults (the saved config is read with today's defaults filled in). A config
    this machine cannot run (bf16 on a CPU without it) is refused first.
    """
    check_precision(cfg.train.device, cfg.train.precision)
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
    corpus = configured_corpus(cfg.data)
    for p in corpus.problems:
        log.warning("left out %s: %s", p.path, p.reason)
    folds = check_folds(corpus, folds)
    claim_run_dir(cfg, out)
    start = time.perf_counter()
    results = []
    for k in folds:
        log.info("fold %d of %s", k, ", ".join(map(str, folds)))
        results.append(run_fold(cfg, corpus, k, out / f"fold{k}"))
    summary = {"corpus": corpus.name, "labels": corpus.labels, "protocol": corpus.protocol, "system": cfg.system,
               "encoder": cfg.encoder.spec, **summarize_folds(results, corpus.labels),
               "wall_s": round(time.perf_counter() - start, 1), **provenance()}
    atomic_json(summary, out / "summary.json")
    if dist.is_main():
        plot_confusion(summary["confusion"], corpus.labels, out / "confusion.png",
                       f"{cfg.system} on {corpus.name}, folds {','.join(map(str, folds))}: "
                       f"UAR {summary['uar_mean']:.1f}")
        if c := summary["calibration"]:
            plot_reliability(c["reliability_before"], c["reliability_after"], out / "reliability.png",
                             f"{cfg.system} on {corpus.name}, test predictions of {len(c['folds'])} fold(s)")
    return summary
