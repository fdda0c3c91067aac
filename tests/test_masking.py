"""Span masks have the statistics HuBERT's masking has."""

from math import comb

import numpy as np
import pytest
import torch

from gmptl.masking import span_mask


def expected_fraction(n: int, p: float, span: int, min_spans: int) -> float:
    """Exact expected masked fraction: k spans, starts drawn without replacement."""
    starts = n - span + 1
    x = p * n / span
    total = 0.0
    for k, weight in ((int(np.floor(x)), 1 - (x - np.floor(x))), (int(np.floor(x)) + 1, x - np.floor(x))):
        k = min(max(k, min_spans), starts)
        # frame i is covered by a start in [i - span + 1, i] ∩ [0, starts - 1]
        covered = [min(i, starts - 1) - max(0, i - span + 1) + 1 for i in range(n)]
        total += weight * np.mean([1 - comb(starts - c, k) / comb(starts, k) for c in covered])
    return total


@pytest.mark.parametrize("p,span", [(0.8, 10), (0.3, 5), (0.05, 10)])
def test_masked_fraction_matches_theory(p, span):
    n, rows = 200, 400
    mask = span_mask(torch.full((rows,), n), p, span, min_spans=2, rng=np.random.default_rng(0))
    measured = mask.float().mean().item()
    expected = expected_fraction(n, p, span, 2)
    # 400 rows x 200 frames: the standard error of the mean is well below 0.01
    assert abs(measured - expected) < 0.01, (measured, expected)


def test_hubert_defaults_mask_about_half():
    mask = span_mask(torch.full((100,), 250), 0.8, 10, rng=np.random.default_rng(1))
    assert 0.45 < mask.float().mean().item() < 0.6


def test_masks_are_spans_inside_valid_frames():
    lengths = torch.tensor([50, 23, 7, 0])
    mask = span_mask(lengths, 0.5, 10, rng=np.random.default_rng(2))
    assert mask.shape == (4, 50)
    for row, n in enumerate(lengths.tolist()):
        assert not mask[row, n:].any(), "padding must never be masked"
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, mask[row, :n].numpy().astype(int), 0])))[::2]
        # every masked run is one span or several overlapping ones: never shorter than a span
        assert all(r >= min(10, n) for r in runs)
    assert mask[2, :7].all(), "an utterance shorter than a span is masked whole"


def test_masks_are_reproducible_by_seed():
    lengths = torch.tensor([120, 80])
    a = span_mask(lengths, 0.8, 10, rng=np.random.default_rng(5))
    b = span_mask(lengths, 0.8, 10, rng=np.random.default_rng(5))
    c = span_mask(lengths, 0.8, 10, rng=np.random.default_rng(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
