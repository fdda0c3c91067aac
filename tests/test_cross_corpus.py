"""Beyond one corpus: training on the union of two corpora in two layouts, and scoring a model on another."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import accuracy_score, recall_score

from gmptl.__main__ import main
from gmptl.config import load_config
from gmptl.corpora import configured_corpus
from synth_corpus import make_corpus, voice

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
# RAVDESS codes written, with the synthetic style that speaks each
STYLES = {1: "neutral", 2: "neutral", 3: "happy", 4: "sad", 5: "angry", 6: "sad"}


def ravdess_voices(root: Path, actors=range(1, 9)) -> Path:
    """A RAVDESS-layout tree (``Actor_XX/03-01-EE-01-RR-01-XX.wav``) of synthetic voices, two takes per emotion."""
    rng = np.random.default_rng(1)
    for a in actors:
        for code, style in STYLES.items():
            for take in (1, 2):
                path = root / f"Actor_{a:02d}" / f"03-01-{code:02d}-01-0{take}-01-{a:02d}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, voice(style, a % 2 == 0, rng.uniform(0.6, 1.2), rng), 16000)
    return root


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    return ravdess_voices(root / "ravdess"), make_corpus(root / "manifest", speakers=4, per_class=3)


def corpora_override(ravdess: Path, manifest: Path) -> str:
    return f"data.corpora=[{{corpus: ravdess, root: '{ravdess}', map: [calm=neutral]}}, {{corpus: manifest, root: '{manifest}'}}]"


def test_the_union_keeps_speakers_apart_and_folds_speaker_independent(two_corpora):
    ravdess, manifest = two_corpora
    corpus = configured_corpus(load_config(TINY, [corpora_override(ravdess, manifest)]).data)
    assert corpus.name == "ravdess+manifest" and corpus.labels == ["angry", "fearful", "happy", "neutral", "sad"]
    assert sum(u.id.startswith("ravdess/") for u in corpus.utterances) == 8 * 6 * 2
    assert not any(u.emotion == "calm" for u in corpus.utterances), "calm renamed neutral"
    folds = corpus.folds()
    assert [sorted({s.split("/")[0] for s in f.test_speakers}) for f in folds] == [["manifest"]] * 2 + [["ravdess"]] * 2
    for f in folds:
        assert not {u.speaker for u in f.train} & set(f.test_speakers)
        assert len(f.train) + len(f.test) == len(corpus.utterances)
    four = configured_corpus(load_config(TINY, [corpora_override(ravdess, manifest),
                                                "data.classes=[neutral,happy,sad,angry]"]).data)
    assert four.labels == ["neutral", "happy", "sad", "angry"] and four.dropped == {"ravdess/fearful": 16}


def test_cv_and_train_run_on_the_union(two_corpora, tmp_path):
    ravdess, manifest = two_corpora
    sets = ["--set", corpora_override(ravdess, manifest), "--set", "system=finetune", "--set", "stage1.epochs=1"]
    assert main(["cv", "--config", str(TINY), *sets, "--folds", "3", "--out", str(tmp_path / "cv")]) == 0
    result = json.loads((tmp_path / "cv" / "fold3" / "result.json").read_text())
    assert result["labels"] == ["angry", "fearful", "happy", "neutral", "sad"]
    assert all(s.startswith("ravdess/Actor_0") for s in result["test_speakers"])
    with pytest.raises(SystemExit):  # one line, not a traceback: both kinds of data source
        main(["cv", "--config", str(TINY), *sets, "--set", f"data.root={manifest}", "--out", str(tmp_path / "x")])


def test_evaluate_scores_a_model_on_another_corpus_with_labels_matched_by_name(two_corpora, tmp_path, capsys):
    ravdess, manifest = two_corpora
    assert main(["train", "--config", str(TINY), "--set", f"data.root={manifest}", "--set", "system=finetune",
                 "--set", "stage1.epochs=1", "--out", str(tmp_path / "train")]) == 0
    model, out = tmp_path / "train" / "model", tmp_path / "eval"
    assert main(["evaluate", str(model), "--corpus", "ravdess", "--root", str(ravdess), "--map", "calm=neutral",
                 "--out", str(out)]) == 0
    assert "calm->neutral" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert result["n"] == len(rows) == 8 * 5 * 2 and result["left_out"] == {"fearful": 16}
    assert result["map"] == {"neutral": "neutral", "calm": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"}
    y, p = [r["emotion"] for r in rows], [r["predicted"] for r in rows]
    assert result["war"] == pytest.approx(100 * accuracy_score(y, p))
    assert result["uar"] == pytest.approx(100 * recall_score(y, p, labels=sorted(set(y)), average="macro"))
    assert main(["evaluate", str(model), "--corpus", "ravdess", "--root", str(ravdess), "--fold", "2",
                 "--out", str(tmp_path / "fold2")]) == 0
    fold2 = json.loads((tmp_path / "fold2" / "result.json").read_text())
    assert fold2["test_speakers"] == [f"Actor_0{a}" for a in (5, 6, 7, 8)] and fold2["n"] == 4 * 4 * 2, "calm unmapped"
    with pytest.raises(SystemExit):
        main(["evaluate", str(model), "--corpus", "ravdess", "--root", str(ravdess), "--map", "bored=neutral",
              "--out", str(tmp_path / "bad")])
