"""``gmptl reproduce``: the paper's comparison on a corpus, every system on every fold, resumable.

The systems are configs of the one pipeline (``SYSTEMS``). Their steps live in one
shared directory under digests of their settings (``pipeline.step_dirs``), so a
system that differs from another only in a later step reuses the earlier ones:
``gmps+hybrid-ft`` is ``gmp-tl``, ``stage1-multitask`` is ``gmp-tl``'s stage 1,
``mps+*`` start from ``finetune-ce``'s stage 1. Layout of ``--out``::

    steps/fold{k}/{stage1,pseudo,stage2,stage3}-<digest>/   the trained steps
    <system>/fold{k}/result.json, predictions.jsonl, model/ one directory per system and fold
    logs/worker{i}.log                                      with --jobs N > 1

A killed run resumes where it stopped: finished systems, folds and steps are skipped.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config, load_config
from .corpora import configured_corpus
from .cv import check_folds, claim_run_dir, compare_runs, fold_means, plot_confusion, summarize_folds
from .encoders import build_encoder
from .errors import ConfigError
from .pipeline import run_fold
from .provenance import provenance
from .utils import atomic_json, check_precision, figure

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RECIPES = {
    "ravdess": {"config": REPO / "configs" / "ravdess_whisper_tiny.yaml", "subset": ["neutral", "happy", "sad", "angry"],
                "protocol": "speaker-independent 6-fold cross-validation, 4 consecutive actors per test fold; "
                            "validation on 2 of the 20 training actors (1 female, 1 male), and for the frozen "
                            "probe 5-fold cross-validation over the 20 training actors; nothing chosen on a "
                            "test fold"},
}


@dataclass(frozen=True)
class System:
    name: str
    table: str              # main, table2, table3
    overrides: tuple = ()
    subset: bool = False    # on the 4-class subset (reported separately)

    @property
    def key(self) -> str:
        return f"{self.name}@4" if self.subset else self.name


def systems(num_layers: int) -> list[System]:
    """Every system, in the order they run: the main comparison first."""
    finetune = ("system=finetune", "stage1.alpha=1.0")
    # The probe's layer and C by cross-validation over the training speakers: 2 validation actors
    # choose noisily (results/ravdess/NOTES.md, item 8). It never autocasts: fp32 whatever the fine-tuned
    # systems use, so its folder is the same for a bf16 run and any machine can make it (a CPU beside a GPU).
    probe = ("system=probe", "probe.select=speaker-cv", "probe.c=[0.001,0.01,0.1,1.0]", "train.precision=fp32")
    out = [System("frozen-probe", "main", probe), System("finetune-ce", "main", finetune),
           System("stage1-multitask", "main", ("system=finetune",)), System("gmp-tl", "main")]
    out += [System("gmps+hybrid-ft", "table2"), System("gmps+ce-ft", "table2", ("stage3.loss=ce",)),
            System("mps+hybrid-ft", "table2", ("stage1.alpha=1.0",)),
            System("mps+ce-ft", "table2", ("stage1.alpha=1.0", "stage3.loss=ce"))]
    out += [System("finetune-ce", "main", finetune, subset=True), System("gmp-tl", "main", subset=True)]
    out += [System(f"layer-{i}", "table3", (f"pseudo.layer=-{i}",)) for i in range(1, num_layers + 1)]
    return out


def system_config(base: Path, system: System, overrides: list[str], subset: list[str]) -> Config:
    extra = [f"data.classes=[{','.join(subset)}]"] if system.subset else []
    return load_config(base, [*overrides, *system.overrides, *extra])


def run_worker(recipe: str, base: Path, out: Path, plan: list[System], folds: list[int], overrides: list[str]) -> None:
    """Every system of ``plan`` on ``folds``, system by system (so the main table fills first)."""
    subset = RECIPES[recipe]["subset"]
    corpora = {}
    for system in plan:
        cfg = system_config(base, system, overrides, subset)
        if system.subset not in corpora:
            corpora[system.subset] = configured_corpus(cfg.data)
        claim_run_dir(cfg, out / system.key)
        for k in folds:
            start = time.perf_counter()
            result = run_fold(cfg, corpora[system.subset], k, out / system.key / f"fold{k}", shared=out / "steps")
            log.info("%s fold %d: WAR %.2f UAR %.2f (%.0f s)", system.key, k, result["war"], result["uar"],
                     time.perf_counter() - start)


def spawn_workers(args_for, jobs: int, folds: list[int], out: Path) -> None:
    """``jobs`` processes of ``gmptl reproduce``, the folds dealt out among them, each with its share of threads;
    ended with this process (Ctrl-C, SIGTERM)."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = []
    for i in range(min(jobs, len(folds))):  # a worker for every share that has a fold
        with open(logs / f"worker{i}.log", "a") as f:
            procs.append(subprocess.Popen([sys.executable, "-m", "gmptl", *args_for(folds[i::jobs])], env=env,
                                          stdout=f, stderr=subprocess.STDOUT))
    # SIGTERM (kill, timeout, a scheduler) ends the workers too; their checkpoints are atomic, so a rerun resumes.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM)) if main_thread else None
    try:
        failed = [p.args for p in procs if p.wait() != 0]
    finally:
        for p in procs:
            p.terminate()  # nothing for one that has ended
        for p in procs:
            p.wait()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if failed:
        raise ConfigError(f"{len(failed)} of {len(procs)} workers failed; see {logs}/worker*.log, rerun to resume")


