"""Cross-fitted validation beside the test, fold by fold, for a run trained with
``train.crossfit=true`` and ``train.average=K``.

    python results/ravdess/crossfit_runs.py --root DIR --run runs/crossfit-cpu/train.average=5 \\
        --best-out runs/crossfit-cpu/best-epoch --out results/ravdess/experiments/NAME.json

For each finished fold of RUN, the last classification stage's figures (stage 3,
or stage 1 for plain fine-tuning): its validation UAR as recorded (the best
epoch's, a maximum over epochs, and the averaged weights'), its cross-fitted
validation UAR (each validation speaker predicted by the epoch, or the mean of K
epochs, that the other validation speakers rank best: ``gmptl.averaging.crossfit``),
and the test UAR of the averaged weights (the run's result) and of the best
epoch's own weights, which ``top/`` keeps. The latter are scored here on the
fold's test actors, their predictions written to ``--best-out`` in a run's layout
so that ``gmptl compare RUN BEST_OUT`` pairs the two. On a CPU training is
deterministic, so those are the weights a ``train.average=1`` run of the same
config hands on (for stage 3 of ``gmp-tl`` only the last stage differs: stages 1
and 2 were averaged). Nothing is chosen here.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from gmptl.config import config_from_dict
from gmptl.corpora import load_corpus
from gmptl.data import AudioSet
from gmptl.pipeline import classifier, final_stage, new_encoder, predict, write_predictions
from gmptl.provenance import provenance
from gmptl.checkpoints import CheckpointStore


def best_epoch_test(cfg, step: Path, epoch: int, test: AudioSet, out: Path) -> dict:
    """Test scores of the weights of ``epoch`` kept in ``step/top/``; predictions in ``out``."""
    state = load_file(str(CheckpointStore(step).top_file(epoch)))
    kind = "amsoftmax" if "amsoftmax.weight" in state else "linear"
    model = classifier(cfg, new_encoder(cfg), len(test.labels), gender=any(k.startswith("gender.") for k in state),
                       kind=kind)
    model.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        result = write_predictions(test, predict(model, test, cfg.data.eval_max_seconds), out)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the corpus directory the run used")
    parser.add_argument("--run", type=Path, required=True, help="a run (or sweep config) directory with fold*/")
    parser.add_argument("--best-out", type=Path, required=True, help="where the best epochs' test predictions go")
    parser.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    args = parser.parse_args()

    cfg = config_from_dict(json.loads((args.run / "config.json").read_text()))
    cfg.data.root = args.root
    corpus = load_corpus(cfg.data.corpus, args.root, classes=cfg.data.classes)
    folds = []
    for path in sorted(args.run.glob("fold*/result.json")):
        result = json.loads(path.read_text())
        name = final_stage(result["stages"])
        stage, k = result["stages"][name], result["fold"]
        if "crossfit" not in stage or "average" not in stage:
            raise SystemExit(f"{path}: {name} has no crossfit or average figures (train.crossfit, train.average)")
        best_out = args.best_out / f"fold{k}"
        done = best_out / "result.json"
        if done.exists():
            best = json.loads(done.read_text())
        else:
            test = AudioSet(corpus.fold(k).test, corpus.labels, "test")
            best = best_epoch_test(cfg, Path(result["step_dirs"][name]), stage["best_epoch"], test, best_out)
        folds.append({"fold": k, "stage": name, "best_epoch": stage["best_epoch"],
                      "averaged_epochs": stage["average"]["epochs"],
                      "valid_uar_best_epoch": stage["best_valid"]["valid_uar"],
                      "valid_uar_averaged": stage["average"]["valid"]["valid_uar"],
                      "crossfit_uar_best_epoch": stage["crossfit"]["best_uar"],
                      "crossfit_uar_averaged": stage["crossfit"]["average_uar"],
                      "crossfit_speakers": stage["crossfit"]["speakers"],
                      "test_uar_best_epoch": best["uar"], "test_uar_averaged": result["uar"],
                      "test_war_best_epoch": best["war"], "test_war_averaged": result["war"]})
        print(f"fold {k}: crossfit best epoch {folds[-1]['crossfit_uar_best_epoch']:.2f}, averaged "
              f"{folds[-1]['crossfit_uar_averaged']:.2f}; test {best['uar']:.2f}, {result['uar']:.2f}")
    if not folds:
        raise SystemExit(f"{args.run}: no finished fold (fold*/result.json)")
    figures = [k for k in folds[0] if k.startswith(("valid_", "crossfit_uar", "test_"))]
    means = {f"{k}_mean": float(np.mean([f[k] for f in folds])) for k in figures}
    record = {"run": str(args.run), "best_out": str(args.best_out), "folds": folds, **means,
              "command": "python results/ravdess/crossfit_runs.py --root DIR --run "
                         f"{args.run} --best-out {args.best_out} --out {args.out}",
              **provenance()}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(means, indent=2))


if __name__ == "__main__":
    main()
