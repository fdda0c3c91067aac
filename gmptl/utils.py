"""Small helpers every command shares: the device, bf16 autocast and its check, atomic JSON, figures."""

import contextlib
import json
import os
from pathlib import Path

import torch

from . import dist
from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    if name == "auto":  # under torchrun: this rank's GPU
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: PyTorch sees no CUDA device here (use auto or cpu)")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast(device: torch.device, precision: str):
    """bf16 autocast (CUDA or CPU) when asked for; a no-op context for fp32.

    On a CPU with native bf16 (AVX512-BF16 or AMX) a Whisper tiny.en training step is about 1.7x faster
    (bench ``cpu_bf16``); a CPU without it is refused (``check_precision``)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    check_precision(device, precision)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def check_precision(device: torch.device | str, precision: str) -> None:
    """Refuse bf16 on a CPU without native bf16 (``device``: a device or a ``train.device`` name):
    oneDNN emulates it, slower than fp32, and its LSTM (the head's BiLSTM) cannot run it at all."""
    if precision != "bf16":
        return
    device = resolve_device(device) if isinstance(device, str) else device
    if device.type == "cpu" and not cpu_has_bf16():
        raise ConfigError("precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), "
                          "where oneDNN cannot run the BiLSTM in bf16; use fp32")


def cpu_has_bf16() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private: absent means unknown
    return bool(check()) if check is not None else True


@contextlib.contextmanager
def figure(path, *args, **kwargs):
    """``(fig, axes)`` of ``plt.subplots(*args, **kwargs)``, saved to ``path`` as a 120 dpi PNG on leaving."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def atomic_write(data, path: Path, write=Path.write_text) -> None:
    """``write(tmp, data)`` (by default ``data`` as text) to a temporary file, then renamed: a kill leaves the old
    file or the new one. Under torchrun only rank 0 writes."""
    if not dist.is_main():
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: workers may share a directory
    write(tmp, data)
    os.replace(tmp, path)


def atomic_json(obj, path: Path) -> None:
    """``obj`` as indented JSON, written atomically (``atomic_write``)."""
    atomic_write(json.dumps(obj, indent=2), path)
