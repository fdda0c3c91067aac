"""Use a trained model: emotion of a waveform, a file, or a long recording window by window."""

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import SAMPLE_RATE, load_audio, stream_audio, to_mono_resampled, validate_waveform
from .modeldir import load_model_dir

GENDERS = ("female", "male")


@dataclass
class Prediction:
    """The emotion of one recording."""

    label: str
    probabilities: dict[str, float]     # label -> probability, in the model's label order
    duration: float                     # seconds
    gender: str | None = None           # where the model has a gender head
    gender_probability: float | None = None
    path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Window:
    """The emotion of one window of a long recording."""

    start: float
    end: float
    label: str
    probabilities: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


class Recognizer:
    """A trained model ready for audio: ``gmptl.load(model_dir)`` returns one.

    Probabilities are the softmax of the classifier's scores; for an AM-Softmax model
    the cosines are scaled by the training scale ``s`` first (30 by default), the
    same scale its loss was trained with.
    """

    def __init__(self, model, meta: dict):
        self.model = model.eval()
        self.meta = meta
        self.labels: list[str] = meta["labels"]
        self.sample_rate: int = meta.get("sample_rate", SAMPLE_RATE)
        stage3 = meta.get("config", {}).get("stage3", {})
        self.scale = float(stage3.get("scale", 30.0)) if model.classifier == "amsoftmax" else 1.0
        # Whisper encoders take 30 s at most; longer input is scored in 30 s pieces.
        self.max_samples = int(getattr(model.encoder, "max_samples", 30 * self.sample_rate))

    @torch.no_grad()
    def _scores(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C) emotion and (N, 2) gender probabilities of zero-padded ``waves``."""
        lengths = torch.tensor([len(w) for w in waves])
        batch = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in waves], batch_first=True)
        out = self.model(batch, lengths)
        emotion = torch.softmax(self.scale * out["emotion"].float(), -1).numpy()
        gender = torch.softmax(out["gender"].float(), -1).numpy() if out["gender"] is not None else None
        return emotion, gender

    def predict_waves(self, waves: list[np.ndarray], batch_size: int = 16) -> list[Prediction]:
        """Predictions for 16 kHz mono float32 waveforms (each checked as a file would be)."""
        pieces, owner = [], []
        for i, w in enumerate(waves):
            for start in range(0, len(w), self.max_samples):
                piece = w[start:start + self.max_samples]
                if len(piece) >= 400 or start == 0:  # a last sliver shorter than a frame adds nothing
                    pieces.append(piece)
                    owner.append(i)
        # Longest first: neighbours in a batch have similar lengths, little padding.
        order = sorted(range(len(pieces)), key=lambda j: -len(pieces[j]))
        emotion = np.zeros((len(pieces), len(self.labels)), dtype=np.float64)
        gender = np.zeros((len(pieces), 2), dtype=np.float64)
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            e, g = self._scores([pieces[j] for j in idx])
            emotion[idx] = e
            if g is not None:
                gender[idx] = g
        results = []
        for i, w in enumerate(waves):
            mine = [j for j, o in enumerate(owner) if o == i]
            weights = np.array([len(pieces[j]) for j in mine], dtype=np.float64)
            p = (emotion[mine] * weights[:, None]).sum(0) / weights.sum()
            g = (gender[mine] * weights[:, None]).sum(0) / weights.sum()
            has_gender = self.model.gender is not None
            results.append(Prediction(self.labels[int(p.argmax())], dict(zip(self.labels, p.round(6).tolist())),
                                      round(len(w) / self.sample_rate, 3),
                                      GENDERS[int(g.argmax())] if has_gender else None,
                                      round(float(g.max()), 6) if has_gender else None))
        return results

    def predict(self, waveform: np.ndarray, sample_rate: int) -> Prediction:
        """Emotion of a waveform, (S,) or (S, channels), at any sample rate."""
        wave = to_mono_resampled(np.asarray(waveform, dtype=np.float32), sample_rate, self.sample_rate)
        validate_waveform(wave, "<waveform>", sample_rate=self.sample_rate)
        return self.predict_waves([wave])[0]

    def predict_file(self, path) -> Prediction:
        """Emotion of an audio file (raises ``AudioError`` with the reason for a bad one)."""
        result = self.predict_waves([load_audio(path, self.sample_rate)])[0]
        result.path = str(path)
        return result

    def timeline(self, path, window: float = 2.0, hop: float = 0.5, batch_size: int = 16) -> Iterator[Window]:
        """Emotion over time of a recording of any length, decoded as a stream.

        Memory holds one window plus one decoded block whatever the file's length.
        The last window is shortened to end with the recording.
        """
        if not 0 < hop <= window:
            raise ValueError(f"need 0 < hop <= window, got hop {hop} s and window {window} s")
        size, step = int(window * self.sample_rate), int(hop * self.sample_rate)
        buffer = np.zeros(0, dtype=np.float32)
        offset = 0  # sample index of buffer[0] in the recording
        covered = 0  # end of the last window
        pending: list[tuple[int, np.ndarray]] = []

        def flush():
            emotion, _ = self._scores([w for _, w in pending])
            for (start, w), p in zip(pending, emotion):
                yield Window(round(start / self.sample_rate, 3), round((start + len(w)) / self.sample_rate, 3),
                             self.labels[int(p.argmax())], dict(zip(self.labels, p.round(6).tolist())))
            pending.clear()

        for chunk in stream_audio(path, self.sample_rate, block_seconds=max(window, 10.0)):
            buffer = np.concatenate([buffer, chunk])
            while len(buffer) >= size:
                pending.append((offset, buffer[:size].copy()))
                covered = offset + size
                buffer, offset = buffer[step:], offset + step
                if len(pending) == batch_size:
                    yield from flush()
        if len(buffer) >= 400 and offset + len(buffer) > covered:  # the tail not yet covered by a window
            pending.append((offset, buffer.copy()))
        if pending:
            yield from flush()


def load(model_dir) -> Recognizer:
    """A ``Recognizer`` for a model directory (from ``gmptl train`` or a ``gmptl cv`` fold)."""
    model, meta = load_model_dir(Path(model_dir))
    return Recognizer(model, meta)


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64")


def expand_paths(items: list[str]) -> tuple[list[Path], list[str]]:
    """Files, directories (recursive, audio suffixes) and globs -> sorted files; and what matched nothing."""
    import glob

    files, unmatched = [], []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        elif path.exists():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        if not found:
            unmatched.append(item)
        files += found
    return list(dict.fromkeys(files)), unmatched


def plot_timeline(windows: list[Window], labels: list[str], path, title: str = "") -> None:
    """Probability of each emotion over time, one line per emotion."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = np.array([(w.start + w.end) / 2 for w in windows])
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, 0.1 * len(windows) + 6)), 3.6))
    for label in labels:
        ax.plot(centres, [w.probabilities[label] for w in windows], label=label, linewidth=1.4)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
