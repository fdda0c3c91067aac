"""The augmentation comparison record (results/ravdess/experiments/finetune-ce_augment_vs_none_*) from the two
run directories of its commands, on the folds both arms finished:

    python results/ravdess/augment_record.py RUNS   # RUNS/base, RUNS/augmented
"""
import json, subprocess, sys
from pathlib import Path
runs = Path(sys.argv[1])
repo = Path(__file__).resolve().parents[2]
folds = sorted(int(p.parent.name[4:]) for p in (runs / "base").glob("fold*/result.json")
               if (runs / "augmented" / p.parent.name / "result.json").exists())
res = {arm: {k: json.loads((runs / arm / f"fold{k}" / "result.json").read_text()) for k in folds} for arm in ("base", "augmented")}
probe = {f["fold"]: f["uar"] for f in json.loads((repo / "results/ravdess/summary.json").read_text())["systems"]["frozen-probe"]["folds"]}
py = str(repo / ".venv/bin/python")
compare = json.loads(subprocess.run([py, "-m", "gmptl", "compare", str(runs / "augmented"), str(runs / "base"), "--json"],
                                    capture_output=True, text=True, check=True, cwd=repo).stdout)
mean = lambda xs: round(sum(xs) / len(xs), 2)
common = "--set data.root=DIR --set system=finetune --set stage1.alpha=1.0 --set stage1.epochs=4"
out = {
    "what": "RAVDESS 8 classes, finetune-ce (stage 1 only, CE) with and without augmentation, same seed (0) and "
            "budget (stage 1 at most 4 epochs; the shipped config allows 20, patience 5), shipped train.average=5; "
            "the frozen probe beside it from results/ravdess/summary.json (deterministic: NOTES)",
    "commands": {"base": f"gmptl cv --config configs/ravdess_whisper_tiny.yaml {common} --folds K --out RUNS/base",
                 "augmented": f"gmptl cv --config configs/ravdess_whisper_tiny.yaml {common} "
                              "--set 'augment.speed=[0.9,1.0,1.1]' --set augment.time_mask_prob=0.05 --folds K --out RUNS/augmented",
                 "compare": "gmptl compare RUNS/augmented RUNS/base --json"},
    "commit": res["base"][folds[0]]["provenance"]["commit"],
    "machine": res["base"][folds[0]]["provenance"]["machine"] + "; both arms at once, 1 thread each",
    "folds": folds,
    "uar": {"base": {k: round(r["uar"], 2) for k, r in res["base"].items()},
            "augmented": {k: round(r["uar"], 2) for k, r in res["augmented"].items()},
            "frozen_probe": {k: probe[k] for k in folds}},
    "uar_mean": {"base": mean([r["uar"] for r in res["base"].values()]),
                 "augmented": mean([r["uar"] for r in res["augmented"].values()]),
                 "frozen_probe": mean([probe[k] for k in folds])},
    "war_mean": {"base": mean([r["war"] for r in res["base"].values()]),
                 "augmented": mean([r["war"] for r in res["augmented"].values()])},
    "train_loss_by_epoch": {arm: {k: [round(json.loads(l)["train_loss"], 4) for l in
                                      (Path(r["step_dirs"]["stage1"]) / "log.jsonl").read_text().splitlines()]
                                  for k, r in res[arm].items()} for arm in res},
    "paired_augmented_minus_base": {k: compare[k] for k in ("uar_diff", "uar_ci", "p_uar", "war_diff", "war_ci", "p_war")},
    "compute_s": {arm: round(sum(r["compute_s"] for r in res[arm].values()), 1) for arm in res},
}
dest = repo / "results/ravdess/experiments"
(dest / "finetune-ce_augment_vs_none_stage1-4-epochs_cpu.json").write_text(json.dumps(out, indent=2) + "\n")
(dest / "finetune-ce_augment_vs_none_stage1-4-epochs_cpu.compare.json").write_text(json.dumps(compare, indent=2) + "\n")
print(json.dumps({k: out[k] for k in ("folds", "uar", "uar_mean", "paired_augmented_minus_base")}, indent=1))
