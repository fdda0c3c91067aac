"""Span masks have the statistics HuBERT's masking has."""

from math import comb

import numpy as np
import pytest
import torch

from gmptl.masking import span_mask


def fairseq_row(n: int, p: float, span: int, min_spans: int, rng: np.random.Generator) -> np.ndarray:
    """One utterance's mask by the rule of fairseq's ``compute_mask_indices`` (``mask_type="static"``,
    ``no_overlap=False``), which HuBERT pre-training uses: ``max(min_masks, int(p * n / span + u))`` spans whose
    starts are drawn without replacement from the ``n - span`` positions ``0 .. n - span - 1``."""
    k = max(min_spans, int(p * n / span + rng.random()))
    shortest = span if n - span > k else n - k - 1
    starts = rng.choice(n - shortest, k, replace=False)
    covered = (starts[:, None] + np.arange(span)).ravel()
    mask = np.zeros(n, dtype=bool)
    mask[covered[covered < n]] = True
    return mask


def expected_fraction(n: int, p: float, span: int, min_spans: int, starts: int) -> float:
    """Exact expected masked fraction when ``k`` spans start at distinct positions of ``0 .. starts - 1``,
    ``k`` being ``floor(p * n / span)`` or one more, by the fractional part (at least ``min_spans``)."""
    x = p * n / span
    total = 0.0
    for k, weight in ((int(np.floor(x)), 1 - (x - np.floor(x))), (int(np.floor(x)) + 1, x - np.floor(x))):
        k = min(max(k, min_spans), starts)
        # frame i is covered by the starts in [i - span + 1, i] within [0, starts - 1]
        covered = [max(0, min(i, starts - 1) - max(0, i - span + 1) + 1) for i in range(n)]
        total += weight * np.mean([1 - comb(starts - c, k) / comb(starts, k) for c in covered])
    return total


@pytest.mark.parametrize("p,span", [(0.8, 10), (0.3, 5), (0.05, 10)])
def test_masked_fraction_follows_hubert_rule(p, span):
    """gmptl masks the fraction fairseq's rule masks. One deliberate difference: a span may end on the last
    frame (``n - span + 1`` starts; fairseq's ``n - span`` never reach it), which moves the fraction by less
    than 0.005 at 200 frames."""
    n, rows, rng = 200, 400, np.random.default_rng(0)
    ours = span_mask(torch.full((rows,), n), p, span, min_spans=2, rng=rng).numpy()
    theirs = np.stack([fairseq_row(n, p, span, 2, rng) for _ in range(rows)])
    # 400 rows of 200 frames: the standard error of each mean is well below 0.005
    assert abs(theirs.mean() - expected_fraction(n, p, span, 2, starts=n - span)) < 0.01, "the reference formula"
    assert abs(ours.mean() - expected_fraction(n, p, span, 2, starts=n - span + 1)) < 0.01
    assert abs(ours.mean() - theirs.mean()) < 0.015
    assert abs(expected_fraction(n, p, span, 2, n - span + 1) - expected_fraction(n, p, span, 2, n - span)) < 0.005
    assert not theirs[:, -1].any() and (p < 0.1 or ours[:, -1].any()), "the one difference: the last frame"


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
