"""Training-only augmentation (``augment.*``): speed perturbation, additive noise and reverberation of
each training crop, and SpecAugment-style masks of the encoder's input (``spec_masks``).

Never in validation, test, feature dumps or prediction: only the classification stages'
(1 and 3) training batches ask for it; stage 2 keeps its crops aligned to the pseudo-labels.
Each crop's draws come from a generator seeded by (train.seed, epoch, utterance), so a
resumed run sees the same augmented audio.
"""

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from .audio import SAMPLE_RATE, audio_files, audio_info, load_audio, to_mono_resampled
from .config import AugmentConfig
from .errors import ConfigError
from .masking import span_mask

def speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """Kaldi's and SpeechBrain's speed perturbation: resampled as if recorded at ``factor`` x the rate,
    so it lasts 1 / ``factor`` as long, tempo and pitch both moved."""
    return wave if factor == 1.0 else soxr.resample(wave, SAMPLE_RATE * factor, SAMPLE_RATE, quality="HQ")


def add_noise(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``wave`` plus ``noise`` (looped or cut to its length) scaled to ``snr_db`` over the whole crop."""
    noise = np.resize(noise, len(wave))
    gain = math.sqrt(np.mean(wave ** 2) / max(np.mean(noise ** 2), 1e-12) / 10 ** (snr_db / 10))
    return wave + gain * noise


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``wave`` convolved with a room impulse response, aligned on its direct path (its peak), cut to the
    input's length and brought back to the input's RMS level."""
    from scipy.signal import fftconvolve

    peak = int(np.argmax(np.abs(rir)))
    out = fftconvolve(wave, rir)[peak:peak + len(wave)]
    return out * math.sqrt(np.mean(wave ** 2) / max(np.mean(out ** 2), 1e-12))


def recordings(folder: str, what: str) -> list[tuple[str, int, int]]:
    """(path, frames, sample rate) of every audio file under ``folder`` (MUSAN-style: any depth)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"augment.{what}: {root}: no such directory")
    files = audio_files(root)
    if not files:
        raise ConfigError(f"augment.{what}: {root}: no audio files")
    return [(str(p), (info := audio_info(p)).frames, info.sample_rate) for p in files]


class Augment:
    """The waveform augmentations of ``cfg`` for training crops: ``draw`` the settings, ``apply`` them."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.noises = recordings(cfg.noise_dir, "noise_dir") if cfg.noise_dir else []
        self.rirs = recordings(cfg.rir_dir, "rir_dir") if cfg.rir_dir else []

    @staticmethod
    def wanted(cfg: AugmentConfig) -> bool:
        return cfg.speed != [1.0] or bool(cfg.noise_dir or cfg.rir_dir)

    def draw(self, rng: np.random.Generator) -> dict:
        """The settings of one crop: speed factor, and where asked for, a room (its path) and a noise (its
        index in ``noises``, where to start in it, its SNR)."""
        c, out = self.cfg, {"speed": float(rng.choice(self.cfg.speed))}
        if self.rirs and rng.random() < c.rir_prob:
            out["rir"] = self.rirs[rng.integers(len(self.rirs))][0]
        if self.noises and rng.random() < c.noise_prob:
            out.update(noise=int(rng.integers(len(self.noises))), noise_start=float(rng.random()),
                       snr=float(rng.uniform(*c.noise_snr)))
        return out

    def apply(self, wave: np.ndarray, drawn: dict) -> np.ndarray:
        wave = speed(wave, drawn["speed"])
        if "rir" in drawn:
            wave = reverberate(wave, load_audio(drawn["rir"], min_samples=1))
        if "noise" in drawn:
            wave = add_noise(wave, self.noise(drawn["noise"], drawn["noise_start"], len(wave)), drawn["snr"])
        return wave.astype(np.float32)

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(wave, self.draw(rng))

    def noise(self, index: int, where: float, samples: int) -> np.ndarray:
        """``samples`` of noise recording ``index`` at 16 kHz, from a point ``where`` (0-1) into it: only that
        part is read (MUSAN's recordings last minutes)."""
        path, frames, rate = self.noises[index]
        need = min(frames, math.ceil(samples * rate / SAMPLE_RATE) + 1)
        data, _ = sf.read(path, start=int(where * (frames - need)), frames=need, dtype="float32", always_2d=True)
        return to_mono_resampled(data, rate)


def spec_masks(encoder, lengths: torch.Tensor, cfg: AugmentConfig, rng: np.random.Generator) -> dict:
    """SpecAugment-style masks for one training batch, as transformers' fine-tuning applies them:
    ``frame_mask`` (B, T) spans of encoder input frames (``time_mask_prob``, ``time_mask_span``, at least
    2 spans), and for Whisper ``feature_mask`` (B, n_mels) spans of log-mel bins (``freq_mask_prob``,
    ``freq_mask_span``), the same bins over the whole utterance. Empty when both are 0."""
    masks = {}
    if cfg.time_mask_prob > 0:
        frames = encoder.frame_lengths(lengths).cpu()
        masks["frame_mask"] = span_mask(frames, cfg.time_mask_prob, cfg.time_mask_span, rng=rng).to(lengths.device)
    bins = getattr(encoder, "num_mel_bins", 0)
    if cfg.freq_mask_prob > 0 and bins:
        full = torch.full((len(lengths),), bins)
        masks["feature_mask"] = span_mask(full, cfg.freq_mask_prob, cfg.freq_mask_span, min_spans=1,
                                          rng=rng).to(lengths.device)
    return masks
