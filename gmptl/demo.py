"""``make demo``: the embedded default, offline, on generated audio."""

import time

import numpy as np
import torch

from .encoders import build_encoder


def main() -> None:
    # A 3 s synthetic "voice": a gliding harmonic tone with a syllable-rate envelope.
    sr, seconds = 16000, 3.0
    t = np.arange(int(sr * seconds)) / sr
    f0 = 140 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    wave = (0.3 * wave / np.abs(wave).max()).astype(np.float32)

    start = time.perf_counter()
    encoder = build_encoder("whisper-tiny.en")
    loaded = time.perf_counter() - start
    with torch.no_grad():
        start = time.perf_counter()
        out = encoder(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        took = time.perf_counter() - start
    print(f"built-in encoder whisper-tiny.en loaded offline in {loaded:.1f} s (sha256 checked)")
    print(f"encoded {seconds:.0f} s of synthetic audio in {took * 1000:.0f} ms: "
          f"{len(out.hidden_states)} hidden states of {tuple(out.hidden_states[-1].shape)} (B, T, D), "
          f"{int(out.lengths[0])} frames at {encoder.frame_rate:.0f} Hz")
    print("This demo grows with the project: training, predict and timelines come next (see README).")


if __name__ == "__main__":
    main()