def collect(out: Path, plan: list[System], folds: list[int]) -> dict[str, list[dict]]:
    """The fold results present for each system (a run in progress has some)."""
    found = {}
    for system in plan:
        results = [json.loads(p.read_text()) for k in folds
                   if (p := out / system.key / f"fold{k}" / "result.json").exists()]
        if results:
            found[system.key] = results
    return found


def paired_against(out: Path, chosen: list[System], reference: str = "finetune-ce") -> dict:
    """Every system against ``reference`` on their common folds (``cv.compare_runs``): the difference
    of the tables' means, its 95 % interval over the test speakers and the permutation p-value."""
    if not (ref := next((s for s in chosen if s.name == reference), None)):
        return {}
    paired = {}
    for s in [s for s in chosen if s is not ref]:
        try:
            c = compare_runs(out / s.key, out / ref.key)
        except ConfigError:  # no predictions (fold results only) or no common fold: nothing to pair
            continue
        paired[s.name] = {"folds": [f["fold"] for f in c["per_fold"]],
                          **{k: c[k] for k in ("uar_diff", "uar_ci", "p_uar", "war_diff", "war_ci", "p_war")}}
    return {"reference": reference, "systems": paired} if paired else {}


def write_results(recipe: str, plan: list[System], results: dict[str, list[dict]], dest: Path, subset: bool,
                  command: str, encoder: str, labels: list[str], pseudo_layer: int = -3,
                  out: Path | None = None) -> dict | None:
    """``dest/summary.json``, its plots and ``README.md`` for the systems of one label set; ``command`` runs
    the main comparison (an ablation's own command adds ``--systems``)."""
    chosen = [s for s in plan if s.subset == subset and s.key in results]
    if not chosen:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    prov, entries = provenance(), {}
    runs = [r["provenance"] for s in chosen for r in results[s.key] if r.get("provenance")]
    for s in chosen:
        rs = sorted(results[s.key], key=lambda r: r["fold"])
        summary = summarize_folds(rs, labels)
        entries[s.name] = {"table": s.table, "folds": [{k: r[k] for k in ("fold", "war", "uar", "f1")} for r in rs],
                           **{k: summary[k] for k in ("war_mean", "war_std", "uar_mean", "uar_std",
                                                      "f1_mean", "f1_std", "recall_mean", "confusion")},
                           "wall_s": round(sum(r.get("compute_s", r.get("wall_s", 0.0)) for r in rs), 1),
                           "command": command + ("" if s.table == "main" else f" --systems {s.name}")}
    summary = {"corpus": recipe, "classes": labels, "encoder": encoder, "protocol": RECIPES[recipe]["protocol"],
               "commit": prov["commit"], "date": prov["date"], "machine": prov["machine"],
               "runs": {"commits": sorted({r["commit"] for r in runs if r["commit"]}),
                        "machines": sorted({r["machine"] for r in runs})},
               "pseudo_layer": pseudo_layer, "systems": entries,
               **({"paired": p} if out and (p := paired_against(out, chosen)) else {})}
    atomic_json(summary, dest / "summary.json")
    if "gmp-tl" in entries:
        e = entries["gmp-tl"]
        plot_confusion(e["confusion"], labels, dest / "confusion_gmp-tl.png",
                       f"gmp-tl on {recipe}, folds {','.join(str(f['fold']) for f in e['folds'])}: "
                       f"UAR {e['uar_mean']:.1f}")
    plot_folds(entries, dest / "folds.png", f"{recipe}: UAR per test fold")
    if summary.get("paired"):
        plot_paired(summary["paired"], dest / "paired.png", f"{recipe}, {len(labels)} classes")
    (dest / "README.md").write_text(results_readme(summary, command))
    return summary


