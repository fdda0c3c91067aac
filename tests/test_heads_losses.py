"""Heads, losses and metrics against hand computations and reference libraries."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from gmptl.heads import AMSoftmax, BiLSTMPool, LayerSelect, LinearP
from gmptl.losses import am_softmax_loss, masked_prediction_loss, multitask_loss
from gmptl.metrics import scores


def test_am_softmax_hand_computed():
    head = AMSoftmax(3, 3)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3) * torch.tensor([[2.0], [5.0], [0.1]]))  # norms must not matter
    x = torch.tensor([[3.0, 4.0, 0.0]])  # unit vector (0.6, 0.8, 0)
    cos = head(x)
    assert torch.allclose(cos, torch.tensor([[0.6, 0.8, 0.0]]), atol=1e-6)
    # target 0: logits 30 * (0.6 - 0.2), 30 * 0.8, 30 * 0 = 12, 24, 0
    expected = -12 + math.log(math.exp(12) + math.exp(24) + math.exp(0))
    assert am_softmax_loss(cos, torch.tensor([0]), s=30, m=0.2).item() == pytest.approx(expected, rel=1e-5)
    # target 1: 18 (= 30 * 0.6), 18 (= 30 * (0.8 - 0.2)), 0
    expected = -18 + math.log(2 * math.exp(18) + 1)
    assert am_softmax_loss(cos, torch.tensor([1]), s=30, m=0.2).item() == pytest.approx(expected, rel=1e-5)


def test_am_softmax_without_margin_is_scaled_cosine_ce():
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(16, 5, generator=g) * 2 - 1
    y = torch.randint(0, 5, (16,), generator=g)
    assert torch.allclose(am_softmax_loss(cos, y, s=30, m=0.0), F.cross_entropy(30 * cos, y))
    assert am_softmax_loss(cos, y, s=30, m=0.2) > am_softmax_loss(cos, y, s=30, m=0.0)


def test_bilstm_pool_honours_lengths():
    torch.manual_seed(0)
    pool = BiLSTMPool(8, 6).eval()
    x, lengths = torch.randn(3, 20, 8), torch.tensor([20, 11, 4])
    batch = pool(x, lengths)
    assert batch.shape == (3, 12)
    for i, n in enumerate(lengths.tolist()):
        x_alone = x[i:i + 1, :n]
        assert torch.allclose(batch[i], pool(x_alone, lengths[i:i + 1])[0], atol=1e-5)
    x[1, 11:] = 100.0  # garbage in the padding changes nothing
    assert torch.allclose(pool(x, lengths), batch, atol=1e-5)


def test_linearp_and_layer_select():
    proj = LinearP(4, 8, 3)
    layers = [torch.full((1, 2, 4), float(i)) for i in range(5)]
    assert proj(layers[0]).shape == (1, 2, 3)
    assert torch.equal(LayerSelect(5, -3)(layers), layers[2])
    mixed = LayerSelect(5, None)(layers)  # uniform weights at start: the mean layer
    assert torch.allclose(mixed, torch.full((1, 2, 4), 2.0))
    with pytest.raises(ValueError):
        LayerSelect(5, -6)


def test_multitask_loss():
    g = torch.Generator().manual_seed(1)
    emo, gen = torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)
    y, z = torch.randint(0, 4, (8,), generator=g), torch.randint(0, 2, (8,), generator=g)
    ce_e, ce_g = F.cross_entropy(emo, y), F.cross_entropy(gen, z)
    assert torch.allclose(multitask_loss(emo, gen, y, z, 0.9), 0.9 * ce_e + 0.1 * ce_g)
    assert torch.allclose(multitask_loss(emo, gen, y, z, 1.0), ce_e)
    z_unknown = z.clone()
    z_unknown[:4] = -1
    expected = 0.9 * ce_e + 0.1 * F.cross_entropy(gen[4:], z[4:])
    assert torch.allclose(multitask_loss(emo, gen, y, z_unknown, 0.9), expected)


def test_masked_prediction_loss_counts_masked_valid_frames_only():
    g = torch.Generator().manual_seed(2)
    logits = [torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 9, generator=g)]
    labels = [torch.randint(0, 4, (2, 6), generator=g), torch.randint(0, 9, (2, 6), generator=g)]
    mask = torch.tensor([[1, 1, 0, 0, 1, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    sel = mask & valid
    expected = sum(F.cross_entropy(lg[sel], lb[sel]) for lg, lb in zip(logits, labels))
    assert torch.allclose(masked_prediction_loss(logits, labels, mask, valid), expected)
    changed = [lb.clone() for lb in labels]
    for lb in changed:
        lb[~sel] = 0  # labels of unmasked or padded frames do not matter at weight 0
    assert torch.allclose(masked_prediction_loss(logits, changed, mask, valid), expected)
    assert masked_prediction_loss(logits, labels, mask, valid, unmasked_weight=0.5) > expected


@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_scikit_learn(seed):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, recall_score

    rng = np.random.default_rng(seed)
    labels = ["a", "b", "c", "d", "e"]
    y = rng.integers(0, 4 if seed % 2 else 5, 200)  # odd seeds: class 'e' absent from the truth
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 5, 200))
    s = scores(y, p, labels)
    present = sorted(set(y.tolist()))
    assert s["war"] == pytest.approx(100 * accuracy_score(y, p))
    assert s["uar"] == pytest.approx(100 * recall_score(y, p, labels=present, average="macro"))
    assert s["uar"] == pytest.approx(100 * balanced_accuracy_score(y, p))
    assert s["f1"] == pytest.approx(100 * f1_score(y, p, labels=present, average="macro"))
    assert s["confusion"] == confusion_matrix(y, p, labels=range(5)).tolist()
    per_class = recall_score(y, p, labels=present, average=None)
    assert [s["recall"][labels[i]] for i in present] == pytest.approx(list(100 * per_class))


def test_bilstm_pool_equals_a_packed_bidirectional_lstm():
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(1)
    pool = BiLSTMPool(5, 4).eval()
    reference = torch.nn.LSTM(5, 4, batch_first=True, bidirectional=True)
    with torch.no_grad():  # the same weights, in nn.LSTM's bidirectional layout
        for name, p in pool.lstm_fwd.named_parameters():
            getattr(reference, name).copy_(p)
            getattr(reference, name + "_reverse").copy_(getattr(pool.lstm_bwd, name))
    x, lengths = torch.randn(4, 9, 5), torch.tensor([9, 6, 1, 3])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(reference(packed)[0], batch_first=True, total_length=9)
    expected = out.sum(1) / lengths[:, None]
    assert torch.allclose(pool(x, lengths), expected, atol=1e-6)
