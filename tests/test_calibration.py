"""Temperature scaling: the fit against scipy, ECE against a plain loop, a fold's record fitted on its validation
speakers, and the temperature in every probability path (torch, ONNX, predict, timeline, serve)."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax

import gmptl
from gmptl.__main__ import main
from gmptl.calibration import calibrate, ece, fit_temperature, nll, pool_bins, reliability, softmax
from gmptl.checkpoints import atomic_save
from gmptl.cv import CALIBRATION, calibration_summary, format_table
from gmptl.encoders import build_encoder
from gmptl.errors import GmptlError
from gmptl.model import UtteranceClassifier
from gmptl.modeldir import save_model_dir
from synth_corpus import make_corpus, voice

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
LABELS = ["neutral", "happy", "sad", "angry"]


def scores_and_labels(n: int, sharpness: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose softmax is right 60 % of the time, ``sharpness`` times too sure of itself."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    z = rng.standard_normal((n, 4))
    right = rng.random(n) < 0.6
    z[np.arange(n), np.where(right, y, (y + 1) % 4)] += 1.5
    return sharpness * z, y


def reference_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """scipy's minimiser of the NLL over T itself (Nelder-Mead from T = 1, no log, no bounds)."""
    def loss(t):
        return -log_softmax(z / t[0], axis=1)[np.arange(len(y)), y].mean() if t[0] > 0 else np.inf
    return float(minimize(loss, [1.0], method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-12}).x[0])


@pytest.mark.parametrize("sharpness", [4.0, 0.3])  # over-confident (T > 1) and under-confident (T < 1)
def test_temperature_is_scipys_nll_minimiser_and_lowers_the_nll(sharpness):
    z, y = scores_and_labels(600, sharpness)
    T = fit_temperature(z, y)
    assert T == pytest.approx(reference_temperature(z, y), rel=1e-3)
    assert (T > 1.5) if sharpness > 1 else (T < 0.7)
    assert nll(softmax(z, T), y) < nll(softmax(z), y) - 0.01
    assert fit_temperature(z, y) == T, "deterministic"


def plain_ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[float, list[int]]:
    total, counts = 0.0, []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i in range(len(y)) if lo < probs[i].max() <= hi or (b == 0 and probs[i].max() == 0)]
        counts.append(len(members))
        if members:
            acc = sum(int(np.argmax(probs[i]) == y[i]) for i in members) / len(members)
            conf = sum(probs[i].max() for i in members) / len(members)
            total += len(members) / len(y) * abs(acc - conf)
    return total, counts


def test_ece_and_reliability_bins_equal_a_plain_loop():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(5, 0.4), 500)
    y = rng.integers(0, 5, 500)
    expected, counts = plain_ece(probs, y)
    assert ece(probs, y) == pytest.approx(expected, abs=1e-12)
    bins = reliability(probs, y)
    assert bins["count"] == counts and len(bins["confidence"]) == 15
    for b, expect in [(7, plain_ece(probs, y, 7)[0]), (1, abs((probs.argmax(1) == y).mean() - probs.max(1).mean()))]:
        assert ece(probs, y, bins=b) == pytest.approx(expect, abs=1e-12)
    pooled = pool_bins([reliability(probs[:200], y[:200]), reliability(probs[200:], y[200:])])
    assert pooled["count"] == counts
    assert np.allclose(pooled["accuracy"], bins["accuracy"]) and np.allclose(pooled["confidence"], bins["confidence"])
    assert nll(probs, y) == pytest.approx(-np.mean(np.log(probs[np.arange(500), y])))


def test_calibrate_records_and_refuses_to_fit_on_a_handful():
    z, y = scores_and_labels(300, 4.0)
    record, test = calibrate(z[:200], y[:200], z[200:], y[200:], speakers={"b", "a"})
    assert record["temperature"] == fit_temperature(z[:200], y[:200]) and record["speakers"] == ["a", "b"]
    assert record["n"] == 200 and record["nll_after"] < record["nll_before"]
    assert record["ece_after"] < record["ece_before"]
    assert test["n"] == 100 and test["nll_before"] == pytest.approx(nll(softmax(z[200:]), y[200:]))
    assert test["nll_after"] == pytest.approx(nll(softmax(z[200:], record["temperature"]), y[200:]))
    assert test["ece_after"] == pytest.approx(ece(softmax(z[200:], record["temperature"]), y[200:]))
    assert sum(test["reliability_before"]["count"]) == 100
    small, test = calibrate(z[:5], y[:5], z[5:9], y[5:9])
    assert small["temperature"] == 1.0 and "5 validation" in small["reason"] and test["reason"] == small["reason"]
    assert test["nll_after"] == test["nll_before"]
    assert calibrate(z[:0], y[:0])[0]["temperature"] == 1.0 and calibrate(z, y)[1] is None
    with pytest.raises(ValueError, match="test scores must be"):
        calibrate(z, y, z[:5], y)


