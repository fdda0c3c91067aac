"""The encoder contract: (waveforms, lengths) -> hidden states of every layer + frame lengths."""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EncoderOutput:
    """What every speech encoder returns.

    Attributes:
        hidden_states: ``num_layers + 1`` tensors of shape (B, T, D): index 0 is the input of the first
            transformer layer, index ``i`` the output of layer ``i`` (the last one after the final layer norm
            where the model has one), so a negative index counts from the top as in the paper's Table 3.
        lengths: (B,) number of valid frames of each utterance; frames past it are padding and carry no meaning.
    """

    hidden_states: list[torch.Tensor]
    lengths: torch.Tensor


class SpeechEncoder(nn.Module):
    """Base class of all encoders: a pretrained model behind one narrow contract.

    Subclasses set ``hidden_size``, ``num_layers`` and ``name``, and implement ``frame_lengths`` and
    ``forward``. Every encoder owns a learned ``mask_embedding`` (D,) that replaces the frames of
    ``frame_mask`` (HuBERT-style masked prediction).
    """

    sample_rate = 16000
    frame_rate = 50.0  # frames per second: 20 ms for every family supported here
    checkpointing = False  # recompute each transformer layer in the backward pass (less memory, more time)
    layerdrop = 0.0  # LayerDrop: chance that training skips each transformer layer (never in eval mode)
    hidden_size: int
    num_layers: int
    name: str

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Number of output frames for inputs of ``lengths`` samples, (B,) -> (B,)."""
        raise NotImplementedError

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, frame_mask: torch.Tensor | None = None,
                feature_mask: torch.Tensor | None = None) -> EncoderOutput:
        """Encode a zero-padded batch.

        Args:
            waveforms: (B, S) float32 mono audio at ``sample_rate``.
            lengths: (B,) valid samples of each row.
            frame_mask: optional (B, T) bool, True where the frame is replaced by ``mask_embedding`` before
                the transformer sees it. ``T`` must equal ``frame_lengths(lengths).max()``.
            feature_mask: optional (B, F) bool over the input features of encoders that have them (Whisper's
                log-mel bins, ``num_mel_bins``): True where a feature is set to 0. Others refuse one.
        """
        raise NotImplementedError

    def run_layer(self, layer: nn.Module, *args, **kwargs):
        """``layer(*args, **kwargs)``, through gradient checkpointing when it is on and gradients are needed."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint
            return checkpoint(layer, *args, use_reentrant=False, **kwargs)
        return layer(*args, **kwargs)

    def drops_layer(self) -> bool:
        """Whether LayerDrop skips the next transformer layer: in training only, with probability ``layerdrop``.

        A skipped layer passes its input through whole (fairseq's and transformers' LayerDrop). The draw
        comes from torch's global generator, so the training loop's seed per micro-batch makes it
        reproducible; with ``layerdrop`` 0 nothing is drawn, and the random stream is as without the option.
        """
        return self.training and self.layerdrop > 0 and bool(torch.rand([]) < self.layerdrop)

    def freeze_frontend(self, frozen: bool = True) -> None:
        """Stop (or restart) training the convolutional front-end."""
        for p in self.frontend_parameters():
            p.requires_grad_(not frozen)

    def frontend_parameters(self):
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-ready facts about this encoder (saved beside every model)."""
        return {"name": self.name, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "sample_rate": self.sample_rate, "frame_rate": self.frame_rate}


def valid_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def exporting() -> bool:
    """True while tracing for ONNX: shortcuts taken on a batch's shape would be frozen into the graph."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def attention_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) bool -> (B, 1, 1, T) additive bias that hides padded keys from attention;
    None when nothing is padded (no bias to add, and SDPA can take a faster kernel)."""
    if not exporting() and bool(valid.all()):
        return None
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def apply_frame_mask(x: torch.Tensor, frame_mask: torch.Tensor | None, embedding: torch.Tensor) -> torch.Tensor:
    """Replace the frames of ``frame_mask`` (B, T) in ``x`` (B, T, D) by ``embedding`` (D,)."""
    if frame_mask is None:
        return x
    if frame_mask.shape != x.shape[:2]:
        raise ValueError(f"frame_mask has shape {tuple(frame_mask.shape)}, frames are {tuple(x.shape[:2])}")
    return torch.where(frame_mask[..., None], embedding.to(x.dtype), x)
