"""A trained model on disk: ``config.json`` + ``model.safetensors`` (+ pseudo-label files). No pickles.

``config.json`` holds everything needed to rebuild the network without the hub: the encoder's
transformers config, the head sizes, the label names, the training config, metrics and provenance.
A frozen probe (``system=probe``) is a ``ProbeClassifier``: its head, the scaler's mean and scale and the
logistic regression's coef and intercept, is four tensors in the same safetensors. Models trained with GMP-TL
also hold the pseudo-label centroids (``centroids.safetensors``: ``km<K>``, (K, D) float32) and the stage-1
encoder they were fitted on (``pseudo_encoder.safetensors``, same architecture as the model's encoder), so
frames can be labelled as in training.
"""

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoints import atomic_save
from .encoders import SpeechEncoder, from_config
from .errors import GmptlError
from .model import ProbeClassifier, UtteranceClassifier
from .utils import atomic_json

FORMAT = "gmptl-model/1"


def encoder_description(encoder: SpeechEncoder) -> dict:
    """How to rebuild ``encoder``'s architecture offline (its weights travel in the safetensors)."""
    return {**encoder.describe(), "transformers_config": encoder.model.config.to_dict(),
            "normalize": bool(getattr(encoder, "normalize", False))}


def encoder_from_description(desc: dict) -> SpeechEncoder:
    import transformers

    config = dict(desc["transformers_config"])
    return from_config(transformers.AutoConfig.for_model(config.pop("model_type"), **config), desc["name"],
                       desc["normalize"])


def head_description(model: UtteranceClassifier | ProbeClassifier) -> dict:
    """The head's kind and sizes, for ``load_model_dir`` to rebuild it."""
    if isinstance(model, ProbeClassifier):
        return {"classifier": "probe", "layer": model.layer, "gender": False, "features": model.mean.numel()}
    return {"layer": model.layer.index, "classifier": model.classifier, "gender": model.gender is not None,
            "lstm_hidden": model.pool.hidden_size, "proj_hidden": model.emotion.hidden_size,
            "embed_size": model.emotion.output_size if model.classifier == "amsoftmax" else None,
            "dropout": model.emotion.dropout}


def save_model_dir(out: Path, model: UtteranceClassifier | ProbeClassifier, labels: list[str], weights: Path | None,
                   extra: dict, centroids: dict[str, torch.Tensor] | None = None,
                   pseudo_encoder: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a model directory from a trained classifier whose state is in ``weights`` (None: ``model``'s own).

    The weights file is hard-linked where the file system allows it (no second copy of a large encoder),
    copied otherwise. ``extra`` joins config.json (metrics, config, provenance).
    """
    out.mkdir(parents=True, exist_ok=True)
    if weights is None:
        atomic_save(model.state_dict(), out / "model.safetensors")
    else:
        tmp = out / "model.safetensors.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(weights, tmp)
        except OSError:
            shutil.copyfile(weights, tmp)
        os.replace(tmp, out / "model.safetensors")
    for name, tensors in (("centroids", centroids), ("pseudo_encoder", pseudo_encoder)):
        if tensors:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}.safetensors"))
    meta = {"format": FORMAT, "labels": list(labels), "sample_rate": model.encoder.sample_rate,
            "encoder": encoder_description(model.encoder), "head": head_description(model),
            "centroids": sorted(centroids) if centroids else [], **extra}
    atomic_json(meta, out / "config.json")
    return out


def load_model_dir(path) -> tuple[UtteranceClassifier | ProbeClassifier, dict]:
    """The classifier of a model directory, in eval mode, and its config.json."""
    path = Path(path)
    config_path, weights = path / "config.json", path / "model.safetensors"
    for f in (config_path, weights):
        if not f.is_file():
            raise GmptlError(f"{path}: not a gmptl model directory (no {f.name})")
    try:
        meta = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise GmptlError(f"{config_path}: not valid JSON ({e.msg})") from None
    if meta.get("format") != FORMAT:
        raise GmptlError(f"{config_path}: format {meta.get('format')!r}, this gmptl reads {FORMAT}")
    h, encoder = meta["head"], encoder_from_description(meta["encoder"])
    if h["classifier"] == "probe":
        model = ProbeClassifier(encoder, len(meta["labels"]), h["layer"])
    else:
        model = UtteranceClassifier(encoder, len(meta["labels"]), h["layer"], gender=h["gender"],
                                    classifier=h["classifier"], lstm_hidden=h["lstm_hidden"],
                                    proj_hidden=h["proj_hidden"], embed_size=h["embed_size"] or 128,
                                    dropout=h["dropout"])
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), meta


def load_centroids(path) -> dict[str, torch.Tensor]:
    f = Path(path) / "centroids.safetensors"
    return load_file(str(f)) if f.is_file() else {}


def load_pseudo_encoder(path, meta: dict) -> SpeechEncoder | None:
    """The stage-1 encoder the centroids were fitted on, or None where the model has none."""
    f = Path(path) / "pseudo_encoder.safetensors"
    if not f.is_file() or not meta.get("pseudo_labels"):
        return None
    encoder = encoder_from_description(meta["encoder"])
    encoder.load_state_dict(load_file(str(f)))
    return encoder.eval()