def test_fold_summary_skips_folds_without_a_record():
    z, y = scores_and_labels(300, 4.0)
    _, test = calibrate(z[:200], y[:200], z[200:], y[200:])
    base = {"war": 50.0, "uar": 50.0, "f1": 50.0, "n": 100}
    results = [{"fold": 1, **base, "calibration": test}, {"fold": 2, **base}]
    c = calibration_summary(results)
    assert [f["fold"] for f in c["folds"]] == [1] and c["ece_after_mean"] == test["ece_after"]
    assert c["reliability_after"]["count"] == test["reliability_after"]["count"]
    assert calibration_summary([{"fold": 2, **base}]) is None
    table = format_table({"folds": [{"fold": 1, **base}], "war_mean": 1, "uar_mean": 1, "f1_mean": 1, "war_std": 0,
                          "uar_std": 0, "f1_std": 0, "calibration": c})
    assert "test calibration" in table and f"{100 * test['ece_before']:10.2f}" in table.splitlines()[-1]


@pytest.mark.slow
def test_a_fold_calibrates_on_its_validation_speakers(tmp_path, capsys):
    from gmptl.config import load_config
    from gmptl.corpora import configured_corpus
    from gmptl.pipeline import fold_split

    manifest, fold_run = make_corpus(tmp_path / "corpus", speakers=8, per_class=3), tmp_path / "run"
    sets = [f"data.root={manifest}", "system=finetune", "stage1.epochs=1", "data.valid_fraction=0.5"]
    assert main(["cv", "--config", str(CONFIG), *(w for s in sets for w in ("--set", s)), "--folds", "1",
                 "--out", str(fold_run)]) == 0
    assert "test calibration" in capsys.readouterr().out
    cfg = load_config(CONFIG, sets)
    corpus = configured_corpus(cfg.data)
    summary = json.loads((fold_run / "summary.json").read_text())
    k = 1
    result = json.loads((fold_run / f"fold{k}" / "result.json").read_text())
    record = json.loads((fold_run / f"fold{k}" / "model" / "config.json").read_text())["calibration"]
    _, valid = fold_split(cfg, corpus.fold(k))
    assert record["speakers"] == sorted({u.speaker for u in valid}) == result["valid_speakers"]
    assert not set(record["speakers"]) & set(result["test_speakers"]) and record["n"] == len(valid) == 24
    assert record["fitted_on"] == "validation speakers" and record["temperature"] != 1.0
    # Refit from the model directory's raw probabilities of those utterances: the same T.
    raw = gmptl.load(fold_run / f"fold{k}" / "model", calibrate=False)
    probs, _ = raw.probabilities([gmptl.audio.load_audio(u.path) for u in valid])
    y = np.array([raw.labels.index(u.emotion) for u in valid])
    assert record["temperature"] == pytest.approx(reference_temperature(np.log(probs), y), rel=2e-3)
    # The test record: NLL of the written test scores before and after T.
    rows = [json.loads(line) for line in (fold_run / f"fold{k}" / "predictions.jsonl").read_text().splitlines()]
    z, y = np.array([r["scores"] for r in rows]), np.array([raw.labels.index(r["emotion"]) for r in rows])
    c = result["calibration"]
    assert c["temperature"] == record["temperature"] and c["n"] == len(rows) == sum(c["reliability_after"]["count"])
    assert c["nll_before"] == pytest.approx(nll(softmax(z), y), abs=1e-4)
    assert c["nll_after"] == pytest.approx(nll(softmax(z, c["temperature"]), y), abs=1e-4)
    assert summary["calibration"]["folds"] == [{"fold": 1, **{key: c[key] for key in CALIBRATION}}]
    assert summary["calibration"]["nll_after_mean"] == c["nll_after"]
    assert (fold_run / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def model_with_temperature(tmp: Path, temperature: float | None) -> Path:
    """A tiny AM-Softmax model directory (scale 8: probabilities far from uniform, none rounded to 0), calibrated
    or not."""
    torch.manual_seed(0)
    model = UtteranceClassifier(build_encoder("random:hubert-tiny"), 4, -1, classifier="amsoftmax",
                                lstm_hidden=16, proj_hidden=16, embed_size=8)
    weights = tmp / "w.safetensors"
    atomic_save(model.state_dict(), weights)
    extra = {"config": {"stage3": {"scale": 8.0}}}
    if temperature is not None:
        extra["calibration"] = {"temperature": temperature, "fitted_on": "validation speakers"}
    return save_model_dir(tmp / f"model-{temperature}", model, LABELS, weights, extra)


def waves(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [voice(e, i % 2 == 0, 0.8 + 0.2 * i, rng) for i, e in enumerate(LABELS[:n])]


def log_ratios(p: np.ndarray) -> np.ndarray:
    return np.log(p[:, 1:]) - np.log(p[:, :1])


def test_load_divides_the_scores_by_the_temperature(tmp_path):
    model_dir = model_with_temperature(tmp_path, 2.5)
    cal, raw = gmptl.load(model_dir), gmptl.load(model_dir, calibrate=False)
    assert cal.temperature == 2.5 and raw.temperature == 1.0
    p_cal, p_raw = cal.probabilities(waves())[0], raw.probabilities(waves())[0]
    assert np.abs(log_ratios(p_raw)).max() > 1, "the raw probabilities are far from uniform"
    assert np.allclose(log_ratios(p_cal), log_ratios(p_raw) / 2.5, atol=1e-4)
    old = model_with_temperature(tmp_path, None)  # a model directory from before calibration
    assert gmptl.load(old).temperature == 1.0
    assert np.allclose(gmptl.load(old).probabilities(waves())[0], p_raw, atol=1e-6)
    meta = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**meta, "calibration": {"temperature": -1}}))
    with pytest.raises(GmptlError, match="calibration temperature -1: not a positive number"):
        gmptl.load(model_dir)


