"""What the committed tables' runs were made with, against what `gmptl reproduce` plans today.

    python results/ravdess/recorded_settings.py --root DIR

The run folders behind `summary.json` are not kept, so `gmptl reproduce --report-only`
cannot compare their saved configs with today's recipe. This rebuilds them instead: for
each commit that produced a system's rows (see NOTES.md, "How the numbers were
produced"), that commit's own code, checked out in a temporary git worktree, plans the
system for the recorded command. Today's code then says which `--set` options reach
that config (`gmptl.reproduce.recorded_overrides`, as a report does from a run folder)
and, with those options added, whether every step of every fold gets the digest the
old code gave it: the folder the step is kept in, which a run resumes from rather than
recomputes. Writes `recorded_settings.json` beside this file.

A same digest says today's code plans the same computation; it cannot say that the
code computes it as it did then. It does not for rows made before commit 2abc10a,
which changed how dropout and masks are seeded (NOTES.md, item 28).
"""

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from gmptl.pipeline import step_dirs
from gmptl.provenance import provenance
from gmptl.reproduce import RECIPES, amend_commands, command_sets, recorded_overrides, system_config, systems

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# Which commit made which rows (NOTES.md): the main comparison, Table 2 and the 4-class subset on one
# H200 at bdcd4f5, Table 3 on another at f333502, the speaker-CV frozen probe on this CPU at 1cfdba3.
MADE_AT = {"bdcd4f5a64dd4f36ce1d84fa3f4256fd6c843524": ["finetune-ce", "stage1-multitask", "gmp-tl",
                                                         "gmps+hybrid-ft", "gmps+ce-ft", "mps+hybrid-ft",
                                                         "mps+ce-ft", "finetune-ce@4", "gmp-tl@4"],
           "f333502b02bab4246c94db2f1d29e5791663c14e": ["layer-1", "layer-2", "layer-3", "layer-4"],
           "1cfdba36147f15fa7f3e8b4d822633e72ae20574": ["frozen-probe"]}
FOLDS = range(1, 7)
NUM_LAYERS = 4  # Whisper tiny.en

# Run by the old commit's interpreter path: its reproduce plans each system, its step_dirs names the steps.
PLAN = """
import json, sys
from pathlib import Path
from gmptl import pipeline, reproduce
sets, keys = json.loads(sys.argv[1]), json.loads(sys.argv[2])
subset = reproduce.RECIPES["ravdess"]["subset"]
out = {}
for s in reproduce.systems(%d):
    if s.key in keys:
        cfg = reproduce.system_config(reproduce.RECIPES["ravdess"]["config"], s, sets, subset)
        out[s.key] = {"config": cfg.to_dict(), "steps": {k: {step: d.name for step, d in pipeline.step_dirs(
            cfg, Path("run"), Path("steps") / f"fold{k}", key=f"{cfg.data.corpus}/{k}").items()} for k in %s}}
print(json.dumps(out))
""" % (NUM_LAYERS, list(FOLDS))


def recorded_sets(command: str, root: str) -> list[str]:
    """The --set options of a recorded `gmptl reproduce` command, and the data root it was given."""
    words, sets = shlex.split(command), [f"data.root={root}"]
    sets[:0] = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    return sets


def old_plans(commit: str, keys: list[str], sets: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), commit], check=True)
        try:
            done = subprocess.run([sys.executable, "-c", PLAN, json.dumps(sets), json.dumps(keys)], cwd=tree,
                                  env={"PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
                                  check=True, capture_output=True, text=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
    return json.loads(done.stdout)


def same_steps(cfg, old: dict) -> list[str]:
    """The steps whose folders ``cfg`` names as ``old`` named them, on every fold."""
    now = {k: step_dirs(cfg, Path("run"), Path("steps") / f"fold{k}", key=f"{cfg.data.corpus}/{k}") for k in FOLDS}
    return [step for step in now[1] if all(now[k][step].name == old[str(k)][step] for k in FOLDS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the RAVDESS directory (only its path enters the configs)")
    parser.add_argument("--amend", action="store_true",
                        help="also rewrite the commands of results/ravdess{,4}/ with the --set options found "
                             "(gmptl.reproduce.amend_commands)")
    args = parser.parse_args()
    recipe, prov = RECIPES["ravdess"], provenance()
    today = {s.key: s for s in systems(NUM_LAYERS)}
    pages = {"ravdess": "", "ravdess4": "@4"}
    commands = {}
    for page, at in pages.items():  # as first written: an amended page's commands carry the settings found here
        summary = json.loads((REPO / "results" / page / "summary.json").read_text())
        for system, row in summary["systems"].items():
            found = summary.get("recorded_overrides", {}).get(system, []) if "amended" in summary else []
            commands[system + at] = row["command"].replace("".join(f" --set {shlex.quote(o)}" for o in found), "", 1)
    rows, differs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for commit, keys in MADE_AT.items():
            sets = recorded_sets(commands[keys[0]], args.root)
            assert all(recorded_sets(commands[k], args.root) == sets for k in keys), "one command per commit"
            for key, old in old_plans(commit, keys, sets).items():
                saved = Path(tmp) / key  # as a run folder keeps it: config.json
                saved.mkdir()
                (saved / "config.json").write_text(json.dumps(old["config"]))
                differs[key] = lambda s, extra, saved=saved, sets=sets: recorded_overrides(  # noqa: E731
                    saved, system_config(recipe["config"], s, [*sets, *extra], recipe["subset"]))
                needed = differs[key](today[key], [])
                cfg = system_config(recipe["config"], today[key], [*sets, *needed], recipe["subset"])
                same = same_steps(cfg, old["steps"])
                plain = same_steps(system_config(recipe["config"], today[key], sets, recipe["subset"]), old["steps"])
                rows[key] = {"commit": commit, "recorded_command": commands[key], "set_needed_today": needed,
                             "config_reached": not differs[key](today[key], needed), "steps_with_same_digest": same,
                             "steps_with_same_digest_without_the_set": plain}
                print(f"{key:17s} {commit[:7]} needs {' '.join(needed) or '(nothing)'}; same digests with it: "
                      f"{', '.join(same) or 'none'}, without: {', '.join(plain) or 'none'}")
        command = "python results/ravdess/recorded_settings.py --root " + args.root
        (HERE / "recorded_settings.json").write_text(json.dumps({"command": command, **prov, "systems": rows},
                                                                indent=1) + "\n")
        if args.amend:
            for page, at in pages.items():
                chosen = [today[key] for key in rows if today[key].subset == bool(at)]
                recorded = {s.key: rows[s.key]["set_needed_today"] for s in chosen}
                sets = command_sets(chosen, recorded, lambda s, extra: differs[s.key](s, extra))
                amend_commands(REPO / "results" / page, min((commands[s.key] for s in chosen), key=len),
                               {s.name: recorded[s.key] for s in chosen}, {s.name: sets[s.key] for s in chosen},
                               {"date": prov["date"], "commit": prov["commit"], "command": command + " --amend",
                                "why": "the run folders are gone, so the report could not compare their configs "
                                       "with the recipe's; the code of the commits that made them rebuilt those "
                                       "configs (`recorded_settings.json` beside this page), and the options "
                                       "today's code needs to reach them, with every step's digest the same, are "
                                       "set in the commands below. The same configuration is not the same draw: "
                                       "since commit 2abc10a dropout and stage 2's masks are seeded per "
                                       "micro-batch, so rows made before it (at bdcd4f5) repeat exactly only at "
                                       "their commit, and with today's code as another run of their "
                                       "configuration (NOTES.md, item 28)"})


if __name__ == "__main__":
    main()
