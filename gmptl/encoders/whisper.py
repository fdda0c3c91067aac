"""Whisper encoders on variable-length input: log-mel front-end, no padding to 30 s."""

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import EncoderError
from .base import EncoderOutput, SpeechEncoder, apply_frame_mask, attention_bias, valid_mask

N_FFT, HOP = 400, 160  # 25 ms windows, 10 ms hop at 16 kHz, as Whisper was trained


def mel_filters(n_mels: int, sample_rate: int = 16000) -> torch.Tensor:
    """(n_mels, N_FFT // 2 + 1) Slaney mel filters, as Whisper's feature extractor builds them."""
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                         max_frequency=8000.0, sampling_rate=sample_rate, norm="slaney", mel_scale="slaney")
    return torch.from_numpy(fb.T).float()


def dft_kernels(window: torch.Tensor) -> torch.Tensor:
    """(2 * (N_FFT // 2 + 1), 1, N_FFT) windowed cosine and sine rows: an STFT as one strided convolution."""
    k = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)[:, None]
    m = torch.arange(N_FFT, dtype=torch.float64)[None, :]
    angle = 2 * torch.pi * k * m / N_FFT
    w = window.double()[None, :]
    return torch.cat([torch.cos(angle) * w, -torch.sin(angle) * w]).float()[:, None, :]


def reflect_index(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """(B, total + N_FFT) sample positions of each row reflect-padded by N_FFT // 2 within its own length.

    This is ``torch.stft(center=True)``'s padding, row by row, as one gather: the frames near the end of
    a short row see its own reflection, not the batch's zeros.
    """
    pos = torch.arange(total + N_FFT, device=lengths.device)[None, :] - N_FFT // 2
    n = lengths[:, None]
    pos = torch.where(pos < 0, -pos, pos)
    pos = torch.where(pos >= n, 2 * (n - 1) - pos, pos)
    return pos.clamp(0, total - 1)  # far in a row's padding: any sample, those frames are masked


class WhisperSpeechEncoder(SpeechEncoder):
    """A transformers ``WhisperEncoder`` driven on inputs of any length up to 30 s.

    Whisper pads every input to 30 s; here the positional embeddings are sliced to the longest utterance
    of the batch and padded frames are hidden from attention, so a short clip costs what it lasts and a
    padded batch equals its rows one by one. ``name``: how this encoder was asked for (saved with models).
    """

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model, self.name = model, name
        config = model.config
        self.hidden_size, self.num_layers = config.d_model, config.encoder_layers
        self.max_samples = config.max_source_positions * 2 * HOP
        self.num_mel_bins = config.num_mel_bins
        self.register_buffer("filters", mel_filters(config.num_mel_bins), persistent=False)
        self.register_buffer("dft", dft_kernels(torch.hann_window(N_FFT)), persistent=False)
        # Whisper was never trained with masking: the embedding starts as the mean positional-free input
        # scale (zeros) and is learned in stage 2.
        self.mask_embedding = nn.Parameter(torch.zeros(self.hidden_size))

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return (lengths // HOP + 1) // 2  # mel frames, then conv2: kernel 3, stride 2, padding 1

    def frontend_parameters(self):
        return [*self.model.conv1.parameters(), *self.model.conv2.parameters()]

    def features(self, waveforms: torch.Tensor, lengths: torch.Tensor,
                 feature_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) audio -> (B, n_mels, S // HOP) Whisper log-mel, zero past each row's end; (B,) mel lengths.

        Equal to Whisper's feature extractor on each utterance alone (the STFT with its reflect padding,
        power, Slaney mel, log10, 80 dB floor below the utterance's own maximum, scaling), computed for the
        whole batch at once. ``feature_mask`` (B, n_mels): bins set to 0 (SpecAugment, training only), as
        transformers' ``mask_feature_prob`` does to Whisper's input features.
        """
        if not torch.jit.is_tracing() and int(lengths.max()) > self.max_samples:
            raise EncoderError(f"{self.name} takes at most {self.max_samples / self.sample_rate:.0f} s of audio "
                               f"at once, got {int(lengths.max()) / self.sample_rate:.1f} s: use windows")
        padded = waveforms.gather(1, reflect_index(lengths, waveforms.shape[1]))  # (B, S + N_FFT)
        spec = F.conv1d(padded[:, None, :], self.dft, stride=HOP)  # (B, 2F, S // HOP + 1)
        half = spec.shape[1] // 2
        power = (spec[:, :half] ** 2 + spec[:, half:] ** 2)[..., :-1]  # Whisper drops the last frame
        mel = torch.clamp(self.filters @ power, min=1e-10).log10()  # (B, n_mels, M)
        mel_lengths = lengths // HOP
        valid = valid_mask(mel_lengths, mel.shape[2])[:, None, :]
        peak = mel.masked_fill(~valid, -torch.inf).amax(dim=(1, 2), keepdim=True)
        mel = (torch.maximum(mel, peak - 8.0) + 4.0) / 4.0  # 80 dB below the utterance's peak
        if feature_mask is not None:
            mel = mel.masked_fill(feature_mask[:, :, None], 0.0)
        return mel * valid.to(mel.dtype), mel_lengths

    def forward(self, waveforms, lengths, frame_mask=None, feature_mask=None) -> EncoderOutput:
        m = self.model
        with torch.autocast(waveforms.device.type, enabled=False):  # the log-mel in fp32 under bf16 autocast
            mel, mel_lengths = self.features(waveforms.float(), lengths, feature_mask)
        x = F.gelu(m.conv1(mel))  # (B, D, M)
        # conv2 must see zeros past each utterance, as it does when run alone.
        x = x * valid_mask(mel_lengths, x.shape[2])[:, None, :]
        x = F.gelu(m.conv2(x)).transpose(1, 2)  # (B, T, D)
        frames = self.frame_lengths(lengths)
        x = apply_frame_mask(x, frame_mask, self.mask_embedding)
        x = x + m.embed_positions.weight[: x.shape[1]]
        x = F.dropout(x, p=m.dropout, training=self.training)
        bias = attention_bias(valid_mask(frames, x.shape[1]), x.dtype)
        hidden = [x]
        for layer in m.layers:
            if not self.drops_layer():
                x = self.run_layer(layer, x, bias)
            hidden.append(x)
        hidden[-1] = m.layer_norm(x)
        return EncoderOutput(hidden, frames)