def results_readme(summary: dict, command: str) -> str:
    """The results page, generated from ``summary`` (so the two never disagree)."""
    systems, classes = summary["systems"], summary["classes"]
    widest = max(systems.values(), key=lambda e: len(e["folds"]))["folds"]
    lines = [f"# {summary['corpus']}, {len(classes)} classes ({', '.join(classes)}): {summary['encoder']}", "",
             "Generated by `gmptl reproduce` from the fold results; do not edit by hand "
             "(see NOTES.md beside it, where present, for what was tried and why).", "",
             f"- Protocol: {summary['protocol']}.",
             f"- Runs: commit(s) {', '.join(c[:10] for c in summary['runs']['commits']) or 'unknown'}; "
             f"machine(s): {'; '.join(summary['runs']['machines']) or 'unknown'}.",
             f"- Written {summary['date']} at commit {str(summary['commit'])[:10]}.",
             *([f"- {summary['note']}"] if summary.get("note") else []),
             "- WAR = accuracy, UAR = mean per-class recall, in percent: mean ± standard deviation over the "
             "folds listed. Compute = the system's own steps and test, summed over folds (steps shared "
             "with another system count for both).", "",
             "Reproduce (resumes when interrupted; `--jobs N` runs folds in parallel):", "",
             f"    {command}", "", format_tables(summary), *format_paired(summary)]
    if "gmp-tl" in systems:
        lines += ["## gmp-tl: confusion matrix (summed over folds, rows normalised)", "",
                  "![confusion](confusion_gmp-tl.png)", ""]
    lines += ["## UAR per fold", "", "![folds](folds.png)", "", "## Per-fold values", "",
              "| system | " + " | ".join(f"fold {f['fold']} UAR" for f in widest) + " |",
              "| --- |" + " --- |" * len(widest)]
    lines += [f"| {name} | " + " | ".join(f"{f['uar']:.2f}" for f in e["folds"]) + " |" for name, e in systems.items()]
    lines += ["", "## Commands", ""] + [f"- {name}: `{e['command']}`" for name, e in systems.items()]
    return "\n".join(lines) + "\n"


def format_paired(summary: dict) -> list[str]:
    """The README section of ``summary["paired"]``: is a system's difference to the reference real?"""
    if not (paired := summary.get("paired")):
        return []
    ref = paired["reference"]
    lines = [f"### Against `{ref}`, paired over the same test speakers", "",
             f"Difference of the mean UAR / WAR (system minus `{ref}`), its 95 % interval from a bootstrap "
             "over the test speakers, and the p-value of a permutation test that swaps the two systems' "
             "predictions of each speaker at random (`gmptl compare RUN_A RUN_B`). Both measure how much "
             "the difference could owe to which speakers were tested, not to training randomness: for that, "
             "compare two runs of one configuration (Table 3's rerun of gmp-tl's layer, where present).", "",
             "![paired](paired.png)", "",
             "| system | folds | UAR diff | 95 % CI | p | WAR diff | 95 % CI | p |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in paired["systems"].items():
        cells = [f"{c[f'{m}_diff']:+.2f} | [{c[f'{m}_ci'][0]:+.2f}, {c[f'{m}_ci'][1]:+.2f}] | "
                 + (f"{c[f'p_{m}']:.3f}" if c[f"p_{m}"] >= 0.001 else "< 0.001") for m in ("uar", "war")]
        lines.append(f"| {name} | {','.join(map(str, c['folds']))} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def plot_paired(paired: dict, path: Path, title: str) -> None:
    """Each system's UAR difference to the reference with its 95 % interval, one row per system."""
    names = list(paired["systems"])[::-1]
    with figure(path, figsize=(6.5, 0.38 * len(names) + 1.3)) as (_, ax):
        for i, name in enumerate(names):
            c = paired["systems"][name]
            lo, hi = c["uar_ci"]
            color = "tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray"
            ax.plot([lo, hi], [i, i], color=color, lw=2)
            ax.plot(c["uar_diff"], i, "o", color=color)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(names)), names)
        ax.set(xlabel=f"UAR minus {paired['reference']} (points), 95 % interval over test speakers", title=title)
        ax.grid(axis="x", alpha=0.3)


def plot_folds(entries: dict, path: Path, title: str) -> None:
    """UAR of each main system on each fold, as grouped bars."""
    main = {name: e for name, e in entries.items() if e["table"] == "main"}
    folds = sorted({f["fold"] for e in main.values() for f in e["folds"]})
    if not folds:
        return
    width = 0.8 / len(main)
    with figure(path, figsize=(1.4 * len(folds) + 3, 3.6)) as (_, ax):
        for i, (name, e) in enumerate(main.items()):
            uar = {f["fold"]: f["uar"] for f in e["folds"]}
            xs = [j + i * width for j, k in enumerate(folds) if k in uar]
            ax.bar(xs, [uar[k] for k in folds if k in uar], width, label=f"{name} ({e['uar_mean']:.1f})")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(folds))], [f"fold {k}" for k in folds])
        ax.set(ylabel="UAR (%)", ylim=(0, 100), title=title)
        ax.legend(fontsize=8, loc="lower right")


