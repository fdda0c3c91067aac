"""``gmptl sweep``: settings chosen on the validation speakers, every fold, resumable.

    gmptl sweep --config configs/ravdess_whisper_tiny.yaml --set data.root=DIR \\
        --grid stage3.margin=0.1,0.2,0.35 --grid train.head_lr=1e-4,1e-3 --jobs 6

Every combination of the ``--grid`` values is one config, and every config runs on
every fold. With ``--one-at-a-time`` the configs are instead the base config (the
``--config`` and ``--set`` values, named ``base``) and each ``--grid`` value changed
alone: an ablation table, at the cost of a sum of runs, not a product. The choice is
the config with the best validation UAR averaged over the folds (each fold's
validation speakers come from its training speakers); the test scores of every
config are reported beside it, and nothing reads them to choose.
Steps are shared between configs under ``OUT/steps`` (``pipeline.step_dirs``), so
a grid over a stage-3 setting trains stages 1 and 2 once per fold. Layout::

    OUT/<setting=value+...>/fold{k}/result.json   one directory per config and fold
    OUT/steps/fold{k}/...                          the shared steps
    OUT/sweep.json                                 per config: folds, means; the choice
                                                   (--one-at-a-time: each change against base, paired)
"""

import itertools
import json
import logging
import time
from pathlib import Path

from .config import load_config
from .corpora import load_corpus
from .cv import check_folds, claim_run_dir, compare_runs, fold_means
from .errors import ConfigError
from .pipeline import chosen_valid_uar, run_fold
from .provenance import provenance
from .train import atomic_json, check_precision

log = logging.getLogger(__name__)


def split_values(text: str) -> list[str]:
    """``a,b,[c,d]`` -> ``['a', 'b', '[c,d]']``: commas inside brackets belong to a value."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    values.append(current)
    return [v.strip() for v in values]


def parse_grid(grid: list[str]) -> list[tuple[str, list[str]]]:
    """``["stage3.margin=0.1,0.2", ...]`` -> ``[("stage3.margin", ["0.1", "0.2"]), ...]``."""
    axes = []
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=VALUE1,VALUE2,...")
        vals = split_values(values)
        if any(not v for v in vals) or len(set(vals)) != len(vals):
            raise ConfigError(f"--grid {item!r}: empty or repeated value")
        if key.strip() in (k for k, _ in axes):
            raise ConfigError(f"--grid {item!r}: {key.strip()} is already a grid axis")
        axes.append((key.strip(), vals))
    if not axes:
        raise ConfigError("--grid: give at least one KEY=VALUE1,VALUE2,...")
    return axes


def combinations(axes: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every config of the grid as its ``key=value`` overrides, in grid order."""
    return [[f"{k}={v}" for k, v in zip((k for k, _ in axes), values)]
            for values in itertools.product(*(vals for _, vals in axes))]


def one_at_a_time(axes: list[tuple[str, list[str]]]) -> list[list[str]]:
    """The base config (no override), then each value of each axis alone."""
    return [[], *([f"{k}={v}"] for k, vals in axes for v in vals)]


def config_name(overrides: list[str]) -> str:
    """A directory name for one config of the grid, e.g. ``stage3.margin=0.1+train.head_lr=1e-3``;
    ``base`` for the config without overrides."""
    return "+".join(o.replace("/", "_").replace(" ", "") for o in overrides) or "base"


def valid_uar(result: dict) -> float:
    """The validation score the fold's model was chosen by: the last classification stage's best
    validation UAR (stage 3, or stage 1 for plain fine-tuning), or the probe's best layer."""
    if "probe" in result:
        return max(result["probe"]["valid_uar_per_layer"])
    return chosen_valid_uar(result["stages"])


