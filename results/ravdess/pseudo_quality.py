"""How well the pseudo-labels of each clustered layer follow emotion, on training and validation frames.

    python results/ravdess/pseudo_quality.py --root DIR [--run runs/reproduce-ravdess] [--fold 1]

Reads every pseudo-label directory of one fold of a ``gmptl reproduce`` run
(``steps/fold<k>/pseudo-*``) and writes ``pseudo_quality.json`` beside this file:
NMI and purity of the k-means labels against the utterance's emotion, per layer,
scale and split. The training frames are the ones k-means was fitted on; the
validation frames (held-out training speakers) were only assigned. At k = 4096 a
validation cluster holds about 6 frames, which makes its purity high by itself:
compare layers at the same k and split.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from gmptl.corpora import load_corpus
from gmptl.provenance import provenance
from gmptl.pseudo_labels import quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the RAVDESS directory the run used")
    parser.add_argument("--run", type=Path, default=Path("runs/reproduce-ravdess"))
    parser.add_argument("--fold", type=int, default=1)
    args = parser.parse_args()
    corpus = load_corpus("ravdess", args.root)
    emotion = {u.id: corpus.labels.index(u.emotion) for u in corpus.utterances}
    layers = {}
    for d in sorted((args.run / "steps" / f"fold{args.fold}").glob("pseudo-*")):
        report = json.loads((d / "report.json").read_text())
        row = {}
        for split in ("train", "valid"):
            ids = (d / f"{split}.ids.txt").read_text().split()
            classes = np.repeat([emotion[i] for i in ids], np.load(d / f"{split}.lengths.npy"))
            for k in report["scales"]:
                q = quality(np.load(d / f"{split}.km{k}.labels.npy"), classes, int(k))
                row[f"{split}/{k}"] = {"nmi": round(q["nmi"], 3), "purity": round(q["purity"], 3)}
        layers[str(report["layer"])] = {"step": d.name, **row}
    out = {"fold": args.fold, "layers": dict(sorted(layers.items(), key=lambda kv: -int(kv[0]))),
           "command": " ".join(["python", *sys.argv]), **provenance()}
    path = Path(__file__).with_name("pseudo_quality.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["layers"], indent=1))


if __name__ == "__main__":
    main()
