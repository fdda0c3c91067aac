"""system=probe makes a model directory: it reproduces the fold's predictions, exports to ONNX, holds no pickle."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import gmptl
from gmptl.__main__ import main
from gmptl.baselines import ABSENT, fit_probe, probe, probe_classifier, probe_scores
from gmptl.config import load_config
from gmptl.corpora import configured_corpus, validation_split
from gmptl.data import AudioSet
from gmptl.encoders import build_encoder
from synth_corpus import make_corpus

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny.yaml"


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), speakers=6, per_class=3)


@pytest.fixture(scope="module")
def two_class_corpus(corpus) -> Path:
    """The same files, neutral and angry only (sklearn's binary case: one coefficient row)."""
    with open(corpus) as f:
        rows = [r for r in csv.DictReader(f) if r["emotion"] in ("neutral", "angry")]
    path = corpus.with_name("two_classes.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def cv_run(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe-cv")
    assert main(["cv", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "system=probe",
                 "--set", "probe.c=[0.1,1.0]", "--out", str(out)]) == 0
    return out


def check_reproduces_predictions(model_dir: Path, run: Path, audio_dir: Path) -> None:
    """The model directory's probabilities on the fold's test files are the softmax of its predictions.jsonl scores."""
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    rec = gmptl.load(model_dir)
    got = list(rec.predict_files([audio_dir / f"{r['id']}.wav" for r in rows], batch_size=7))
    expected = softmax(np.array([r["scores"] for r in rows]) / rec.temperature)  # calibrated as the model is
    probabilities = np.array([[p.probabilities[label] for label in rec.labels] for p in got])
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert [p.label for p in got] == [r["predicted"] for r in rows]
    assert all(p.gender is None for p in got)


def check_no_pickle(model_dir: Path) -> None:
    from safetensors import safe_open

    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:  # parses without pickle
        assert {"mean", "scale", "coef", "intercept"} <= set(f.keys())
    assert (model_dir / "model.safetensors").read_bytes()[:1] != b"\x80"  # no pickle protocol header


@pytest.mark.slow
def test_every_cv_fold_model_reproduces_its_predictions(cv_run, corpus):
    for k in (1, 2):
        fold = cv_run / f"fold{k}"
        result, meta = (json.loads(p.read_text()) for p in (fold / "result.json", fold / "model" / "config.json"))
        assert meta["format"] == "gmptl-model/1" and meta["head"]["classifier"] == "probe"
        assert meta["head"]["layer"] == result["probe"]["layer"]
        assert meta["metrics"]["uar"] == result["uar"]
        assert meta["metrics"]["valid_uar"] == pytest.approx(max(result["probe"]["valid_uar"].values()), abs=0.01)
        # The temperature comes from the validation speakers only, never the fold's test speakers.
        assert meta["calibration"]["speakers"] == result["valid_speakers"]
        assert not set(meta["calibration"]["speakers"]) & set(result["test_speakers"])
        assert result["calibration"]["temperature"] == meta["calibration"]["temperature"]
        check_reproduces_predictions(fold / "model", fold, corpus.parent)
        check_no_pickle(fold / "model")


@pytest.mark.slow
def test_probe_model_exports_to_onnx_equal_to_torch(cv_run, tmp_path):
    pytest.importorskip("onnxruntime")
    model_dir, path = cv_run / "fold1" / "model", tmp_path / "probe.onnx"
    assert main(["export", str(model_dir), "--onnx", str(path)]) == 0
    torch_rec, onnx_rec = gmptl.load(model_dir), gmptl.load(path, backend="onnx")
    assert not onnx_rec.has_gender and onnx_rec.labels == torch_rec.labels
    rng = np.random.default_rng(0)
    for lengths in ([12000], [20000, 9000, 16000, 4000]):  # other batch sizes and lengths than the export's
        waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
        for x, y in zip(torch_rec.predict_waves(waves), onnx_rec.predict_waves(waves)):
            assert x.label == y.label and x.probabilities == pytest.approx(y.probabilities, abs=1e-4)


@pytest.mark.slow
def test_train_makes_a_loadable_probe_model(corpus, tmp_path, capsys):
    out = tmp_path / "train"
    assert main(["train", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "system=probe",
                 "--set", "probe.select=speaker-cv", "--set", "probe.groups=2", "--out", str(out)]) == 0
    assert str(out / "model") in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert "uar" not in result and result["probe"]["select"] == "speaker-cv"
    check_no_pickle(out / "model")
    rec = gmptl.load(out / "model")
    p = rec.predict_file(corpus.parent / "spk00_angry_0.wav")
    assert p.label in rec.labels and sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert rec.meta["protocol"] == "speaker-independent" and "uar" not in rec.meta["metrics"]
    calibration = rec.meta["calibration"]  # speaker-cv: every training speaker held out once
    rows = list(csv.DictReader(open(corpus)))
    assert calibration["n"] == len(rows) and calibration["speakers"] == sorted({r["speaker"] for r in rows})
    assert calibration["fitted_on"] in (None, "held-out predictions of the probe's speaker cross-validation")


@pytest.mark.slow
def test_two_class_probe_trained_on_a_fold_reproduces_its_predictions(two_class_corpus, tmp_path):
    out = tmp_path / "binary"
    assert main(["train", "--config", str(CONFIG), "--set", f"data.root={two_class_corpus}", "--set", "system=probe",
                 "--fold", "1", "--out", str(out)]) == 0
    assert gmptl.load(out / "model").labels == ["angry", "neutral"]
    check_reproduces_predictions(out / "model", out, two_class_corpus.parent)


@pytest.mark.parametrize("present", [[0, 1, 2, 3], [0, 2, 3], [1, 3]])
def test_probe_classifier_equals_scikit_learn(present):
    """Pooling against numpy utterance by utterance; logits against sklearn's decision function and probabilities;
    a class the fit never saw (``present`` of 4) gets no probability."""
    torch.manual_seed(0)
    encoder, rng, layer = build_encoder("random:hubert-tiny").eval(), np.random.default_rng(0), 1
    lengths = rng.integers(4000, 16000, 24)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, :len(w)] = torch.from_numpy(w)
    feats = []
    with torch.no_grad():
        for w in waves:  # one by one: no padding
            h = encoder(torch.from_numpy(w)[None], torch.tensor([len(w)])).hidden_states[layer][0].double().numpy()
            feats.append(np.concatenate([h.mean(0), h.std(0)]))
    x, y = np.array(feats), np.resize(present, 24)
    clf = fit_probe(x, y, seed=0)
    model = probe_classifier(encoder, layer, clf, 4)
    with torch.no_grad():
        out = model(batch, torch.from_numpy(lengths))
    np.testing.assert_allclose(out["pooled"].numpy(), x, rtol=1e-4, atol=1e-5)
    logits = out["emotion"].double().numpy()
    np.testing.assert_allclose(logits, probe_scores(clf, x.astype(np.float32), 4), atol=1e-3)
    probabilities = np.zeros((24, 4))
    probabilities[:, clf.classes_] = clf.predict_proba(x)
    np.testing.assert_allclose(softmax(logits), probabilities, atol=1e-4)
    np.testing.assert_array_equal(logits.argmax(1), clf.predict(x))
    assert out["gender"] is None and (logits[:, [c for c in range(4) if c not in present]] == ABSENT).all()


