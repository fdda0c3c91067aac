"""How far `--precision bf16` moves a trained model's predictions from fp32, on its fold's test actors.

    python results/ravdess/bf16_agreement.py --root DIR --fold 1 MODEL_DIR [MODEL_DIR ...]

Each model directory must come from fold ``--fold`` (its test actors were never
trained on). Writes ``bf16_agreement.json`` beside this file: per model, the
largest change of any class probability, the mean change of the top class's
probability, and the share of files whose label stays the same.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import gmptl
from gmptl.audio import load_audio
from gmptl.corpora import load_corpus
from gmptl.provenance import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the RAVDESS directory")
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("models", nargs="+", type=Path)
    args = parser.parse_args()
    test = load_corpus("ravdess", args.root).fold(args.fold).test
    waves = [load_audio(u.path) for u in test]
    rows = {}
    for model in args.models:
        fp32 = gmptl.load(model).predict_waves(waves)
        bf16 = gmptl.load(model, precision="bf16").predict_waves(waves)
        p32 = np.array([[p.probabilities[k] for k in p.probabilities] for p in fp32])
        p16 = np.array([[p.probabilities[k] for k in p.probabilities] for p in bf16])
        top = p32.argmax(1)
        rows[str(model)] = {"classifier": json.loads((model / "config.json").read_text())["head"]["classifier"],
                            "files": len(test), "max_abs_prob_diff": round(float(np.abs(p16 - p32).max()), 4),
                            "mean_top_prob_diff": round(float(np.abs(p16 - p32)[np.arange(len(top)), top].mean()), 4),
                            "label_agreement": round(float((p16.argmax(1) == top).mean()), 4)}
        print(json.dumps({str(model): rows[str(model)]}), flush=True)
    record = {"command": " ".join(["python", *sys.argv]), "fold": args.fold, "models": rows, **provenance()}
    (Path(__file__).parent / "bf16_agreement.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
