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
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config, config_from_dict, load_config
from .corpora import load_corpus
from .cv import check_folds, claim_run_dir, compare_runs, fold_means, plot_confusion, summarize_folds
from .errors import ConfigError
from .pipeline import HOW, run_fold
from .provenance import provenance
from .train import atomic_json, check_precision

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


def recorded_overrides(run_dir: Path, planned: Config) -> list[str]:
    """The ``--set`` options that turn ``planned`` into the config the runs in ``run_dir`` were made with
    (its ``config.json``, today's defaults filling the options added since): none when they match.
    Results made under an older default thus name the command that reproduces them."""
    saved = run_dir / "config.json"
    if not saved.exists():
        return []
    before, now = config_from_dict(json.loads(saved.read_text())).to_dict(), planned.to_dict()
    sets = []
    for section, values in before.items():
        for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
            if (section, key) == ("data", "root") or section == "train" and key in HOW:
                continue  # where the data lies and how a step runs, not what it computes
            if value != (now[section] if key is None else now[section][key]):
                text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
                sets.append(f"{section}{'' if key is None else '.' + key}={text}")
    return sets


def command_sets(done: list[System], recorded: dict[str, list[str]], differs) -> dict[str, list[str]]:
    """The ``--set`` options each system's written command needs beyond the command's own, from each system's
    ``recorded`` overrides and ``differs(system, extra)`` (what still differs with ``extra`` set): every system's
    together where they reproduce it (a system whose own overrides fix a setting ignores it), else its own."""
    union = list(dict.fromkeys(o for own in recorded.values() for o in own))
    sets = {}
    for s in done:
        own = recorded[s.key]
        if own != union and not differs(s, union):
            sets[s.key] = union
            continue
        sets[s.key] = own
        if own and differs(s, own):
            log.warning("%s: the config its runs were made with is not reached by --set options on top of the "
                        "system's own (%s): the command written for it does not reproduce them", s.key, " ".join(own))
    return sets


def system_commands(command: str, chosen: list[System], sets: dict[str, list[str]]) -> tuple[dict[str, str], str]:
    """Each system's command (``command`` with its ``sets``, and ``--systems`` where the page's one command does
    not run it as it ran), and that one command: with the options every system needs."""
    common = [o for o in sets[chosen[0].key] if all(o in v for v in sets.values())]
    with_sets = lambda options: command + "".join(f" --set {shlex.quote(o)}" for o in options)  # noqa: E731
    return ({s.key: with_sets(sets[s.key]) + (f" --systems {s.name}" if s.table != "main" or sets[s.key] != common
                                              else "") for s in chosen}, with_sets(common))


