"""Use a trained model: emotion of a waveform, a file, or a long recording window by window."""

import functools
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import AUDIO_SUFFIXES, load_audio, stream_audio, to_mono_resampled, validate_waveform
from .calibration import temperature_of
from .errors import AudioError
from .modeldir import load_centroids, load_model_dir, load_pseudo_encoder

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


@dataclass
class PseudoLabels:
    """Frame-level pseudo-labels of one stretch of a recording (50 frames per second)."""

    start: float                    # seconds from the start of the recording
    frame_seconds: float            # duration of one frame
    labels: dict[int, np.ndarray]   # scale K -> (T,) nearest-centroid index of each frame


class PseudoLabeler:
    """Labels frames as GMP-TL's training did: one layer of the stage-1 encoder -> nearest centroid per scale."""

    def __init__(self, encoder, layer: int, centroids: dict[int, torch.Tensor]):
        self.encoder, self.layer = encoder.eval(), layer
        self.centroids = {k: c.float() for k, c in sorted(centroids.items())}

    @torch.no_grad()
    def __call__(self, wave: np.ndarray) -> dict[int, np.ndarray]:
        from .pseudo_labels import nearest

        out = self.encoder(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        frames = out.hidden_states[self.layer][0, : int(out.lengths[0])].float()
        return {k: nearest(frames, c, distances=False)[1].numpy().astype(np.int32) for k, c in self.centroids.items()}


class Recognizer:
    """A trained model ready for audio: ``gmptl.load(model_dir)`` returns one.

    Probabilities are the softmax of the classifier's scores; for an AM-Softmax model the cosines are scaled
    by the training scale ``s`` first (30 by default), the same scale its loss was trained with. With
    ``calibrate`` (the default) they are divided by the model's ``temperature`` too, fitted on validation
    speakers (``gmptl.calibration``; 1 for a model without one). Two backends compute them: PyTorch on the
    model directory, or onnxruntime on its ONNX export (``gmptl export``).

    ``score``: (waveforms (B, S) float32, lengths (B,) int64) -> (emotion (B, C), gender (B, 2) or None);
    ``max_samples``: the longest input in one piece (Whisper: 30 s), longer is scored in pieces;
    ``meta``: the model's config.json (or the ONNX metadata); ``labels``: in the model's order;
    ``temperature``: the one applied (1 when loaded with ``calibrate=False``).
    """

    def __init__(self, labels: list[str], sample_rate: int, max_samples: int, has_gender: bool, score, meta: dict,
                 pseudo_loader=None, temperature: float = 1.0):
        self.labels, self.sample_rate, self.max_samples = list(labels), sample_rate, max_samples
        self.has_gender, self.score, self.meta, self.temperature = has_gender, score, meta, temperature
        self._pseudo_loader = pseudo_loader

    @functools.cached_property
    def pseudo(self) -> PseudoLabeler | None:
        """The frame labeller of a GMP-TL model (loaded on first use: it is a second encoder), else None."""
        return None if self._pseudo_loader is None else self._pseudo_loader()

    @property
    def has_pseudo_labels(self) -> bool:
        return self._pseudo_loader is not None

    @classmethod
    def from_model_dir(cls, model_dir, precision: str = "fp32", calibrate: bool = True) -> "Recognizer":
        from .export import Probabilities, probability_scale
        from .utils import autocast

        model, meta = load_model_dir(Path(model_dir))
        temperature = temperature_of(meta) if calibrate else 1.0
        net = Probabilities(model, probability_scale(model, meta), temperature).eval()

        @torch.no_grad()
        def score(waves: np.ndarray, lengths: np.ndarray):
            with autocast(torch.device("cpu"), precision):
                out = net(torch.from_numpy(waves), torch.from_numpy(lengths))
            emotion, gender = out if isinstance(out, tuple) else (out, None)
            return emotion.float().numpy(), None if gender is None else gender.float().numpy()

        # Whisper encoders take 30 s at most; longer input is scored in 30 s pieces.
        max_samples = int(getattr(model.encoder, "max_samples", 30 * meta["sample_rate"]))
        loader = None
        if meta.get("pseudo_labels") and (Path(model_dir) / "pseudo_encoder.safetensors").is_file():
            def loader() -> PseudoLabeler:
                centroids = {int(name[2:]): c for name, c in load_centroids(model_dir).items()}
                return PseudoLabeler(load_pseudo_encoder(model_dir, meta), meta["pseudo_labels"]["layer"], centroids)
        return cls(meta["labels"], meta["sample_rate"], max_samples, model.gender is not None, score, meta, loader,
                   temperature)

    @classmethod
    def from_onnx(cls, path, calibrate: bool = True) -> "Recognizer":
        from .calibration import softmax
        from .export import onnx_session

        session, meta = onnx_session(path)
        has_gender = len(session.get_outputs()) > 1
        fitted = temperature_of(meta)  # the graph's probabilities are calibrated with it

        def score(waves: np.ndarray, lengths: np.ndarray):
            out = session.run(None, {"waveforms": waves, "lengths": lengths})
            emotion = out[0]
            if not calibrate and fitted != 1.0:  # log p = z / T + c: softmax(T log p) = softmax(z)
                emotion = softmax(fitted * np.log(np.maximum(emotion, np.finfo(np.float32).tiny))).astype(np.float32)
            return emotion, out[1] if has_gender else None

        sample_rate = int(meta["sample_rate"])
        max_samples = int(meta.get("max_samples") or 0) or 30 * sample_rate
        return cls(json.loads(meta["labels"]), sample_rate, max_samples, has_gender, score, meta,
                   temperature=fitted if calibrate else 1.0)

    def probabilities(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C) emotion and (N, 2) gender probabilities of ``waves``, zero-padded into one batch."""
        lengths = np.array([len(w) for w in waves], dtype=np.int64)
        batch = np.zeros((len(waves), lengths.max()), dtype=np.float32)
        for i, w in enumerate(waves):
            batch[i, :len(w)] = w
        return self.score(batch, lengths)

    def predict_waves(self, waves: list[np.ndarray], batch_size: int = 16) -> list[Prediction]:
        """Predictions for 16 kHz mono float32 waveforms (each checked as a file would be)."""
        pieces, spans = [], []  # spans[i]: the slice of pieces that waves[i] is cut into
        for w in waves:
            first = len(pieces)
            for start in range(0, len(w), self.max_samples):
                piece = w[start:start + self.max_samples]
                if len(piece) >= 400 or start == 0:  # a last sliver shorter than a frame adds nothing
                    pieces.append(piece)
            spans.append(slice(first, len(pieces)))
        # Longest first: neighbours in a batch have similar lengths, little padding.
        order = sorted(range(len(pieces)), key=lambda j: -len(pieces[j]))
        emotion = np.zeros((len(pieces), len(self.labels)), dtype=np.float64)
        gender = np.zeros((len(pieces), 2), dtype=np.float64)
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            e, g = self.probabilities([pieces[j] for j in idx])
            emotion[idx], gender[idx] = e, 0.0 if g is None else g
        return [self.pooled(emotion[span], gender[span], [len(piece) for piece in pieces[span]], len(w))
                for w, span in zip(waves, spans)]

    def pooled(self, emotion: np.ndarray, gender: np.ndarray | None, lengths, samples: int) -> Prediction:
        """The prediction for a recording of ``samples`` samples from its pieces' (P, C) emotion and (P, 2)
        gender probabilities, each piece weighted by its length."""
        weights = np.asarray(lengths, dtype=np.float64)[:, None]
        p, g = ((np.asarray(s, dtype=np.float64) * weights).sum(0) / weights.sum()
                for s in (emotion, np.zeros((len(weights), 2)) if gender is None else gender))
        return Prediction(self.labels[int(p.argmax())], dict(zip(self.labels, p.round(6).tolist())),
                          round(samples / self.sample_rate, 3), GENDERS[int(g.argmax())] if self.has_gender else None,
                          round(float(g.max()), 6) if self.has_gender else None)

    def window(self, start: int, samples: int, p: np.ndarray) -> "Window":
        """The ``Window`` of ``samples`` samples from sample ``start`` with emotion probabilities ``p``."""
        return Window(round(start / self.sample_rate, 3), round((start + samples) / self.sample_rate, 3),
                      self.labels[int(p.argmax())], dict(zip(self.labels, p.round(6).tolist())))

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

    def predict_files(self, paths, batch_size: int = 16) -> Iterator[Prediction | AudioError]:
        """For each file in order, its prediction or the ``AudioError`` that kept it out (the others go on),
        ``batch_size`` files decoded at a time."""
        for start in range(0, len(paths), batch_size):
            batch, decoded = paths[start:start + batch_size], []
            for path in batch:
                try:
                    decoded.append(load_audio(path, self.sample_rate))
                except AudioError as e:
                    decoded.append(e)
            results = iter(self.predict_waves([w for w in decoded if not isinstance(w, AudioError)], batch_size))
            for path, wave in zip(batch, decoded):
                if isinstance(wave, AudioError):
                    yield wave
                else:
                    result = next(results)
                    result.path = str(path)
                    yield result

    def windows(self, path, size: int, step: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first sample, samples) of every ``size``-sample window, ``step`` apart, over a recording
        decoded as a stream: memory holds one window plus one decoded block whatever the file's
        length. The last window is shortened to end with the recording."""
        buffer = np.zeros(0, dtype=np.float32)
        offset = 0  # sample index of buffer[0] in the recording
        covered = 0  # end of the last window
        for chunk in stream_audio(path, self.sample_rate, block_seconds=max(size / self.sample_rate, 10.0)):
            buffer = np.concatenate([buffer, chunk])
            while len(buffer) >= size:
                yield offset, buffer[:size].copy()
                covered = offset + size
                buffer, offset = buffer[step:], offset + step
        if len(buffer) >= 400 and offset + len(buffer) > covered:  # the tail not yet covered by a window
            yield offset, buffer.copy()

    def timeline(self, path, window: float = 2.0, hop: float = 0.5, batch_size: int = 16) -> Iterator[Window]:
        """Emotion over time of a recording of any length, decoded as a stream (see ``windows``)."""
        if not 0 < hop <= window:
            raise ValueError(f"need 0 < hop <= window, got hop {hop} s and window {window} s")
        pieces = self.windows(path, int(window * self.sample_rate), int(hop * self.sample_rate))
        while batch := list(itertools.islice(pieces, batch_size)):
            emotion, _ = self.probabilities([w for _, w in batch])
            for (start, w), p in zip(batch, emotion):
                yield self.window(start, len(w), p)

    def pseudo_track(self, path, chunk: float = 10.0) -> Iterator[PseudoLabels]:
        """Frame-level pseudo-labels of a recording of any length, streamed in ``chunk``-second pieces.

        Needs a GMP-TL model directory (its stage-1 encoder and centroids). Each piece is encoded alone, so
        frames within a fraction of a second of a piece boundary see less context than in training, where
        whole utterances were encoded.
        """
        if self.pseudo is None:
            raise ValueError("this model has no pseudo-label encoder and centroids (GMP-TL models from this "
                             "version have them; ONNX exports do not)")
        hop = self.sample_rate // 50  # 20 ms frames
        size = max(hop, int(chunk * self.sample_rate) // hop * hop)
        for start, wave in self.windows(path, size, size):
            yield PseudoLabels(start / self.sample_rate, hop / self.sample_rate, self.pseudo(wave))


def load(model, backend: str = "torch", precision: str = "fp32", calibrate: bool = True) -> Recognizer:
    """A ``Recognizer`` for a model directory (from ``gmptl train`` or a ``gmptl cv`` fold).

    Args:
        model: the model directory; with ``backend="onnx"`` also an ``.onnx`` file
            (a directory means its ``model.onnx``, as ``gmptl export`` writes by default).
        backend: ``torch`` or ``onnx`` (onnxruntime on the exported graph).
        precision: ``fp32``, or ``bf16`` (torch backend: autocast, 1.6x faster on a CPU with
            native bf16, refused on one without; on RAVDESS models probabilities moved by up to 0.07).
        calibrate: divide the scores by the temperature fitted on validation speakers (False: the raw
            scores' softmax, as gmptl before calibration gave).
    """
    path = Path(model)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
    if backend == "torch":
        from .utils import check_precision
        check_precision(torch.device("cpu"), precision)
        return Recognizer.from_model_dir(path, precision, calibrate)
    if precision != "fp32":
        raise ValueError(f"precision {precision} needs the torch backend")
    if backend == "onnx":
        return Recognizer.from_onnx(path / "model.onnx" if path.is_dir() else path, calibrate)
    raise ValueError(f"backend must be 'torch' or 'onnx', not {backend!r}")


def expand_paths(items: list[str]) -> tuple[list[Path], list[str]]:
    """Files, directories (recursive, audio suffixes) and globs -> sorted files; and one line for each item
    that matched nothing and each broken symbolic link met (given by name or found), naming it."""
    import glob

    files, problems = [], []
    for item in items:
        path = Path(item)
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            found = [p for p in candidates if p.is_file()]
        elif path.exists():
            found = candidates = [path]
        else:
            candidates = sorted(Path(p) for p in glob.glob(item, recursive=True))
            found = [p for p in candidates if p.is_file()]
        broken = sorted(p for p in candidates if p.is_symlink() and not p.exists())
        problems += [f"{p}: broken symbolic link (its target {os.readlink(p)} does not exist)" for p in broken]
        if not found and not broken:
            problems.append(f"{item}: no such file, directory or matching audio")
        files += found
    return list(dict.fromkeys(files)), problems


def timeline_with_track(recognizer: "Recognizer", path: Path, window: float, hop: float, batch_size: int,
                        track: bool = False) -> tuple[list[Window], list[PseudoLabels] | None]:
    """``recognizer.timeline`` of one recording with a progress bar in seconds of audio, and with ``track``
    its frame pseudo-label track (None when not asked for, or when the model has none)."""
    from tqdm import tqdm

    from .audio import audio_info

    seconds = audio_info(path).duration
    windows = []
    with tqdm(total=round(seconds, 1), desc="timeline", unit="s", disable=None, leave=False) as bar:
        for w in recognizer.timeline(path, window, hop, batch_size):
            windows.append(w)
            bar.update(round(min(w.end, seconds) - bar.n, 1))
    return windows, list(recognizer.pseudo_track(path)) if track and recognizer.has_pseudo_labels else None


def plot_timeline(windows: list[Window], labels: list[str], path, title: str = "",
                  track: list[PseudoLabels] | None = None, marks: list[tuple[float, float, str]] = ()) -> None:
    """Probability of each emotion over time, one line per emotion; behind it, where given, ``marks``: known
    (start, end, label) segments shaded in their label's colour, so a reader sees where the model is right;
    below it, where given, the frame-level pseudo-label track (one row per scale, colour = cluster)."""
    from .utils import figure

    centres = np.array([(w.start + w.end) / 2 for w in windows])
    width = max(6.0, min(24.0, 0.1 * len(windows) + 6))
    with figure(path, 2 if track else 1, 1, figsize=(width, 5.4 if track else 3.6), sharex=True,
                height_ratios=[3, 1.2] if track else None) as (_, axes):
        ax, low = axes if track else (axes, axes)
        if track:
            scales = sorted(track[0].labels)
            rows = np.stack([np.concatenate([t.labels[k] for t in track]) / k for k in scales])
            end = track[-1].start + len(track[-1].labels[scales[0]]) * track[-1].frame_seconds
            low.imshow(rows, aspect="auto", interpolation="nearest", cmap="nipy_spectral",
                       extent=(track[0].start, end, len(scales) - 0.5, -0.5))
            low.set_yticks(range(len(scales)), [f"k={k}" for k in scales])
            low.set_title("pseudo-labels (nearest centroid of each 20 ms frame)", fontsize=9)
        low.set_xlabel("time (s)")
        colour = {}
        for label in labels:
            line, = ax.plot(centres, [w.probabilities[label] for w in windows], label=label, linewidth=1.4)
            colour[label] = line.get_color()
        for start, end, label in marks:
            ax.axvspan(start, end, color=colour.get(label, "grey"), alpha=0.15, linewidth=0)
            ax.text((start + end) / 2, 0.97, label, ha="center", va="top", fontsize=8, color=colour.get(label, "grey"))
        ax.set_ylabel("probability")
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
