"""HuBERT-style span masking of encoder frames (stage 2's masked prediction)."""

import numpy as np
import torch


def span_mask(frame_lengths: torch.Tensor, mask_prob: float = 0.8, span: int = 10, min_spans: int = 2,
              rng: np.random.Generator | None = None) -> torch.Tensor:
    """Random spans of frames to mask, as in HuBERT / wav2vec 2.0 pre-training.

    Each utterance of ``n`` valid frames gets ``k = floor(mask_prob * n / span + u)`` spans
    (``u`` uniform in [0, 1), so ``k`` is ``mask_prob * n / span`` on average, and at least ``min_spans``)
    whose starts are drawn without replacement from the ``n - span + 1`` possible ones. Spans overlap, so
    the masked fraction is below ``mask_prob``: about 0.5 for HuBERT's 0.8 and 10. Padding is never masked.
    This is fairseq's ``compute_mask_indices`` rule, but for one deliberate difference: fairseq draws starts
    from ``n - span`` positions, so its spans never reach the last frame; here they may (the masked fraction
    moves by under 0.005 at 200 frames).

    ``frame_lengths`` (B,) valid frames of each utterance -> (B, T) bool, True on masked frames, with
    ``T = frame_lengths.max()``; a seeded ``rng`` makes masks reproducible.
    """
    rng = np.random.default_rng() if rng is None else rng
    lengths = frame_lengths.tolist()
    mask = np.zeros((len(lengths), max(lengths, default=0)), dtype=bool)
    for row, n in enumerate(lengths):
        if n <= 0:
            continue
        width = min(span, n)
        starts_available = n - width + 1
        k = int(mask_prob * n / span + rng.random())
        k = min(max(k, min_spans), starts_available)
        starts = rng.choice(starts_available, size=k, replace=False)
        mask[row, (starts[:, None] + np.arange(width)).ravel()] = True
    return torch.from_numpy(mask).to(frame_lengths.device)
