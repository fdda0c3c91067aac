"""Utterances, training crops and length-bucketed batches, decoded on demand by DataLoader workers.

A split whose audio fits ``data.cache_mb`` (float32 at 16 kHz: 230 MB an hour) is
decoded once and held in memory, as small corpora always were; a larger one is
decoded batch by batch in ``train.workers`` processes, so memory holds a few
batches whatever the corpus's size. Either way an epoch's plan (which utterances
go together, where each crop starts) is drawn first from lengths alone, so the
same seed gives the same batches in both cases.
"""

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from .audio import SAMPLE_RATE, load_audio
from .config import DataConfig
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
    failed: list = field(default_factory=list)  # AudioErrors of the planned utterances left out

    def to(self, device) -> "Batch":
        """Audio, lengths and labels on ``device``; ``index`` and ``offset`` stay on the CPU (bookkeeping)."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.waves), move(self.lengths), move(self.emotion), move(self.gender),
                     self.index, self.offset, self.failed)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


class AudioSet(torch.utils.data.Dataset):
    """The labelled utterances of one split, held in memory when they fit ``cache_mb``, else decoded on demand.

    Lengths come from the file headers (``Utterance.duration``), so nothing is decoded
    to plan batches. A file that fails to decode is logged with its reason and left out
    (``failed``): at once when the split is held in memory, from its batch otherwise.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, utterances: list[Utterance], labels: list[str], desc: str = "audio",
                 cache_mb: float = DataConfig.cache_mb, workers: int | None = None, augment=None):
        self.labels, self.failed, self.augment = list(labels), [], augment  # augment: an augment.Augment
        self.workers = default_workers() if workers is None else workers
        seconds = sum(u.duration for u in utterances)
        self.waves = None  # in memory: one (S,) float32 array per utterance
        if seconds * SAMPLE_RATE * 4 <= cache_mb * 2 ** 20:
            kept, self.waves = [], []
            for u in tqdm(utterances, desc=f"loading {desc}", unit="file", leave=False, disable=None):
                try:
                    self.waves.append(load_audio(u.path))
                    kept.append(u)
                except AudioError as e:
                    self.fail(e)
            utterances = kept
        else:
            log.info("%s: %.1f h of audio, over data.cache_mb=%g: decoded on demand by %d worker(s)",
                     desc, seconds / 3600, cache_mb, self.workers)
        self.utterances = list(utterances)
        index = {label: i for i, label in enumerate(labels)}
        self.emotion = np.array([index[u.emotion] for u in self.utterances], dtype=np.int64)
        self.gender = np.array([GENDERS.index(u.gender) if u.gender in GENDERS else -1
                                for u in self.utterances], dtype=np.int64)
        if self.waves is not None:
            self.lengths = np.array([len(w) for w in self.waves], dtype=np.int64)
        else:  # what the decoder gives: round(frames * 16000 / rate)
            self.lengths = np.array([round(u.duration * SAMPLE_RATE) for u in self.utterances], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.utterances)

    def fail(self, error: AudioError) -> None:
        if all(e.path != error.path for e in self.failed):
            log.warning("skipping %s", error)
            self.failed.append(error)

    def __getitem__(self, item: tuple) -> tuple[int, int, np.ndarray | AudioError]:
        """(index, crop offset, at most ``max_samples`` samples from the offset, or the AudioError) of an item
        (index, offset, max_samples[, augmentation seed]): augmented when a seed comes and ``augment`` is set."""
        i, offset, max_samples, *seed = item
        try:
            wave = self.waves[i] if self.waves is not None else load_audio(self.utterances[i].path)
        except AudioError as e:
            return i, offset, e
        wave = wave[offset:offset + max_samples]
        if seed and self.augment is not None:
            wave = self.augment(wave, np.random.default_rng([*seed[0], i]))[:max_samples]
        return i, offset, wave

    def collate(self, items: list[tuple[int, int, np.ndarray | AudioError]]) -> Batch:
        failed = [w for _, _, w in items if isinstance(w, AudioError)]
        items = [it for it in items if not isinstance(it[2], AudioError)]
        idx = np.array([i for i, _, _ in items], dtype=np.int64)
        waves = [torch.from_numpy(np.ascontiguousarray(w)) for _, _, w in items]
        return Batch(torch.nn.utils.rnn.pad_sequence(waves, batch_first=True) if waves else torch.zeros(0, 0),
                     torch.tensor([len(w) for w in waves], dtype=torch.long),
                     torch.from_numpy(self.emotion[idx]), torch.from_numpy(self.gender[idx]),
                     torch.from_numpy(idx), torch.tensor([o for _, o, _ in items], dtype=torch.long), failed)


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Indices grouped by similar length so little of a batch is padding.

    Sorting by length (ties broken at random) and cutting into consecutive groups
    keeps padding to a few percent; the order of the groups is shuffled when
    ``rng`` is given, so batches still come in a random order.
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


def crop_offsets(lengths: np.ndarray, max_samples: int, rng: np.random.Generator | None) -> list[int]:
    """Where each crop starts: a random frame-aligned offset (``rng``) or 0 for utterances longer than
    ``max_samples``; 0 for the others."""
    return [int(rng.integers(0, (n - max_samples) // FRAME_HOP + 1)) * FRAME_HOP if rng is not None
            and n > max_samples else 0 for n in lengths]


def batch_plan(data: AudioSet, batch_size: int, max_seconds: float, rng: np.random.Generator | None,
               augment: tuple | None = None) -> list[list[tuple]]:
    """One pass over ``data`` as batches of (index, crop offset, max samples[, ``augment``]), drawn from
    lengths alone (random order and crops when ``rng``): small, whatever the corpus's size. ``augment``,
    a seed such as (train.seed, epoch), asks for ``data.augment`` on every crop."""
    max_samples = int(max_seconds * SAMPLE_RATE)
    plan = []
    for idx in bucket_batches(np.minimum(data.lengths, max_samples), batch_size, rng):
        offsets = crop_offsets(data.lengths[idx], max_samples, rng)
        plan.append([(int(i), o, max_samples, *([augment] if augment else [])) for i, o in zip(idx, offsets)])
    return plan


def make_batch(data: AudioSet, idx: np.ndarray, max_samples: int, rng: np.random.Generator | None) -> Batch:
    """Collate ``idx`` into a padded batch, crops drawn from ``rng`` (from the start without one)."""
    offsets = crop_offsets(data.lengths[idx], max_samples, rng)
    return data.collate([data[int(i), o, max_samples] for i, o in zip(idx, offsets)])


class Batches:
    """One pass over an AudioSet's planned batches: in this process when the split is in memory (or
    ``workers`` is 0), else from a DataLoader whose workers decode them. Left-out files join ``data.failed``."""

    def __init__(self, data: AudioSet, plan: list[list[tuple]]):
        self.data, self.plan = data, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        data = self.data
        if data.waves is not None or data.workers == 0:
            batches = (data.collate([data[item] for item in batch]) for batch in self.plan)
        else:
            batches = torch.utils.data.DataLoader(data, batch_sampler=self.plan, collate_fn=data.collate,
                                                  num_workers=data.workers)
        for batch in batches:
            for error in batch.failed:
                data.fail(error)
            if len(batch.index):
                yield batch


def epoch_batches(data: AudioSet, batch_size: int, max_seconds: float, rng: np.random.Generator | None,
                  augment: tuple | None = None) -> Batches:
    """One pass over ``data`` in length-bucketed batches (random order and crops when ``rng``; ``augment``:
    see ``batch_plan``)."""
    return Batches(data, batch_plan(data, batch_size, max_seconds, rng, augment))
