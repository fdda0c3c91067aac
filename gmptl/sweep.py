"""``gmptl sweep``: settings chosen on the validation speakers, every fold, resumable.

    gmptl sweep --config configs/ravdess_whisper_tiny.yaml --set data.root=DIR \\
        --grid stage3.margin=0.1,0.2,0.35 --grid train.head_lr=1e-4,1e-3 --jobs 6

Every combination of the ``--grid`` values is one config (``--one-at-a-time``: the base
config, named ``base``, and each value changed alone), run on every fold. The choice
is the config with the best validation UAR averaged over the folds (each fold's
validation speakers come from its training speakers); test scores are reported, never
read to choose. ``--seeds N`` runs every config N times (``train.seed`` s, s+1, ...)
and uses the means: on RAVDESS a rerun moves a 6-fold UAR by 3 points. Layout::

    OUT/<setting=value+...>/fold{k}/result.json   one directory per config and fold
    OUT/<setting=value+...>@seed{s}/fold{k}/...    its replicates with --seeds (all but the first seed)
    OUT/steps/fold{k}/...                          steps shared between configs (``pipeline.step_dirs``)
    OUT/sweep.json                                 per config: folds, means; the choice
                                                   (--one-at-a-time: each change against base, paired)
"""

import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np

from .config import load_config
from .corpora import configured_corpus
from .cv import check_folds, claim_run_dir, compare_runs, fold_means
from .errors import ConfigError
from .pipeline import chosen_valid_uar, run_fold
from .provenance import provenance
from .utils import atomic_json, check_precision

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


def replicates(overrides: list[str], seeds: list[int]) -> list[tuple[str, list[str]]]:
    """A config's runs, one per seed, as (directory name, overrides): the first seed is the
    config itself, the others are ``<name>@seed<s>`` with ``train.seed=<s>`` added."""
    name = config_name(overrides)
    return [(name, overrides)] + [(f"{name}@seed{s}", [*overrides, f"train.seed={s}"]) for s in seeds[1:]]


def valid_uar(result: dict) -> float:
    """The validation score the fold's model was chosen by: the last classification stage's best
    validation UAR (stage 3, or stage 1 for plain fine-tuning), or the probe's best layer."""
    if "probe" in result:
        return max(result["probe"]["valid_uar_per_layer"])
    return chosen_valid_uar(result["stages"])


def fold_figures(result: dict) -> dict:
    """A fold's validation and test figures for the sweep's table."""
    return {"valid_uar": valid_uar(result), "war": result["war"], "uar": result["uar"]}


def summarize(out: Path, configs: list[list[str]], folds: list[int], command: str,
              seeds: list[int] | None = None, protocol: str = "speaker-independent") -> dict:
    """``sweep.json``: every config's folds (validation and test, means over its ``seeds``' runs) and
    means; the choice by validation. A config is complete when every seed finished every fold."""
    seeds = seeds or [None]
    entries, runs_of = {}, {}
    for overrides in configs:
        name = config_name(overrides)
        runs = runs_of[name] = [run for run, _ in replicates(overrides, seeds)]
        found = {run: {k: fold_figures(json.loads(p.read_text())) for k in folds
                       if (p := out / run / f"fold{k}" / "result.json").exists()} for run in runs}
        rows = []
        for k in (k for k in folds if all(k in found[run] for run in runs)):
            rows.append({"fold": k, **{m: float(np.mean([found[run][k][m] for run in runs]))
                                       for m in ("valid_uar", "war", "uar")}})
        entries[name] = {"overrides": overrides, "folds": rows, "complete": len(rows) == len(folds),
                         **(fold_means(rows, ("valid_uar", "war", "uar")) if rows else {})}
        if len(seeds) > 1:
            entries[name]["seeds"] = [{"seed": s, "run": run, "folds": len(found[run]),
                                       **{f"{m}_mean": float(np.mean([f[m] for f in found[run].values()]))
                                          for m in ("valid_uar", "uar") if found[run]}}
                                      for s, run in zip(seeds, runs)]
    complete = [n for n, e in entries.items() if e["complete"]]
    chosen = max(complete, key=lambda n: entries[n]["valid_uar_mean"]) if complete else None
    if configs and configs[0] == [] and "base" in complete:  # --one-at-a-time: each change against the base
        for name in (n for n in complete if n != "base"):
            c = compare_runs([out / r for r in runs_of[name]], [out / r for r in runs_of["base"]])
            entries[name]["vs_base"] = {k: c[k] for k in ("uar_diff", "uar_ci", "p_uar", "war_diff", "war_ci", "p_war")}
    over = "the folds" if len(seeds) == 1 else f"the folds and {len(seeds)} seeds"
    rule = f"best validation UAR averaged over {over}; test scores are not read to choose"
    summary = {"command": command, "protocol": protocol, "folds": folds, "chosen": chosen, "rule": rule,
               **({"seeds": seeds} if len(seeds) > 1 else {}), "configs": entries, **provenance()}
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
        if "seeds" in e:  # each replicate's own means: how far one run of the config moves
            lines.append("    seeds " + ", ".join(
                f"{r['seed']}: valid {r['valid_uar_mean']:.2f} test {r['uar_mean']:.2f}" if "uar_mean" in r
                else f"{r['seed']}: -" for r in e["seeds"]))
    lines.append(f"* chosen: {summary['chosen'] or 'none yet (no config has every fold)'} ({summary['rule']})")
    return "\n".join(lines)


