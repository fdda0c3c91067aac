"""How much emotion a linear probe finds in the encoder after each stage.

    python results/ravdess/probe_stages.py --root DIR [--run runs/reproduce-ravdess] [--fold 1] \\
        [--users runs/table3-cpu-fold1]
    python results/ravdess/probe_stages.py --root DIR --run runs/sweep-ft-headlr --folds 1,2,3,4,5,6 \\
        --per-layer 0.01 --out results/ravdess/probe_layers.json
    python results/ravdess/probe_stages.py --root DIR --run runs/sweep-ft-headlr --folds 1,2,3,4,5,6 \\
        --heads 0.01 --out results/ravdess/probe_heads.json

For the pretrained encoder and for each finished step checkpoint of a fold
(``RUN/steps/fold<k>/stage*-*/best.safetensors`` with ``done.json``), the encoder
is frozen and probed as the ``frozen-probe`` system probes the pretrained one:
mean and standard deviation of every layer, logistic regression, layer and C
chosen by cross-validation over the fold's 20 training actors. Writes
``probe_stages.json`` beside this file: per encoder, the systems whose results
name that step (searched in RUN and in ``--users``), the chosen layer and C, the
cross-validation UAR per layer, and the UAR on the fold's test actors.

With ``--heads C`` each fine-tuned classifier (the stage-1 and stage-3 steps) is
scored twice on the test actors: by its own head, and by a probe with that C of
its pooled BiLSTM output (the input of its LinearP), fitted on the training and
validation actors. Together with ``--per-layer`` this says whether a weak test
score comes from the encoder, the BiLSTM or the classifier on top.

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

import numpy as np
import torch
from safetensors.torch import load_file

from gmptl.baselines import fit_probe, pooled_layers, probe
from gmptl.config import load_config
from gmptl.corpora import load_corpus
from gmptl.data import AudioSet, epoch_batches
from gmptl.metrics import scores
from gmptl.pipeline import classifier, fold_split, new_encoder
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


@torch.no_grad()
def head_outputs(model, data: AudioSet, max_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's emotion scores (N, C) and pooled BiLSTM outputs (N, 2 * hidden), in ``data`` order."""
    model.eval()
    emotion, pooled = np.zeros((len(data), len(data.labels))), np.zeros((len(data), model.pool.output_size))
    for batch in epoch_batches(data, 16, max_seconds, rng=None):
        out = model(batch.waves, batch.lengths)
        emotion[batch.index.numpy()], pooled[batch.index.numpy()] = out["emotion"].numpy(), out["pooled"].numpy()
    return emotion, pooled


def heads(cfg, step: Path, encoder, train, valid, test, c: float) -> dict | None:
    """Test UAR of a step's own head (on ``encoder``, already loaded from the step) and of a probe of its
    pooled output; None for stage 2 (no classifier)."""
    state = load_file(step / "best.safetensors")
    if not any(k.startswith("emotion.") for k in state):
        return None
    kind = "amsoftmax" if "amsoftmax.weight" in state else "linear"
    model = classifier(cfg, encoder, len(test.labels), gender=any(k.startswith("gender.") for k in state), kind=kind)
    model.load_state_dict(state)  # the heads; the encoder's weights are the ones it holds
    (_, x_train), (_, x_valid), (own, x_test) = (head_outputs(model, d, cfg.data.eval_max_seconds)
                                                 for d in (train, valid, test))
    fitted = fit_probe(np.concatenate([x_train, x_valid]), np.concatenate([train.emotion, valid.emotion]),
                       cfg.train.seed, c)
    uar = lambda pred: round(scores(test.emotion, pred, test.labels)["uar"], 2)  # noqa: E731
    return {"classifier": kind, "own_head_test_uar": uar(own.argmax(1)), "pooled_probe_test_uar": uar(fitted.predict(x_test))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the RAVDESS directory the run used")
    parser.add_argument("--run", type=Path, default=Path("runs/reproduce-ravdess"))
    parser.add_argument("--fold", "--folds", dest="folds", default="1", help="one fold or a list: 1,2,3")
    parser.add_argument("--users", type=Path, nargs="*", default=[], help="other run directories using RUN's steps")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--per-layer", type=float, metavar="C", help="probe every layer with this C, choose nothing")
    mode.add_argument("--heads", type=float, metavar="C", help="each classifier's own head against a probe of its pooling")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("probe_stages.json"))
    args = parser.parse_args()
    cfg = load_config(REPO / "configs" / "ravdess_whisper_tiny.yaml", [f"data.root={args.root}"])
    corpus = load_corpus("ravdess", args.root)
    record = {"command": " ".join(["python", *sys.argv]), **provenance()}
    fixed = args.per_layer or args.heads
    if fixed:
        record.update(c=fixed, folds={})
    for k in [int(f) for f in args.folds.split(",")]:
        fold = corpus.fold(k)
        train_utts, valid_utts = fold_split(cfg, fold)
        train, valid, test = (AudioSet(u, corpus.labels, name) for u, name in
                              ((train_utts, "train"), (valid_utts, "valid"), (fold.test, "test")))
        rows = record["folds"].setdefault(str(k), {}) if fixed else record.setdefault("encoders", {})
        for name, step, encoder in encoders(cfg, args.run, k):
            row = {"used_by": [] if step is None else users(step, [args.run, *args.users], k)}
            if args.heads:
                if step is None or (found := heads(cfg, step, encoder, train, valid, test, args.heads)) is None:
                    continue
                row.update(found)
            elif args.per_layer:
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
