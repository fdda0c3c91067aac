"""Heads on encoder frames: layer choice, BiLSTM -> mean pooling (MAP) -> LinearP, AM-Softmax."""

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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
        w = torch.softmax(self.weights, 0)
        return sum(wi * h for wi, h in zip(w, hidden_states))


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
    """BiLSTM over valid frames, then length-aware mean pooling: (B, T, D) -> (B, 2H)."""

    def __init__(self, input_size: int, hidden_size: int = 256):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=True)
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, 2 * hidden_size

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Packing keeps the backward direction from starting in the padding.
        packed = pack_padded_sequence(frames, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=frames.shape[1])  # (B, T, 2H)
        mask = valid_mask(lengths, out.shape[1]).to(out.dtype)[..., None]
        return (out * mask).sum(1) / mask.sum(1).clamp(min=1)


class AMSoftmax(nn.Module):
    """Additive-margin softmax classifier (Wang et al. 2018; the paper's eqs. 2-3).

    ``forward`` returns the cosines (B, C) between L2-normalised features and class
    weights; the margin and scale live in ``losses.am_softmax_loss`` and apply in
    training only, so a prediction is the argmax of the cosines.
    """

    def __init__(self, input_size: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, input_size))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).t()
