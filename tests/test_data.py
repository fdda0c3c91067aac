"""Batches: length buckets keep padding low, crops are frame-aligned, seeds reproduce."""

import numpy as np
import soundfile as sf

from gmptl.corpora import Utterance
from gmptl.data import FRAME_HOP, AudioSet, bucket_batches, epoch_batches, padding_fraction


def test_buckets_pad_under_ten_percent_where_random_batches_do_not():
    rng = np.random.default_rng(0)
    lengths = rng.integers(16000 * 2, 16000 * 6, 1000)  # 2-6 s, like acted corpora
    buckets = bucket_batches(lengths, 16, np.random.default_rng(1))
    random = [g for g in np.array_split(rng.permutation(1000), 1000 // 16)]
    assert sorted(np.concatenate(buckets).tolist()) == list(range(1000)), "every utterance once"
    assert padding_fraction(lengths, buckets) < 0.10 < padding_fraction(lengths, random)
    again = bucket_batches(lengths, 16, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(buckets, again))


def test_crops_are_random_frame_aligned_and_bounded(tmp_path):
    utts = []
    for i, seconds in enumerate([0.5, 3.0, 7.3]):
        path = tmp_path / f"{i}.wav"
        sf.write(path, np.random.default_rng(i).standard_normal(int(seconds * 16000)) * 0.1, 16000)
        utts.append(Utterance(str(i), str(path), "a", "female", "s", "1", seconds))
    data = AudioSet(utts, ["a"])
    rng = np.random.default_rng(0)
    for batch in epoch_batches(data, 3, 2.0, rng):
        assert batch.lengths.max() <= 32000
        for row, (i, offset) in enumerate(zip(batch.index.tolist(), batch.offset.tolist())):
            n = int(batch.lengths[row])
            assert offset % FRAME_HOP == 0
            assert np.array_equal(batch.waves[row, :n].numpy(), data.waves[i][offset:offset + n])
    offsets = {tuple(b.offset.tolist()) for seed in range(5)
               for b in epoch_batches(data, 3, 2.0, np.random.default_rng(seed))}
    assert len(offsets) > 1, "crops move between epochs"
    first = next(epoch_batches(data, 3, 2.0, None))
    assert first.offset.tolist() == [0, 0, 0], "evaluation crops start at the beginning"
