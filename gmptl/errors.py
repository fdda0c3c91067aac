"""Errors that reach the user as one line: what is at fault, and why."""


class GmptlError(Exception):
    """Base class: its message is printed as is, without a traceback."""


class AudioError(GmptlError):
    """An audio file that cannot be used, with the path and the reason."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # rebuilt whole when a DataLoader worker sends it back
        return AudioError, (self.path, self.reason)


class CorpusError(GmptlError):
    """A corpus directory or manifest that cannot be read."""


class ConfigError(GmptlError):
    """A bad option or configuration value."""


class EncoderError(GmptlError):
    """A speech encoder that cannot be built or loaded."""