def reproduce(recipe: str, root: str, out: Path, results_dir: Path, names: list[str] | None = None,
              folds: list[int] | None = None, jobs: int = 1, overrides: list[str] = (), config: str | None = None,
              report: bool = True, command: str = "", run: bool = True) -> dict:
    """Run (or resume) every system of ``recipe`` and write its results; see the module docstring."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe '{recipe}' (known: {', '.join(RECIPES)})")
    base = Path(config) if config else RECIPES[recipe]["config"]
    subset = RECIPES[recipe]["subset"]
    user, overrides = list(overrides), [*overrides, f"data.root={root}"]
    cfg = load_config(base, overrides)
    corpus = configured_corpus(cfg.data)
    folds = check_folds(corpus, folds)
    every = systems(build_encoder(cfg.encoder.spec).num_layers)
    known = sorted({s.name for s in every})
    if names and (bad := [n for n in names if n not in known]):
        raise ConfigError(f"--systems: unknown {', '.join(bad)} (known: {', '.join(known)})")
    plan = [s for s in every if not names or s.name in names]
    for system in plan if run else []:  # refused before any work, not when a worker reaches the system
        planned = system_config(base, system, overrides, subset)
        check_precision(planned.train.device, planned.train.precision)
    out.mkdir(parents=True, exist_ok=True)
    if run and jobs > 1 and len(folds) > 1:
        def args_for(mine):
            return ["reproduce", recipe, "--root", root, "--out", str(out), "--folds", ",".join(map(str, mine)),
                    "--no-report", *(["--systems", ",".join(names)] if names else []),
                    *(["--config", config] if config else []), *[a for o in user for a in ("--set", o)]]
        spawn_workers(args_for, jobs, folds, out)
    elif run:  # not with --report-only, which writes the results of what is there
        run_worker(recipe, base, out, plan, folds, overrides)
    if not report:
        return {}
    found = collect(out, plan, folds)
    command = command or f"gmptl reproduce {recipe} --root {root}"
    return {key: write_results(recipe, plan, found, dest, key == "subset", command, cfg.encoder.spec, labels,
                               cfg.pseudo.layer, out)
            for key, labels, dest in (("all", corpus.labels, results_dir),
                                      ("subset", subset, results_dir.with_name(f"{results_dir.name}{len(subset)}")))}


def format_tables(summary: dict) -> str:
    """Markdown tables of a results summary: main comparison, Table 2, Table 3."""
    lines, layer, systems = [], summary.get("pseudo_layer", -3), summary["systems"]
    gmp = systems.get("gmp-tl")
    titles = {"main": "Main comparison", "table2": "Table 2: pseudo-label and fine-tuning variants",
              "table3": "Table 3: clustered layer of the stage-1 encoder (GMP-TL)"}
    for table, title in titles.items():
        rows = {n: e for n, e in systems.items() if e["table"] == table}
        if not rows:
            continue
        lines += [f"### {title}", "", "| system | folds | WAR (%) | UAR (%) | compute (min) |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [table_row(name, e["folds"], e) + f" {e['wall_s'] / 60:.1f} |" for name, e in rows.items()]
        covered = {f["fold"] for e in rows.values() for f in e["folds"]}
        if table != "main" and gmp and covered != {f["fold"] for f in gmp["folds"]} \
                and (same := [f for f in gmp["folds"] if f["fold"] in covered]):
            # An ablation run on fewer folds is set beside gmp-tl's means over those folds.
            means = fold_means(same, ("war", "uar"))
            lines.append(table_row(f"gmp-tl (layer {layer}), same folds", same, means) + " |")
        lines.append("")
        if table == "table3" and (own := rows.get(f"layer{layer}")) and gmp:
            # One run shares gmp-tl's steps (equal rows); runs apart (another machine) may differ.
            equal = {(f["fold"], f["uar"]) for f in own["folds"]} <= {(f["fold"], f["uar"]) for f in gmp["folds"]}
            lines += [f"`layer{layer}` is `gmp-tl`'s own configuration (it clusters layer {layer})"
                      + (": the same steps, so the same figures." if equal else
                         ", run again: the gap between the two rows is run-to-run variation."), ""]
    return "\n".join(lines)


def table_row(name: str, folds: list[dict], means: dict) -> str:
    """``| name | folds | WAR | UAR |``: a row of ``format_tables`` without its compute cell."""
    return (f"| {name} | {','.join(str(f['fold']) for f in folds)} | {means['war_mean']:.2f} ± "
            f"{means['war_std']:.2f} | {means['uar_mean']:.2f} ± {means['uar_std']:.2f} |")