@pytest.mark.slow
def test_onnx_export_is_calibrated_as_the_torch_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    model_dir = model_with_temperature(tmp_path, 2.5)
    assert main(["export", str(model_dir)]) == 0
    onnx_cal, onnx_raw = gmptl.load(model_dir, backend="onnx"), gmptl.load(model_dir, backend="onnx", calibrate=False)
    assert onnx_cal.meta["temperature"] == "2.5" and onnx_cal.temperature == 2.5 and onnx_raw.temperature == 1.0
    for calibrate, rec in ((True, onnx_cal), (False, onnx_raw)):
        expected = gmptl.load(model_dir, calibrate=calibrate).probabilities(waves())[0]
        assert np.abs(rec.probabilities(waves())[0] - expected).max() <= 1e-4


def test_no_calibrate_on_predict_timeline_and_serve(tmp_path, monkeypatch):
    model_dir = model_with_temperature(tmp_path, 2.5)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.concatenate(waves()), 16000)

    def probabilities(*flags) -> np.ndarray:
        out = tmp_path / "p.jsonl"
        assert main(["predict", str(model_dir), str(wav), "--out", str(out), *flags]) == 0
        return np.array([list(json.loads(line)["probabilities"].values()) for line in out.read_text().splitlines()])
    for mode in ([], ["--timeline", "--window", "1", "--hop", "1"]):
        cal, raw = probabilities(*mode), probabilities(*mode, "--no-calibrate")
        assert np.abs(log_ratios(raw)).max() > 1
        assert np.allclose(log_ratios(cal), log_ratios(raw) / 2.5, atol=1e-2)  # rounded to 1e-6 in the file
    served = []
    monkeypatch.setattr("gmptl.service.serve", lambda recognizer, *args: served.append(recognizer))
    assert main(["serve", str(model_dir)]) == 0 and main(["serve", str(model_dir), "--no-calibrate"]) == 0
    assert [r.temperature for r in served] == [2.5, 1.0]
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from gmptl.service import create_app

    assert TestClient(create_app(served[0])).get("/v1/model").json()["temperature"] == 2.5
