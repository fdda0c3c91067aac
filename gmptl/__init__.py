"""gmptl: speech emotion recognition with GMP-TL (gender-augmented multi-scale pseudo-label transfer learning)."""

from .errors import AudioError, ConfigError, CorpusError, EncoderError, GmptlError

__version__ = "0.1.0"

_LAZY = {"load": "inference", "Recognizer": "inference", "Prediction": "inference", "Window": "inference",
         "audio": None}


def __getattr__(name):
    # torch and transformers load on first use, not on `import gmptl` (the CLI starts fast).
    if name not in _LAZY:
        raise AttributeError(f"module 'gmptl' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)


__all__ = ["AudioError", "ConfigError", "CorpusError", "EncoderError", "GmptlError", "Prediction", "Recognizer",
           "Window", "audio", "load", "__version__"]
