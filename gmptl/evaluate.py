"""``gmptl evaluate``: a trained model scored on another corpus (cross-corpus), its labels matched by name."""

import json
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from .corpora import label_map, load_corpus
from .errors import AudioError, ConfigError
from .metrics import scores
from .provenance import provenance
from .utils import atomic_json


def matched_labels(model: list[str], corpus: list[str], renames: dict[str, str]) -> dict[str, str]:
    """Corpus label -> model label: the same name, or the one ``renames`` gives; the others are left out."""
    for source, target in renames.items():
        if source not in corpus or target not in model:
            raise ConfigError(f"--map {source}={target}: {source!r} must be a corpus label ({', '.join(corpus)}) "
                              f"and {target!r} a model label ({', '.join(model)})")
    match = {label: renames.get(label, label) for label in corpus if renames.get(label, label) in model}
    if not match:
        raise ConfigError(f"no corpus label ({', '.join(corpus)}) is a model label ({', '.join(model)}): give --map")
    return match


def evaluate(model_dir, corpus_name: str, root, out: Path, fold: int | None = None, renames: list[str] = (),
             batch_size: int = 16) -> dict:
    """Score ``model_dir`` on a corpus (``fold``: that fold's test speakers only); writes ``out/result.json``, in
    the form of a ``gmptl cv`` fold's, and ``out/predictions.jsonl``; returns the result."""
    from .inference import load

    recognizer = load(model_dir)
    corpus = load_corpus(corpus_name, root, speaker_dependent=True)  # no training here: any speakers will do
    utterances = corpus.fold(fold).test if fold is not None else corpus.utterances
    match = matched_labels(recognizer.labels, corpus.labels, label_map(list(renames)))
    kept = [u for u in utterances if u.emotion in match]
    rows, failed = [], []
    results = recognizer.predict_files([u.path for u in kept], batch_size)
    for u, p in zip(kept, tqdm(results, total=len(kept), desc="evaluate", unit="file", leave=False, disable=None)):
        if isinstance(p, AudioError):
            failed.append(str(p))
        else:
            rows.append({"id": u.id, "speaker": u.speaker, "emotion": match[u.emotion], "predicted": p.label,
                         "scores": [p.probabilities[label] for label in recognizer.labels]})
    index = {label: i for i, label in enumerate(recognizer.labels)}
    result = {"fold": fold, "test_speakers": sorted({u.speaker for u in kept}),
              **scores([index[r["emotion"]] for r in rows], [index[r["predicted"]] for r in rows], recognizer.labels),
              "corpus": corpus.name, "root": corpus.root, "model": str(model_dir), "map": match,
              "left_out": dict(Counter(u.emotion for u in utterances if u.emotion not in match)),
              "failed_files": failed, "provenance": provenance()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    atomic_json(result, out / "result.json")
    return result
