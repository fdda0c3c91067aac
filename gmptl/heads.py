"""Heads on encoder frames: layer choice, BiLSTM -> mean pooling (MAP) -> LinearP, AM-Softmax, mean + std pooling."""

import torch
from torch import nn
from torch.nn import functional as F

from .encoders.base import valid_mask


class LayerSelect(nn.Module):
    """Which encoder layer feeds a head: one index (negative counts from the top), or
    a learnable softmax-weighted sum of all layers (``index=None``)."""

    def __init__(self, num_states: int, index: int | None = -1):
        super().__init__()
        if index is not None and not -num_states <= index < num_states:
            raise ValueError(f"layer {index} out of range for {num_states} hidden states")
        self.index = index
        self.weights = nn.Parameter(torch.zeros(num_states)) if index is None else None

    def forward(self, hidden_states: list[torch.Tensor]) -> torch.Tensor:
        if self.index is not None:
            return hidden_states[self.index]
        return sum(w * h for w, h in zip(torch.softmax(self.weights, 0), hidden_states))


class LinearP(nn.Module):
    """The paper's linear projection module: Linear -> ReLU -> Linear."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_size, hidden_size), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_size, output_size))
        self.input_size, self.hidden_size, self.output_size, self.dropout = input_size, hidden_size, output_size, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BiLSTMPool(nn.Module):
    """BiLSTM over valid frames, then length-aware mean pooling: (B, T, D) -> (B, 2H).

    The backward direction runs on each utterance reversed within its own length, so it starts at the
    utterance's last frame, not in the padding: the result equals a packed-sequence BiLSTM (tested) and,
    unlike packing, exports to ONNX.
    """

    def __init__(self, input_size: int, hidden_size: int = 256):
        super().__init__()
        self.lstm_fwd = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.lstm_bwd = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, 2 * hidden_size

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        keep = valid_mask(lengths, frames.shape[1])[..., None].to(frames.dtype)  # (B, T, 1)
        frames = frames * keep
        reverse = reverse_index(lengths, frames.shape[1])[..., None]  # (B, T, 1)
        forward, _ = self.lstm_fwd(frames)
        backward, _ = self.lstm_bwd(frames.gather(1, reverse.expand_as(frames)))
        # The mean over valid frames does not depend on their order: the backward
        # outputs are pooled in reversed order, never put back in time order.
        pooled = torch.cat([(forward * keep).sum(1), (backward * keep).sum(1)], -1)  # (B, 2H)
        return pooled / lengths.clamp(min=1)[:, None].to(pooled.dtype)


def reverse_index(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, T) positions that reverse each row within its length and leave its padding in place."""
    t = torch.arange(max_len, device=lengths.device)[None, :]
    n = lengths[:, None]
    return torch.where(t < n, n - 1 - t, t)


class AMSoftmax(nn.Module):
    """Additive-margin softmax classifier (Wang et al. 2018; the paper's eqs. 2-3).

    ``forward`` returns the cosines (B, C) between L2-normalised features and class weights; the margin and scale
    live in ``losses.am_softmax_loss`` and apply in training only, so a prediction is the argmax of the cosines.
    """

    def __init__(self, input_size: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, input_size))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # fp32: bf16 cosines (error ~4e-3) would move s * cos by ~0.1
            return F.normalize(x.float(), dim=-1) @ F.normalize(self.weight, dim=-1).t()


def mean_std_pool(frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, L, T, D) frames of L layers, (B,) valid frames -> (B, L, 2D): mean and population standard deviation
    over each utterance's valid frames (the frozen probe's features)."""
    m = valid_mask(lengths, frames.shape[2]).to(frames.dtype)[:, None, :, None]  # (B, 1, T, 1)
    n = m.sum(2)
    mean = (frames * m).sum(2) / n
    std = (((frames - mean[:, :, None]) ** 2 * m).sum(2) / n).sqrt()
    return torch.cat([mean, std], -1)
