"""Utterances decoded once, training crops, and length-bucketed batches."""

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .audio import SAMPLE_RATE, load_audio
from .corpora import Utterance
from .errors import AudioError

log = logging.getLogger(__name__)

GENDERS = ("female", "male")
# Crops start on multiples of 320 samples (20 ms): one frame of every encoder here,
# so a crop's frames line up with the frames of the whole utterance (pseudo-labels).
FRAME_HOP = 320


@dataclass
class Batch:
    waves: torch.Tensor    # (B, S) zero-padded audio
    lengths: torch.Tensor  # (B,) valid samples
    emotion: torch.Tensor  # (B,) label index
    gender: torch.Tensor   # (B,) 0 female, 1 male, -1 unknown
    index: torch.Tensor    # (B,) position in the AudioSet
    offset: torch.Tensor   # (B,) first sample of the crop in the utterance

    def to(self, device) -> "Batch":
        """Audio, lengths and labels on ``device``; ``index`` and ``offset`` stay on the CPU (bookkeeping)."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.waves), move(self.lengths), move(self.emotion), move(self.gender),
                     self.index, self.offset)


class AudioSet:
    """Utterances decoded once to 16 kHz mono float32, with label indices.

    A file that fails to decode is logged with its reason and left out (``failed``); it never stops the run.
    """

    def __init__(self, utterances: list[Utterance], labels: list[str], desc: str = "audio"):
        self.utterances, self.waves, self.failed = [], [], []
        for u in tqdm(utterances, desc=f"loading {desc}", unit="file", leave=False, disable=None):
            try:
                self.waves.append(load_audio(u.path))
                self.utterances.append(u)
            except AudioError as e:
                log.warning("skipping %s", e)
                self.failed.append(e)
        index = {label: i for i, label in enumerate(labels)}
        self.labels = list(labels)
        self.emotion = np.array([index[u.emotion] for u in self.utterances], dtype=np.int64)
        self.gender = np.array([GENDERS.index(u.gender) if u.gender in GENDERS else -1
                                for u in self.utterances], dtype=np.int64)
        self.lengths = np.array([len(w) for w in self.waves], dtype=np.int64)

    sample_rate = SAMPLE_RATE

    def __len__(self) -> int:
        return len(self.waves)

    def seconds(self) -> float:
        return float(self.lengths.sum()) / SAMPLE_RATE


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Indices grouped by similar length so little of a batch is padding.

    Sorting by length (ties broken at random) and cutting into consecutive groups keeps padding to a few
    percent; the order of the groups is shuffled when ``rng`` is given, so batches still come in a random order.
    """
    order = np.arange(len(lengths)) if rng is None else rng.permutation(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")]
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    return groups


def padding_fraction(lengths: np.ndarray, groups: list[np.ndarray]) -> float:
    """Share of padded samples over all samples of the batches."""
    total = sum(len(g) * lengths[g].max() for g in groups)
    return float(1 - lengths.sum() / total) if total else 0.0


def make_batch(data: AudioSet, idx: np.ndarray, max_samples: int, rng: np.random.Generator | None) -> Batch:
    """Collate ``idx`` into a padded batch; utterances longer than ``max_samples`` are
    cropped at a random frame-aligned offset (``rng``) or from the start (no ``rng``)."""
    waves, offsets = [], []
    for i in idx:
        w = data.waves[i]
        offset = 0
        if len(w) > max_samples:
            if rng is not None:
                offset = int(rng.integers(0, (len(w) - max_samples) // FRAME_HOP + 1)) * FRAME_HOP
            w = w[offset:offset + max_samples]
        waves.append(torch.from_numpy(w))
        offsets.append(offset)
    return Batch(torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([len(w) for w in waves]),
                 torch.from_numpy(data.emotion[idx]), torch.from_numpy(data.gender[idx]),
                 torch.from_numpy(np.asarray(idx)), torch.tensor(offsets))


def epoch_batches(data: AudioSet, batch_size: int, max_seconds: float, rng: np.random.Generator | None):
    """One pass over ``data`` in length-bucketed batches (random order and crops when ``rng``)."""
    max_samples = int(max_seconds * SAMPLE_RATE)
    for idx in bucket_batches(np.minimum(data.lengths, max_samples), batch_size, rng):
        yield make_batch(data, idx, max_samples, rng)
