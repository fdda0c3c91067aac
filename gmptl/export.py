"""ONNX export of a model directory: dynamic batch and length, labels and sample rate inside."""

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .calibration import temperature_of
from .errors import GmptlError
from .modeldir import load_model_dir

OPSET = 17


class Probabilities(nn.Module):
    """(waveforms (B, S), lengths (B,)) -> emotion probabilities (B, C) [, gender probabilities (B, 2)]:
    softmax(scale x scores / temperature), the temperature fitted on validation speakers (gmptl.calibration)."""

    def __init__(self, model, scale: float, temperature: float = 1.0):
        super().__init__()
        self.model, self.scale, self.temperature = model, scale, temperature

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor):
        out = self.model(waveforms, lengths)
        emotion = torch.softmax(self.scale / self.temperature * out["emotion"], -1)
        if out["gender"] is None:
            return emotion
        return emotion, torch.softmax(out["gender"], -1)


def probability_scale(model, meta: dict) -> float:
    """AM-Softmax cosines are scaled by the training ``s`` before the softmax; logits are not."""
    if model.classifier != "amsoftmax":
        return 1.0
    return float(meta.get("config", {}).get("stage3", {}).get("scale", 30.0))


def export_onnx(model_dir, path) -> Path:
    """Write ``model_dir`` as an ONNX graph at ``path``, its probabilities calibrated; returns the path."""
    import onnx

    model, meta = load_model_dir(model_dir)
    temperature = temperature_of(meta)
    wrapper = Probabilities(model, probability_scale(model, meta), temperature).eval()
    outputs = ["emotion", "gender"] if model.gender is not None else ["emotion"]
    example = (torch.randn(2, 2 * meta["sample_rate"]) * 0.1, torch.tensor([2 * meta["sample_rate"], meta["sample_rate"]]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    axes = {"waveforms": {0: "batch", 1: "samples"}, "lengths": {0: "batch"},
            **{name: {0: "batch"} for name in outputs}}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes on shape checks it turns into constants: the tests run the
        # graph on other batch sizes and lengths than the example's.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1")
        # The TorchScript exporter: the torch.export one needs onnxscript besides, and
        # this graph (one gather, convolutions, LSTMs, attention) traces cleanly.
        torch.onnx.export(wrapper, example, str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["waveforms", "lengths"], output_names=outputs, dynamic_axes=axes)
    graph = onnx.load(str(tmp))
    info = {"labels": json.dumps(meta["labels"]), "sample_rate": str(meta["sample_rate"]),
            "gender_labels": json.dumps(["female", "male"] if model.gender is not None else []),
            "encoder": meta["encoder"]["name"], "max_samples": str(getattr(model.encoder, "max_samples", 0)),
            "temperature": repr(temperature), "gmptl_version": __version__, "source": str(Path(model_dir).resolve())}
    for key, value in info.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(tmp))
    tmp.replace(path)
    return path


def onnx_session(path):
    """An onnxruntime session and the metadata gmptl stored in the graph."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise GmptlError("the onnx backend needs onnxruntime: pip install 'gmptl[onnx]'") from None
    path = Path(path)
    if not path.is_file():
        raise GmptlError(f"{path}: no such ONNX file (make one with gmptl export MODEL --onnx FILE)")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise GmptlError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0]})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if "labels" not in meta:
        raise GmptlError(f"{path}: not exported by gmptl (no labels in its metadata)")
    return session, meta
