"""ONNX export: onnxruntime equals PyTorch on real speech, with dynamic batch and length."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import gmptl
from gmptl.__main__ import main
from gmptl.audio import load_audio
from gmptl.encoders import build_encoder
from gmptl.model import UtteranceClassifier
from gmptl.modeldir import save_model_dir
from gmptl.checkpoints import atomic_save

pytest.importorskip("onnxruntime")


def make_model_dir(tmp: Path, encoder_spec: str, classifier: str, gender: bool) -> Path:
    torch.manual_seed(0)
    model = UtteranceClassifier(build_encoder(encoder_spec), 4, -1, gender=gender, classifier=classifier,
                                lstm_hidden=32, proj_hidden=32, embed_size=16)
    weights = tmp / "w.safetensors"
    atomic_save(model.state_dict(), weights)
    config = {"stage3": {"scale": 30.0}}
    return save_model_dir(tmp / "model", model, ["neutral", "happy", "sad", "angry"], weights, {"config": config})


def speech(ravdess_root: Path) -> list[np.ndarray]:
    files = sorted((ravdess_root / "Actor_05").glob("*.flac"))[:3]
    return [load_audio(f) for f in files]


@pytest.mark.slow
def test_builtin_whisper_model_onnx_equals_torch_on_speech(tmp_path, ravdess_root, capsys):
    model_dir = make_model_dir(tmp_path, "whisper-tiny.en", "amsoftmax", gender=True)
    assert main(["export", str(model_dir)]) == 0
    assert "model.onnx" in capsys.readouterr().out
    torch_rec, onnx_rec = gmptl.load(model_dir), gmptl.load(model_dir, backend="onnx")
    assert onnx_rec.labels == torch_rec.labels and onnx_rec.has_gender
    assert onnx_rec.meta["sample_rate"] == "16000" and json.loads(onnx_rec.meta["labels"]) == torch_rec.labels
    waves = speech(ravdess_root)
    for batch in ([waves[0]], waves):  # one utterance, and a padded batch of other lengths
        e_torch, g_torch = torch_rec.probabilities(batch)
        e_onnx, g_onnx = onnx_rec.probabilities(batch)
        assert np.abs(e_onnx - e_torch).max() <= 1e-4 and np.abs(g_onnx - g_torch).max() <= 1e-4


@pytest.mark.parametrize("spec,classifier,gender", [("random:hubert-tiny", "linear", False),
                                                    ("random:whisper-tiny", "amsoftmax", True)])
def test_tiny_models_export_with_dynamic_shapes(tmp_path, spec, classifier, gender):
    model_dir = make_model_dir(tmp_path, spec, classifier, gender)
    path = tmp_path / "m.onnx"
    assert main(["export", str(model_dir), "--onnx", str(path)]) == 0
    torch_rec, onnx_rec = gmptl.load(model_dir), gmptl.load(path, backend="onnx")
    rng = np.random.default_rng(0)
    for lengths in ([12000], [20000, 9000, 16000, 4000]):  # other batch sizes and lengths than the export's
        waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
        a, b = torch_rec.predict_waves(waves), onnx_rec.predict_waves(waves)
        for x, y in zip(a, b):
            assert x.label == y.label and x.gender == y.gender
            assert x.probabilities == pytest.approx(y.probabilities, abs=1e-4)


def test_predict_with_onnx_backend_and_errors(tmp_path, capsys):
    model_dir = make_model_dir(tmp_path, "random:hubert-tiny", "linear", False)
    assert main(["export", str(model_dir)]) == 0
    wav = tmp_path / "a.wav"
    import soundfile as sf
    sf.write(wav, (0.1 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32), 16000)
    capsys.readouterr()
    assert main(["predict", str(model_dir), str(wav), "--backend", "onnx"]) == 0
    assert str(wav) in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "missing.onnx"), str(wav), "--backend", "onnx"])
    assert "no such ONNX file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(model_dir), "--onnx", str(tmp_path / "x.bin")])