def summarize(out: Path, configs: list[list[str]], folds: list[int], command: str) -> dict:
    """``sweep.json``: every config's folds (validation and test) and means; the choice by validation."""
    entries = {}
    for overrides in configs:
        name = config_name(overrides)
        rows = []
        for k in folds:
            path = out / name / f"fold{k}" / "result.json"
            if path.exists():
                r = json.loads(path.read_text())
                rows.append({"fold": k, "valid_uar": valid_uar(r), "war": r["war"], "uar": r["uar"]})
        entries[name] = {"overrides": overrides, "folds": rows, "complete": len(rows) == len(folds),
                         **(fold_means(rows, ("valid_uar", "war", "uar")) if rows else {})}
    complete = [n for n, e in entries.items() if e["complete"]]
    chosen = max(complete, key=lambda n: entries[n]["valid_uar_mean"]) if complete else None
    if configs and configs[0] == [] and "base" in complete:  # --one-at-a-time: each change against the base
        for name in (n for n in complete if n != "base"):
            c = compare_runs(out / name, out / "base")
            entries[name]["vs_base"] = {k: c[k] for k in ("uar_diff", "uar_ci", "p_uar", "war_diff", "war_ci", "p_war")}
    summary = {"command": command, "folds": folds, "chosen": chosen,
               "rule": "best validation UAR averaged over the folds; test scores are not read to choose",
               "configs": entries, **provenance()}
    atomic_json(summary, out / "sweep.json")
    return summary


def format_sweep(summary: dict) -> str:
    """A table of the sweep, the chosen config marked with ``*``."""
    paired = any("vs_base" in e for e in summary["configs"].values())
    lines = [f"{'config':<40} {'folds':>5} {'valid UAR':>10} {'test UAR':>15} {'test WAR':>8}"
             + ("   test UAR - base [95 % CI], p" if paired else "")]
    for name, e in summary["configs"].items():
        if not e["folds"]:
            lines.append(f"{name:<40} {0:>5}")
            continue
        mark = "*" if name == summary["chosen"] else " "
        line = (f"{name:<39}{mark} {len(e['folds']):>5} {e['valid_uar_mean']:10.2f} "
                f"{e['uar_mean']:8.2f} ± {e['uar_std']:4.2f} {e['war_mean']:8.2f}")
        if v := e.get("vs_base"):
            line += f"   {v['uar_diff']:+6.2f} [{v['uar_ci'][0]:+.2f}, {v['uar_ci'][1]:+.2f}], p = {v['p_uar']:.2g}"
        lines.append(line)
    lines.append(f"* chosen: {summary['chosen'] or 'none yet (no config has every fold)'} ({summary['rule']})")
    return "\n".join(lines)


def sweep(config: str, overrides: list[str], grid: list[str], out: Path, folds: list[int] | None = None,
          jobs: int = 1, command: str = "", run: bool = True, report: bool = True, single: bool = False) -> dict:
    """Run (or resume) every config of ``grid`` (``single``: the base and each value alone) on ``folds``
    and write ``out/sweep.json``."""
    from .reproduce import spawn_workers

    configs = (one_at_a_time if single else combinations)(parse_grid(grid))
    cfgs = [load_config(config, [*overrides, *c]) for c in configs]  # every config checked before anything runs
    if same := [c[0] for c, cfg in zip(configs[1:], cfgs[1:]) if single and cfg == cfgs[0]]:
        raise ConfigError(f"--one-at-a-time: {', '.join(same)} is what the base config has already")
    if run:
        for cfg in cfgs:
            check_precision(cfg.train.device, cfg.train.precision)
    corpus = load_corpus(cfgs[0].data.corpus, cfgs[0].data.root, classes=cfgs[0].data.classes)
    folds = check_folds(corpus, folds)
    if any(c.data.corpus != cfgs[0].data.corpus or c.data.root != cfgs[0].data.root
           or c.data.classes != cfgs[0].data.classes for c in cfgs):
        raise ConfigError("--grid: the corpus and its classes must be the same in every config")
    out.mkdir(parents=True, exist_ok=True)
    if run and jobs > 1 and len(folds) > 1:
        def args_for(mine):
            return (["sweep", "--config", config, "--out", str(out), "--folds", ",".join(map(str, mine)), "--no-report"]
                    + [a for o in overrides for a in ("--set", o)] + [a for g in grid for a in ("--grid", g)]
                    + (["--one-at-a-time"] if single else []))
        spawn_workers(args_for, jobs, folds, out)
    elif run:
        for cfg, c in zip(cfgs, configs):
            claim_run_dir(cfg, out / config_name(c))
            for k in folds:
                start = time.perf_counter()
                result = run_fold(cfg, corpus, k, out / config_name(c) / f"fold{k}", shared=out / "steps")
                log.info("%s fold %d: valid UAR %.2f, test UAR %.2f (%.0f s)", config_name(c), k,
                         valid_uar(result), result["uar"], time.perf_counter() - start)
    return summarize(out, configs, folds, command) if report else {}
