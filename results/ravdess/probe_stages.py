"""How much emotion a linear probe finds in the encoder after each stage.

    python results/ravdess/probe_stages.py --root DIR [--run runs/reproduce-ravdess] [--fold 1] \\
        [--users runs/table3-cpu-fold1]
    python results/ravdess/probe_stages.py --root DIR --run runs/sweep-ft-headlr --folds 1,2,3,4,5,6 \\
        --per-layer 0.01 --out results/ravdess/probe_layers.json

For the pretrained encoder and for each finished step checkpoint of a fold
(``RUN/steps/fold<k>/stage*-*/best.safetensors`` with ``done.json``), the encoder
is frozen and probed as the ``frozen-probe`` system probes the pretrained one:
mean and standard deviation of every layer, logistic regression, layer and C
chosen by cross-validation over the fold's 20 training actors. Writes
``probe_stages.json`` beside this file: per encoder, the systems whose results
name that step (searched in RUN and in ``--users``), the chosen layer and C, the
cross-validation UAR per layer, and the UAR on the fold's test actors.

With ``--per-layer C`` nothing is chosen: every layer is probed with that C (0.01,
the value the speaker cross-validation chose for the pretrained encoder in every
fold), fitted on the training and validation actors, and the test UAR of every
layer is written, for every fold of ``--folds``. This compares encoders layer by
layer without the cross-validation, which the fine-tuned encoders inflate.

The fine-tuned encoders were trained on the training actors' labels (stages 1 and
3) or on pseudo-labels made from such an encoder (stage 2), so their
cross-validation scores are inflated; the test actors are the only fair comparison
between encoders here. Nothing is chosen from this: it is a measurement of what
each stage does to the representation.
"""

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

import numpy as np

from gmptl.baselines import fit_probe, pooled_layers, probe
from gmptl.config import load_config
from gmptl.corpora import load_corpus
from gmptl.data import AudioSet
from gmptl.metrics import scores
from gmptl.pipeline import fold_split, new_encoder
from gmptl.provenance import provenance

REPO = Path(__file__).resolve().parents[2]


def users(step: Path, runs: list[Path], fold: int) -> list[str]:
    """The systems (``RUN/<system>``) whose fold result used this very checkpoint. A run on another
    machine may name a step of the same digest (the same config), but its weights stayed there:
    only results that name this path count."""
    found = []
    for run in runs:
        for result in sorted(run.glob(f"*/fold{fold}/result.json")):
            dirs = json.loads(result.read_text()).get("step_dirs", {})
            if any(Path(d).resolve() == step.resolve() for d in dirs.values()):
                found.append(f"{run.name}/{result.parts[-3]}")
    return found


def encoders(cfg, run: Path, k: int):
    """(name, step directory or None, encoder): the pretrained one, then each finished step of fold ``k``."""
    steps = sorted(p.parent for p in (run / "steps" / f"fold{k}").glob("stage*-*/best.safetensors")
                   if (p.parent / "done.json").exists())
    for step in [None, *steps]:
        encoder = new_encoder(cfg)
        if step is not None:
            state = load_file(step / "best.safetensors")
            encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
        yield "pretrained" if step is None else step.name, step, encoder


def per_layer(encoder, train, valid, test, cfg, c: float) -> list[float]:
    """Test UAR of a probe of every layer with one C, fitted on the training and validation actors."""
    x, y = (np.concatenate([pooled_layers(encoder, d, cfg.data.eval_max_seconds) for d in (train, valid)]),
            np.concatenate([train.emotion, valid.emotion]))
    xt = pooled_layers(encoder, test, cfg.data.eval_max_seconds)
    return [round(scores(test.emotion, fit_probe(x[:, i], y, cfg.train.seed, c).predict(xt[:, i]),
                         test.labels)["uar"], 2) for i in range(x.shape[1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the RAVDESS directory the run used")
    parser.add_argument("--run", type=Path, default=Path("runs/reproduce-ravdess"))
    parser.add_argument("--fold", "--folds", dest="folds", default="1", help="one fold or a list: 1,2,3")
    parser.add_argument("--users", type=Path, nargs="*", default=[], help="other run directories using RUN's steps")
    parser.add_argument("--per-layer", type=float, metavar="C", help="probe every layer with this C, choose nothing")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("probe_stages.json"))
    args = parser.parse_args()
    cfg = load_config(REPO / "configs" / "ravdess_whisper_tiny.yaml", [f"data.root={args.root}"])
    corpus = load_corpus("ravdess", args.root)
    record = {"command": " ".join(["python", *sys.argv]), **provenance()}
    if args.per_layer:
        record.update(c=args.per_layer, folds={})
    for k in [int(f) for f in args.folds.split(",")]:
        fold = corpus.fold(k)
        train_utts, valid_utts = fold_split(cfg, fold)
        train, valid, test = (AudioSet(u, corpus.labels, name) for u, name in
                              ((train_utts, "train"), (valid_utts, "valid"), (fold.test, "test")))
        rows = record["folds"].setdefault(str(k), {}) if args.per_layer else record.setdefault("encoders", {})
        for name, step, encoder in encoders(cfg, args.run, k):
            row = {"used_by": [] if step is None else users(step, [args.run, *args.users], k)}
            if args.per_layer:
                row["test_uar_per_layer"] = per_layer(encoder, train, valid, test, cfg, args.per_layer)
            else:
                found = probe(encoder, train, valid, test, cfg.data.eval_max_seconds, cfg.train.seed,
                              select="speaker-cv", cs=[0.001, 0.01, 0.1, 1.0])
                row.update(layer=found["layer"], c=found["c"],
                           cv_uar_per_layer=[round(u, 2) for u in found["valid_uar_per_layer"]],
                           test_uar=round(scores(test.emotion, found["predictions"], corpus.labels)["uar"], 2))
                record["fold"] = k
            rows[name] = row
            print(k, name, row, file=sys.stderr, flush=True)
            args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
