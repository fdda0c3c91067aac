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


def log_mel(wave: torch.Tensor, filters: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Whisper's normalised log-mel spectrogram of one utterance, (S,) -> (n_mels, S // HOP)."""
    stft = torch.stft(wave, N_FFT, HOP, window=window, return_complex=True)
    power = stft[..., :-1].abs().pow(2)  # Whisper drops the last (half-empty) frame
    spec = torch.clamp(filters @ power, min=1e-10).log10()
    spec = torch.maximum(spec, spec.max() - 8.0)  # 80 dB dynamic range, per utterance
    return (spec + 4.0) / 4.0


class WhisperSpeechEncoder(SpeechEncoder):
    """A transformers ``WhisperEncoder`` driven on inputs of any length up to 30 s.

    Whisper pads every input to 30 s; here the positional embeddings are sliced to
    the longest utterance of the batch and padded frames are hidden from attention,
    so a short clip costs what it lasts and a padded batch equals its rows one by one.

    Args:
        model: a ``transformers.models.whisper.modeling_whisper.WhisperEncoder``.
        name: how this encoder was asked for (saved with models).
    """

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.name = name
        config = model.config
        self.hidden_size = config.d_model
        self.num_layers = config.encoder_layers
        self.max_samples = config.max_source_positions * 2 * HOP
        self.register_buffer("filters", mel_filters(config.num_mel_bins), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        # Whisper was never trained with masking: the embedding starts as the mean
        # positional-free input scale (zeros) and is learned in stage 2.
        self.mask_embedding = nn.Parameter(torch.zeros(self.hidden_size))

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        mel = lengths // HOP
        return (mel + 1) // 2  # conv2: kernel 3, stride 2, padding 1

    def frontend_parameters(self):
        return [*self.model.conv1.parameters(), *self.model.conv2.parameters()]

    def features(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) audio -> (B, n_mels, M) zero-padded log-mel and (B,) mel frame counts."""
        if int(lengths.max()) > self.max_samples:
            raise EncoderError(f"{self.name} takes at most {self.max_samples / self.sample_rate:.0f} s of audio "
                               f"at once, got {int(lengths.max()) / self.sample_rate:.1f} s: use windows")
        # One utterance at a time: the STFT's reflect padding and the per-utterance
        # maximum must not see the batch's zero padding.
        mels = [log_mel(w[: int(n)], self.filters, self.window) for w, n in zip(waveforms, lengths)]
        mel_lengths = lengths // HOP
        out = waveforms.new_zeros(len(mels), self.filters.shape[0], int(mel_lengths.max()))
        for i, m in enumerate(mels):
            out[i, :, : m.shape[1]] = m
        return out, mel_lengths

    def forward(self, waveforms, lengths, frame_mask=None) -> EncoderOutput:
        m = self.model
        mel, mel_lengths = self.features(waveforms, lengths)
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
            x = layer(x, bias)
            hidden.append(x)
        hidden[-1] = m.layer_norm(x)
        return EncoderOutput(hidden, frames)
