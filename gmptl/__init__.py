"""gmptl: speech emotion recognition with GMP-TL (gender-augmented multi-scale pseudo-label transfer learning)."""

from .errors import AudioError, ConfigError, CorpusError, EncoderError, GmptlError

__version__ = "0.1.0"

__all__ = ["AudioError", "ConfigError", "CorpusError", "EncoderError", "GmptlError", "__version__"]