@pytest.mark.parametrize("select", ["valid", "speaker-cv"])
def test_probe_returns_the_held_out_validation_logits(corpus, select):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from gmptl.baselines import pooled_layers, speaker_groups

    cfg = load_config(CONFIG, [f"data.root={corpus}"])
    corpus_ = configured_corpus(cfg.data)
    train_utts, valid_utts = validation_split(corpus_.utterances, 0.2, seed=0)
    train, valid = AudioSet(train_utts, corpus_.labels), AudioSet(valid_utts, corpus_.labels)
    torch.manual_seed(0)
    encoder = build_encoder("random:hubert-tiny")
    found = probe(encoder, train, valid, None, 2.0, seed=0, select=select, groups=2, cs=[0.1, 1.0])
    assert "scores" not in found and found["model"].layer == found["layer"]
    x = np.concatenate([pooled_layers(encoder, d, 2.0)[:, found["layer"]] for d in (train, valid)])
    y = np.concatenate([train.emotion, valid.emotion])
    speakers = np.array([u.speaker for u in train_utts + valid_utts])
    held = [np.arange(len(y)) >= len(train_utts)] if select == "valid" else \
        [np.isin(speakers, list(g)) for g in speaker_groups(list(speakers), 2)]
    expected = []
    for h in held:
        reference = make_pipeline(StandardScaler(), LogisticRegression(C=found["c"], max_iter=2000, random_state=0))
        expected.append(reference.fit(x[~h], y[~h]).decision_function(x[h]))
    np.testing.assert_allclose(found["valid_scores"], np.concatenate(expected), atol=1e-6)
    np.testing.assert_array_equal(found["valid_labels"], np.concatenate([y[h] for h in held]))
    assert found["valid_scores"].shape == (len(found["valid_labels"]), 4)
    assert len(found["valid_labels"]) == (len(valid_utts) if select == "valid" else len(y))
