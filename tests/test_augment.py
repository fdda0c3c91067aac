"""Augmentation: statistics of what each one does, and that only training crops get it."""

from math import comb

import numpy as np
import pytest
import soundfile as sf
import torch

from gmptl.augment import Augment, add_noise, reverberate, spec_masks, speed
from gmptl.config import AugmentConfig
from gmptl.corpora import Utterance
from gmptl.data import AudioSet, epoch_batches
from gmptl.encoders import build_encoder
from gmptl.errors import ConfigError


def tone(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_speed_perturbation_scales_the_duration_by_one_over_the_factor(factor):
    wave = tone(3.0)
    assert abs(len(speed(wave, factor)) - len(wave) / factor) <= 1


def test_noise_lands_within_half_a_decibel_of_the_drawn_snr(tmp_path):
    noises = tmp_path / "musan" / "noise" / "free-sound"
    noises.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, rate in enumerate((8000, 16000, 44100)):  # resampled, and short ones looped
        sf.write(noises / f"noise-{i}.wav", 0.2 * rng.standard_normal(int((0.5 + 3 * i) * rate)), rate)
    aug = Augment(AugmentConfig(noise_dir=str(tmp_path / "musan"), noise_prob=1.0, noise_snr=[0.0, 20.0]))
    assert len(aug.noises) == 3
    wave, snrs = tone(2.0), []
    for seed in range(30):
        drawn = aug.draw(np.random.default_rng(seed))
        noise = aug.apply(wave, drawn) - wave
        measured = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
        assert abs(measured - drawn["snr"]) < 0.5
        snrs.append(drawn["snr"])
    assert 0 <= min(snrs) and max(snrs) <= 20 and np.std(snrs) > 3, "uniform over the range"
    assert add_noise(wave, np.ones(10, np.float32), 10.0).shape == wave.shape


def test_reverberation_keeps_length_and_level_and_a_pure_delay_changes_nothing():
    wave = tone(1.0)
    delay = np.zeros(800, np.float32)
    delay[300] = 0.5
    assert np.allclose(reverberate(wave, delay), wave, atol=1e-5)
    room = np.exp(-np.arange(4000) / 800.0) * np.random.default_rng(0).standard_normal(4000)
    out = reverberate(wave, room.astype(np.float32))
    assert out.shape == wave.shape and np.sqrt(np.mean(out ** 2)) == pytest.approx(np.sqrt(np.mean(wave ** 2)), rel=1e-3)
    assert not np.allclose(out, wave, atol=1e-2)


def expected_fraction(n: int, prob: float, span: int, min_spans: int) -> float:
    """The masked share of ``n`` frames under HuBERT's rule (k = floor(prob * n / span + u) spans, at least
    ``min_spans``, starts drawn without replacement), computed exactly: frame j stays unmasked when none of
    the starts that cover it is drawn."""
    starts = n - span + 1
    base = prob * n / span
    ks = {int(np.floor(base)): 1 - (base - np.floor(base)), int(np.floor(base)) + 1: base - np.floor(base)}
    total = 0.0
    for k, p in ks.items():
        k = min(max(k, min_spans), starts)
        covering = [min(j, starts - 1) - max(0, j - span + 1) + 1 for j in range(n)]
        total += p * np.mean([1 - comb(starts - c, k) / comb(starts, k) for c in covering])
    return total


def test_spec_masks_cover_the_share_their_settings_give():
    whisper = build_encoder("random:whisper-tiny")
    cfg = AugmentConfig(time_mask_prob=0.05, time_mask_span=10, freq_mask_prob=0.1, freq_mask_span=8)
    lengths = torch.full((400,), 4 * 16000)  # 4 s: 200 frames each
    masks = spec_masks(whisper, lengths, cfg, np.random.default_rng(0))
    assert masks["frame_mask"].shape == (400, 200) and masks["feature_mask"].shape == (400, 80)
    assert masks["frame_mask"].float().mean() == pytest.approx(expected_fraction(200, 0.05, 10, 2), abs=0.01)
    assert masks["feature_mask"].float().mean() == pytest.approx(expected_fraction(80, 0.1, 8, 1), abs=0.01)
    hubert = build_encoder("random:hubert-tiny")
    assert set(spec_masks(hubert, lengths, cfg, np.random.default_rng(0))) == {"frame_mask"}, "mel bins: Whisper only"
    assert spec_masks(hubert, lengths, AugmentConfig(), np.random.default_rng(0)) == {}, "off by default"
    with pytest.raises(ValueError, match="log-mel"):  # the contract: encoders without features refuse a mask
        hubert(torch.zeros(1, 16000), torch.tensor([16000]), feature_mask=torch.zeros(1, 80, dtype=torch.bool))


def test_whisper_feature_mask_silences_the_masked_mel_bins_only():
    enc = build_encoder("random:whisper-tiny").eval()
    waves, lengths = torch.from_numpy(np.stack([tone(1.0), tone(1.0, seed=1)])), torch.tensor([16000, 12000])
    mask = torch.zeros(2, 80, dtype=torch.bool)
    mask[0, 10:20] = True
    mel, _ = enc.features(waves, lengths)
    masked, _ = enc.features(waves, lengths, mask)
    assert torch.all(masked[0, 10:20] == 0) and torch.equal(masked[0, 20:], mel[0, 20:]) and torch.equal(masked[1], mel[1])


def test_only_training_crops_are_augmented_each_seeded_by_epoch_and_utterance(tmp_path):
    utts = []
    for i in range(6):
        path = tmp_path / f"{i}.wav"
        sf.write(path, tone(2.5, seed=i), 16000)
        utts.append(Utterance(str(i), str(path), "ab"[i % 2], "female", f"s{i}", "1", 2.5))
    aug = Augment(AugmentConfig(speed=[0.9, 1.1]))
    plain, augmented = AudioSet(utts, ["a", "b"]), AudioSet(utts, ["a", "b"], augment=aug)

    def waves(data, seed, key):
        return [b.waves for b in epoch_batches(data, 3, 2.0, None if seed is None else np.random.default_rng(seed), key)]
    for seed in (None, 0):  # evaluation (no rng) and training batches without an augmentation key: untouched
        assert all(torch.equal(a, b) for a, b in zip(waves(plain, seed, None), waves(augmented, seed, None)))
    first, again = waves(augmented, 0, (0, 1)), waves(augmented, 0, (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first, again)), "the same (seed, epoch): the same crops"
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, waves(augmented, 0, (0, 2))))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, waves(plain, 0, None)))


def test_bad_augmentation_settings_are_refused_naming_the_option(tmp_path):
    from gmptl.config import load_config

    with pytest.raises(ConfigError, match="augment.noise_dir"):
        Augment(AugmentConfig(noise_dir=str(tmp_path / "none")))
    with pytest.raises(ConfigError, match="no audio files"):
        Augment(AugmentConfig(rir_dir=str(tmp_path)))
    for bad in ("augment.speed=[3.0]", "augment.noise_snr=[20,5]", "augment.time_mask_prob=1.5"):
        with pytest.raises(ConfigError, match="augment"):
            load_config(None, [bad])