def run_worker(recipe: str, base: Path, out: Path, plan: list[System], folds: list[int], overrides: list[str]) -> None:
    """Every system of ``plan`` on ``folds``, system by system (so the main table fills first)."""
    subset = RECIPES[recipe]["subset"]
    corpora = {}
    for system in plan:
        cfg = system_config(base, system, overrides, subset)
        if system.subset not in corpora:
            corpora[system.subset] = load_corpus(cfg.data.corpus, cfg.data.root, classes=cfg.data.classes)
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
    for i in range(jobs):
        mine = folds[i::jobs]
        if not mine:
            continue
        with open(logs / f"worker{i}.log", "a") as f:
            procs.append(subprocess.Popen([sys.executable, "-m", "gmptl", *args_for(mine)], env=env,
                                          stdout=f, stderr=subprocess.STDOUT))
    # SIGTERM (kill, timeout, a scheduler) ends the workers too; their checkpoints are atomic, so a rerun resumes.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM)) if main_thread else None
    try:
        failed = [p.args for p in procs if p.wait() != 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
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
    ref = next((s for s in chosen if s.name == reference), None)
    if ref is None:
        return {}
    paired = {}
    for s in chosen:
        if s is ref:
            continue
        try:
            c = compare_runs(out / s.key, out / ref.key)
        except ConfigError:  # no predictions (fold results only) or no common fold: nothing to pair
            continue
        paired[s.name] = {"folds": [f["fold"] for f in c["per_fold"]],
                          **{k: c[k] for k in ("uar_diff", "uar_ci", "p_uar", "war_diff", "war_ci", "p_war")}}
    return {"reference": reference, "systems": paired} if paired else {}


def write_results(recipe: str, plan: list[System], results: dict[str, list[dict]], dest: Path, subset: bool,
                  command: str, encoder: str, labels: list[str], pseudo_layer: int = -3,
                  out: Path | None = None, recorded: dict[str, list[str]] | None = None,
                  sets: dict[str, list[str]] | None = None) -> dict | None:
    """``dest/summary.json`` (and its plots) for the systems of one label set. ``recorded`` holds each
    system's settings that its runs were made with beyond ``command``'s (``recorded_overrides``), ``sets``
    the ``--set`` options its command needs to reproduce them (by default ``recorded``'s)."""
    chosen = [s for s in plan if s.subset == subset and s.key in results]
    if not chosen:
        return None
    recorded = {s.key: (recorded or {}).get(s.key, []) for s in chosen}
    commands, page_command = system_commands(command, chosen, {s.key: (sets or recorded).get(s.key, [])
                                                               for s in chosen})
    dest.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    entries, commits, machines = {}, set(), set()
    for s in chosen:
        rs = sorted(results[s.key], key=lambda r: r["fold"])
        summary = summarize_folds(rs, labels)
        commits.update(r["provenance"]["commit"] for r in rs if r.get("provenance"))
        machines.update(r["provenance"]["machine"] for r in rs if r.get("provenance"))
        entries[s.name] = {"table": s.table, "folds": [{k: f[k] for k in ("fold", "war", "uar", "f1")}
                                                       for f in summary["folds"]],
                           **{k: summary[k] for k in ("war_mean", "war_std", "uar_mean", "uar_std",
                                                      "f1_mean", "f1_std", "recall_mean", "confusion")},
                           "wall_s": round(sum(r.get("compute_s", r.get("wall_s", 0.0)) for r in rs), 1),
                           "command": commands[s.key]}
    summary = {"corpus": recipe, "classes": labels, "encoder": encoder, "protocol": RECIPES[recipe]["protocol"],
               "commit": prov["commit"], "date": prov["date"], "machine": prov["machine"],
               "runs": {"commits": sorted(c for c in commits if c), "machines": sorted(machines)},
               "pseudo_layer": pseudo_layer, "systems": entries,
               **({"recorded_overrides": {s.name: recorded[s.key] for s in chosen}} if any(recorded.values()) else {}),
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
    (dest / "README.md").write_text(results_readme(summary, page_command))
    return summary


def amend_commands(dest: Path, command: str, recorded: dict[str, list[str]], sets: dict[str, list[str]],
                   amended: dict) -> dict:
    """Rewrite ``dest``'s ``summary.json`` and ``README.md`` as the report would have written them had it seen
    each system's ``recorded`` settings (``--set`` options beyond ``command``, the command the page was written
    for), with ``sets`` those its command needs (``command_sets``). For pages whose run folders are gone, once
    those settings are known another way (``results/ravdess/recorded_settings.py``). Numbers, plots and the date
    and commit the page was written at stay; ``amended`` (date, commit, command, why) goes into both files."""
    summary = json.loads((dest / "summary.json").read_text())
    entries = summary["systems"]
    if summary.get("recorded_overrides"):
        raise ConfigError(f"{dest / 'summary.json'}: it already names the settings of its runs")
    if bad := [n for n, e in entries.items() if not e["command"].startswith(command)]:
        raise ConfigError(f"{dest / 'summary.json'}: the commands of {', '.join(bad)} do not start with {command!r}")
    chosen = [System(name, e["table"]) for name, e in entries.items()]
    commands, page_command = system_commands(command, chosen, {n: sets.get(n, []) for n in entries})
    for name, e in entries.items():
        e["command"] = commands[name]
    summary["recorded_overrides"] = {n: recorded.get(n, []) for n in entries}
    summary["amended"] = amended
    atomic_json(summary, dest / "summary.json")
    (dest / "README.md").write_text(results_readme(summary, page_command))
    return summary


def results_readme(summary: dict, command: str) -> str:
    """The results page, generated from ``summary`` (so the two never disagree)."""
    systems = summary["systems"]
    classes = len(summary["classes"])
    recorded = {n: sets for n, sets in summary.get("recorded_overrides", {}).items() if sets}
    settings = "; ".join(f"{n}: `{' '.join(sets)}`" for n, sets in recorded.items())
    if len(recorded) == len(systems) and len({tuple(sets) for sets in recorded.values()}) == 1:
        settings = f"every system: `{' '.join(next(iter(recorded.values())))}`"
    lines = [f"# {summary['corpus']}, {classes} classes ({', '.join(summary['classes'])}): "
             f"{summary['encoder']}", "",
             "Generated by `gmptl reproduce` from the fold results; do not edit by hand "
             "(see NOTES.md beside it, where present, for what was tried and why).", "",
             f"- Protocol: {summary['protocol']}.",
             f"- Runs: commit(s) {', '.join(c[:10] for c in summary['runs']['commits']) or 'unknown'}; "
             f"machine(s): {'; '.join(summary['runs']['machines']) or 'unknown'}.",
             f"- Written {summary['date']} at commit {str(summary['commit'])[:10]}.",
             *([f"- Commands amended {a['date']} at commit {str(a['commit'])[:10]} by `{a['command']}`: "
                f"{a['why']}."] if (a := summary.get("amended")) else []),
             "- WAR = accuracy, UAR = mean per-class recall, in percent: mean ± standard deviation over the "
             "folds listed. Compute = the system's own steps and test, summed over folds (steps shared "
             "with another system count for both).",
             *([f"- Settings: these runs were made with options other than the recipe's config has now "
                f"({settings}); the commands below set them."] if recorded else []), "",
             "Reproduce (resumes when interrupted; `--jobs N` runs folds in parallel):", "",
             f"    {command}", "", format_tables(summary), *format_paired(summary)]
    if "gmp-tl" in systems:
        lines += ["## gmp-tl: confusion matrix (summed over folds, rows normalised)", "",
                  "![confusion](confusion_gmp-tl.png)", ""]
    lines += ["## UAR per fold", "", "![folds](folds.png)", "", "## Per-fold values", "",
              "| system | " + " | ".join(f"fold {f['fold']} UAR" for f in max(
                  systems.values(), key=lambda e: len(e["folds"]))["folds"]) + " |",
              "| --- |" + " --- |" * max(len(e["folds"]) for e in systems.values())]
    for name, e in systems.items():
        lines.append(f"| {name} | " + " | ".join(f"{f['uar']:.2f}" for f in e["folds"]) + " |")
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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(paired["systems"])[::-1]
    rows = [paired["systems"][n] for n in names]
    fig, ax = plt.subplots(figsize=(6.5, 0.38 * len(names) + 1.3))
    for i, c in enumerate(rows):
        lo, hi = c["uar_ci"]
        color = "tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray"
        ax.plot([lo, hi], [i, i], color=color, lw=2)
        ax.plot(c["uar_diff"], i, "o", color=color)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(f"UAR minus {paired['reference']} (points), 95 % interval over test speakers")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_folds(entries: dict, path: Path, title: str) -> None:
    """UAR of each main system on each fold, as grouped bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = {name: e for name, e in entries.items() if e["table"] == "main"}
    folds = sorted({f["fold"] for e in main.values() for f in e["folds"]})
    if not folds:
        return
    fig, ax = plt.subplots(figsize=(1.4 * len(folds) + 3, 3.6))
    width = 0.8 / max(len(main), 1)
    for i, (name, e) in enumerate(main.items()):
        uar = {f["fold"]: f["uar"] for f in e["folds"]}
        xs = [j + i * width for j, k in enumerate(folds) if k in uar]
        ax.bar(xs, [uar[k] for k in folds if k in uar], width, label=f"{name} ({e['uar_mean']:.1f})")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(folds))], [f"fold {k}" for k in folds])
    ax.set_ylabel("UAR (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reproduce(recipe: str, root: str, out: Path, results_dir: Path, names: list[str] | None = None,
              folds: list[int] | None = None, jobs: int = 1, overrides: list[str] = (), config: str | None = None,
              report: bool = True, command: str = "", run: bool = True) -> dict:
    """Run (or resume) every system of ``recipe`` and write its results; see the module docstring."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe '{recipe}' (known: {', '.join(RECIPES)})")
    base = Path(config) if config else RECIPES[recipe]["config"]
    user = list(overrides)
    overrides = [*user, f"data.root={root}"]
    cfg = load_config(base, overrides)
    corpus = load_corpus(cfg.data.corpus, cfg.data.root, classes=cfg.data.classes)
    folds = check_folds(corpus, folds)
    from .encoders import build_encoder
    every = systems(build_encoder(cfg.encoder.spec).num_layers)
    known = sorted({s.name for s in every})
    if names and (bad := [n for n in names if n not in known]):
        raise ConfigError(f"--systems: unknown {', '.join(bad)} (known: {', '.join(known)})")
    plan = [s for s in every if not names or s.name in names]
    for system in plan if run else []:  # refused before any work, not when a worker reaches the system
        planned = system_config(base, system, overrides, RECIPES[recipe]["subset"])
        check_precision(planned.train.device, planned.train.precision)
    out.mkdir(parents=True, exist_ok=True)
    if not run:
        pass  # --report-only: write the results of what is there
    elif jobs > 1 and len(folds) > 1:
        def args_for(mine):
            return (["reproduce", recipe, "--root", root, "--out", str(out), "--folds", ",".join(map(str, mine)),
                     "--no-report"] + (["--systems", ",".join(names)] if names else [])
                    + (["--config", config] if config else []) + [a for o in user for a in ("--set", o)])
        spawn_workers(args_for, jobs, folds, out)
    else:
        run_worker(recipe, base, out, plan, folds, overrides)
    if not report:
        return {}
    found = collect(out, plan, folds)
    command = command or f"gmptl reproduce {recipe} --root {root}"
    subset_labels = RECIPES[recipe]["subset"]
    done = [s for s in plan if s.key in found]
    differs = lambda s, extra: recorded_overrides(  # noqa: E731
        out / s.key, system_config(base, s, [*overrides, *extra], subset_labels))
    recorded = {s.key: differs(s, []) for s in done}
    sets = command_sets(done, recorded, differs)
    return {"all": write_results(recipe, plan, found, results_dir, False, command, cfg.encoder.spec, corpus.labels,
                                 cfg.pseudo.layer, out, recorded, sets),
            "subset": write_results(recipe, plan, found, results_dir.with_name(results_dir.name + str(len(subset_labels))),
                                    True, command, cfg.encoder.spec, subset_labels, cfg.pseudo.layer, out, recorded,
                                    sets)}


def format_tables(summary: dict) -> str:
    """Markdown tables of a results summary: main comparison, Table 2, Table 3."""
    lines, layer = [], summary.get("pseudo_layer", -3)
    titles = {"main": "Main comparison", "table2": "Table 2: pseudo-label and fine-tuning variants",
              "table3": "Table 3: clustered layer of the stage-1 encoder (GMP-TL)"}
    for table, title in titles.items():
        rows = {n: e for n, e in summary["systems"].items() if e["table"] == table}
        if not rows:
            continue
        lines += [f"### {title}", "", "| system | folds | WAR (%) | UAR (%) | compute (min) |",
                  "| --- | --- | --- | --- | --- |"]
        for name, e in rows.items():
            folds = ",".join(str(f["fold"]) for f in e["folds"])
            lines.append(f"| {name} | {folds} | {e['war_mean']:.2f} ± {e['war_std']:.2f} | "
                         f"{e['uar_mean']:.2f} ± {e['uar_std']:.2f} | {e['wall_s'] / 60:.1f} |")
        if table != "main" and (ref := same_folds(summary["systems"].get("gmp-tl"), rows)):
            lines.append(f"| gmp-tl (layer {layer}), same folds | {ref['folds']} | {ref['war_mean']:.2f} ± "
                         f"{ref['war_std']:.2f} | {ref['uar_mean']:.2f} ± {ref['uar_std']:.2f} | |")
        lines.append("")
        if table == "table3" and (same := rows.get(f"layer{layer}")) and (ref := summary["systems"].get("gmp-tl")):
            # One run shares gmp-tl's steps (equal rows); runs apart (another machine) may differ.
            equal = {(f["fold"], f["uar"]) for f in same["folds"]} <= {(f["fold"], f["uar"]) for f in ref["folds"]}
            lines += [f"`layer{layer}` is `gmp-tl`'s own configuration (it clusters layer {layer})"
                      + (": the same steps, so the same figures." if equal else
                         ", run again: the gap between the two rows is run-to-run variation."), ""]
    return "\n".join(lines)


def same_folds(reference: dict | None, rows: dict) -> dict | None:
    """``reference``'s means over only the folds ``rows`` cover, when an ablation ran on fewer folds."""
    covered = {f["fold"] for e in rows.values() for f in e["folds"]}
    if not reference or covered == {f["fold"] for f in reference["folds"]}:
        return None
    folds = [f for f in reference["folds"] if f["fold"] in covered]
    if not folds:
        return None
    return {"folds": ",".join(str(f["fold"]) for f in folds), **fold_means(folds, ("war", "uar"))}