def sweep(config: str, overrides: list[str], grid: list[str], out: Path, folds: list[int] | None = None,
          jobs: int = 1, command: str = "", run: bool = True, report: bool = True, single: bool = False,
          seeds: int = 1) -> dict:
    """Run (or resume) every config of ``grid`` (``single``: the base and each value alone) on ``folds``,
    each ``seeds`` times, and write ``out/sweep.json``."""
    from .reproduce import spawn_workers

    axes = parse_grid(grid)
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least 1")
    if seeds > 1 and "train.seed" in (k for k, _ in axes):
        raise ConfigError("--seeds: train.seed is already a grid axis; give one or the other")
    configs = (one_at_a_time if single else combinations)(axes)
    cfgs = [load_config(config, [*overrides, *c]) for c in configs]  # every config checked before anything runs
    if same := [c[0] for c, cfg in zip(configs[1:], cfgs[1:]) if single and cfg == cfgs[0]]:
        raise ConfigError(f"--one-at-a-time: {', '.join(same)} is what the base config has already")
    seed_list = [cfgs[0].train.seed + r for r in range(seeds)]
    runs = [(run, cfg if o is c else load_config(config, [*overrides, *o]))  # the first seed is the config itself
            for c, cfg in zip(configs, cfgs) for run, o in replicates(c, seed_list)]
    if run:
        for _, cfg in runs:
            check_precision(cfg.train.device, cfg.train.precision)
    corpus = configured_corpus(cfgs[0].data)
    folds = check_folds(corpus, folds)
    if any((c.data.corpus, c.data.root, c.data.corpora, c.data.classes) != (cfgs[0].data.corpus, cfgs[0].data.root,
           cfgs[0].data.corpora, cfgs[0].data.classes) for c in cfgs):
        raise ConfigError("--grid: the corpus and its classes must be the same in every config")
    out.mkdir(parents=True, exist_ok=True)
    if run and jobs > 1 and len(folds) > 1:
        def args_for(mine):
            return (["sweep", "--config", config, "--out", str(out), "--folds", ",".join(map(str, mine)), "--no-report"]
                    + [a for o in overrides for a in ("--set", o)] + [a for g in grid for a in ("--grid", g)]
                    + (["--one-at-a-time"] if single else []) + (["--seeds", str(seeds)] if seeds > 1 else []))
        spawn_workers(args_for, jobs, folds, out)
    elif run:
        for name, cfg in runs:
            claim_run_dir(cfg, out / name)
            for k in folds:
                start = time.perf_counter()
                result = run_fold(cfg, corpus, k, out / name / f"fold{k}", shared=out / "steps")
                log.info("%s fold %d: valid UAR %.2f, test UAR %.2f (%.0f s)", name, k,
                         valid_uar(result), result["uar"], time.perf_counter() - start)
    return summarize(out, configs, folds, command, seed_list, corpus.protocol) if report else {}
