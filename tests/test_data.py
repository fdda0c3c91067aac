"""Batches: length buckets keep padding low, crops are frame-aligned, seeds reproduce."""

import numpy as np
import soundfile as sf
import torch

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
    first = next(iter(epoch_batches(data, 3, 2.0, None)))
    assert first.offset.tolist() == [0, 0, 0], "evaluation crops start at the beginning"


def corpus_files(tmp_path, count: int = 24) -> list[Utterance]:
    """Utterances of 0.5 to 7 s at four sample rates, durations from the header (as load_corpus reads them)."""
    rng, utts = np.random.default_rng(0), []
    for i in range(count):
        rate = (16000, 44100, 48000, 22050)[i % 4]
        n = int(rng.uniform(0.5, 7.0) * rate)
        path = tmp_path / f"{i}.wav"
        sf.write(path, rng.standard_normal(n) * 0.1, rate)
        utts.append(Utterance(str(i), str(path), "ab"[i % 2], "female", f"s{i % 5}", "1", sf.info(path).duration))
    return utts


def test_decoded_on_demand_by_workers_gives_the_batches_held_in_memory_gives(tmp_path):
    utts = corpus_files(tmp_path)
    memory = AudioSet(utts, ["a", "b"])
    lazy = AudioSet(utts, ["a", "b"], cache_mb=0, workers=2)
    assert memory.waves is not None and lazy.waves is None, "0 MB of cache: nothing held"
    assert np.array_equal(memory.lengths, lazy.lengths), "header lengths are the decoded lengths"
    for seed in (0, 1, None):
        rng = lambda: None if seed is None else np.random.default_rng(seed)  # noqa: E731
        held, decoded = list(epoch_batches(memory, 5, 2.0, rng())), epoch_batches(lazy, 5, 2.0, rng())
        assert len(decoded) == len(held)
        for a, b in zip(held, decoded):
            assert a.index.tolist() == b.index.tolist() and a.offset.tolist() == b.offset.tolist()
            assert torch.equal(a.waves, b.waves) and torch.equal(a.lengths, b.lengths)


def test_a_file_that_fails_to_decode_is_left_out_and_named(tmp_path):
    utts = corpus_files(tmp_path, 6)
    bad = tmp_path / "nan.wav"  # a sound header, NaN samples: found only by decoding
    sf.write(bad, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    utts.append(Utterance("nan", str(bad), "a", "male", "s9", "1", 1.0))
    memory = AudioSet(utts, ["a", "b"])
    assert len(memory) == 6 and [e.path for e in memory.failed] == [str(bad)], "left out on loading"
    lazy = AudioSet(utts, ["a", "b"], cache_mb=0, workers=1)
    assert len(lazy) == 7 and not lazy.failed
    seen = [i for b in epoch_batches(lazy, 3, 8.0, None) for i in b.index.tolist()]
    assert sorted(seen) == [i for i in range(7) if utts[i].path != str(bad)], "its batch goes on without it"
    assert [e.path for e in lazy.failed] == [str(bad)] and "NaN" in lazy.failed[0].reason


def test_the_plan_draws_what_the_batches_held_in_memory_always_drew(tmp_path):
    """The order and crops of the loader before DataLoader workers, written out here: buckets from the seeded
    generator, then each batch's crop offsets drawn in turn from the same generator."""
    utts = corpus_files(tmp_path, 20)
    data, max_samples = AudioSet(utts, ["a", "b"], cache_mb=0), 2 * 16000
    rng = np.random.default_rng(7)
    expected = []
    for idx in bucket_batches(np.minimum(data.lengths, max_samples), 4, rng):
        offsets = [int(rng.integers(0, (n - max_samples) // FRAME_HOP + 1)) * FRAME_HOP if n > max_samples else 0
                   for n in data.lengths[idx]]
        expected.append((idx.tolist(), offsets))
    got = [(b.index.tolist(), b.offset.tolist()) for b in epoch_batches(data, 4, 2.0, np.random.default_rng(7))]
    assert got == expected
