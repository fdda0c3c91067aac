"""An augmentation comparison record (results/ravdess/experiments/finetune-ce_augment_vs_none_*) from the two
run directories of its commands, on the folds both arms finished; budget, seed and precision are read from
the runs' config.json:

    python results/ravdess/augment_record.py RUNS   # RUNS/base, RUNS/augmented
"""
import json, subprocess, sys
from pathlib import Path
runs = Path(sys.argv[1])
repo = Path(__file__).resolve().parents[2]
folds = sorted(int(p.parent.name[4:]) for p in (runs / "base").glob("fold*/result.json")
               if (runs / "augmented" / p.parent.name / "result.json").exists())
res = {arm: {k: json.loads((runs / arm / f"fold{k}" / "result.json").read_text()) for k in folds} for arm in ("base", "augmented")}
cfg = json.loads((runs / "augmented" / "config.json").read_text())
epochs, seed, precision, aug = cfg["stage1"]["epochs"], cfg["train"]["seed"], cfg["train"]["precision"], cfg["augment"]
probe = {f["fold"]: f["uar"] for f in json.loads((repo / "results/ravdess/summary.json").read_text())["systems"]["frozen-probe"]["folds"]}
py = str(repo / ".venv/bin/python")
compare = json.loads(subprocess.run([py, "-m", "gmptl", "compare", str(runs / "augmented"), str(runs / "base"), "--json"],
                                    capture_output=True, text=True, check=True, cwd=repo).stdout)
mean = lambda xs: round(sum(xs) / len(xs), 2)
common = (f"--set data.root=DIR --set system=finetune --set stage1.alpha=1.0 --set stage1.epochs={epochs}"
          + (f" --set train.seed={seed}" if seed else "") + (f" --set train.precision={precision}" if precision != "fp32" else ""))
out = {
    "what": f"RAVDESS 8 classes, finetune-ce (stage 1 only, CE) with and without augmentation, same seed ({seed}), "
            f"precision ({precision}) and budget (stage 1 at most {epochs} epochs; the shipped config allows 20, patience 5), "
            "shipped train.average=5; the frozen probe beside it from results/ravdess/summary.json (deterministic: NOTES)",
    "commands": {"base": f"gmptl cv --config configs/ravdess_whisper_tiny.yaml {common} --folds K --out RUNS/base",
                 "augmented": f"gmptl cv --config configs/ravdess_whisper_tiny.yaml {common} --set 'augment.speed={aug['speed']}' "
                              f"--set augment.time_mask_prob={aug['time_mask_prob']} --folds K --out RUNS/augmented",
                 "compare": "gmptl compare RUNS/augmented RUNS/base --json",
                 "record": "python results/ravdess/augment_record.py RUNS"},
    "commit": res["base"][folds[0]]["provenance"]["commit"],
    "machine": res["base"][folds[0]]["provenance"]["machine"] + "; both arms at once, 1 thread each",
    "date": res["base"][folds[0]]["provenance"]["date"],
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
name = f"finetune-ce_augment_vs_none_stage1-{epochs}-epochs" + (f"_seed-{seed}" if seed else "") + "_cpu" + ("-bf16" if precision == "bf16" else "")
dest = repo / "results/ravdess/experiments"
(dest / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
(dest / f"{name}.compare.json").write_text(json.dumps(compare, indent=2) + "\n")
print(name, json.dumps({k: out[k] for k in ("folds", "uar", "uar_mean", "paired_augmented_minus_base")}, indent=1))
