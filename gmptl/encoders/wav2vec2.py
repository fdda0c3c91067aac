"""HuBERT, wav2vec 2.0, WavLM and data2vec-audio (transformers) behind the encoder contract."""

import warnings

import torch
from torch import nn

from .base import EncoderOutput, SpeechEncoder, apply_frame_mask, attention_bias, exporting, valid_mask

FAMILIES = ("hubert", "wav2vec2", "wavlm", "data2vec-audio")


class Wav2Vec2FamilyEncoder(SpeechEncoder):
    """A transformers ``HubertModel``/``Wav2Vec2Model``/``WavLMModel``/``Data2VecAudioModel``.

    The model's own sub-modules run in a loop written out here, for three reasons: every layer's output is
    returned, frames are masked with our own spans (the model's random SpecAugment is switched off), and a
    padded batch gives the same result as its rows one by one. transformers' forward does not guarantee the
    last: the group norm of HuBERT-base's first convolution normalises over the padding too, and
    data2vec-audio's stacked positional convolutions leak it.

    Args:
        model: the transformers model (not a ``...ForCTC`` wrapper).
        name: how this encoder was asked for (saved with models).
        normalize: zero-mean unit-variance input per utterance, as the model's feature extractor did in
            pre-training (``do_normalize`` of its preprocessor config).
    """

    def __init__(self, model: nn.Module, name: str, normalize: bool = False):
        super().__init__()
        self.model, self.name, self.normalize = model, name, normalize
        config = model.config
        self.hidden_size, self.num_layers = config.hidden_size, config.num_hidden_layers
        self.stable_layer_norm = bool(getattr(config, "do_stable_layer_norm", False))
        # Start from the model's own pre-trained mask embedding where it has one.
        init = getattr(model, "masked_spec_embed", None)
        init = init.detach().clone() if init is not None else torch.empty(self.hidden_size).uniform_()
        self.mask_embedding = nn.Parameter(init)
        model.masked_spec_embed = None  # ours replaces it: one mask parameter, not two

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for kernel, stride in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def frontend_parameters(self):
        return list(self.model.feature_extractor.parameters())

    def conv_frontend(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, C, T) convolutional features, padding-independent."""
        x = waveforms[:, None, :]
        config = self.model.config
        for layer, kernel, stride in zip(self.model.feature_extractor.conv_layers, config.conv_kernel,
                                         config.conv_stride):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
            if isinstance(getattr(layer, "layer_norm", None), nn.GroupNorm):
                # Group norm with one group per channel = instance norm over time: valid frames' statistics.
                x = layer.activation(masked_instance_norm(layer.conv(x), lengths, layer.layer_norm))
            else:
                x = layer(x)
        return x

    def positional(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The convolutional relative positional embedding of (B, T, D) zero-padded frames."""
        pos = self.model.encoder.pos_conv_embed
        if not hasattr(pos, "layers"):
            return pos(x)
        # data2vec-audio stacks several convolutions: re-zero the padding after each.
        h = x.transpose(1, 2)
        for layer in pos.layers:
            h = layer(h) * valid[:, None, :]
        return h.transpose(1, 2)

    def forward(self, waveforms, lengths, frame_mask=None, feature_mask=None) -> EncoderOutput:
        if feature_mask is not None:
            raise ValueError(f"{self.name}: feature masks apply to log-mel inputs (Whisper); this encoder takes "
                             "waveforms")
        if self.normalize:
            waveforms = normalize_rows(waveforms, lengths)
        frames = self.frame_lengths(lengths)
        x = self.conv_frontend(waveforms, lengths).transpose(1, 2)  # (B, T, C)
        x = self.model.feature_projection(x)
        x = x[0] if isinstance(x, tuple) else x  # (B, T, D); wav2vec2 also returns the normed input
        x = apply_frame_mask(x, frame_mask, self.mask_embedding)
        valid = valid_mask(frames, x.shape[1])
        x = x * valid[..., None]  # the positional convolution must see zeros past the end
        encoder = self.model.encoder
        x = x + self.positional(x, valid)
        if not self.stable_layer_norm:
            x = encoder.layer_norm(x)
        x = encoder.dropout(x)

        is_wavlm = self.model.config.model_type == "wavlm"
        # WavLM's attention takes the (B, T) key mask; the others an additive bias.
        mask = valid.long() if is_wavlm else attention_bias(valid, x.dtype)
        hidden, position_bias = [x], None
        for i, layer in enumerate(encoder.layers):
            # LayerDrop never skips WavLM's first layer (nor does transformers): it computes the
            # relative position bias that every later layer reuses.
            if (i > 0 or not is_wavlm) and self.drops_layer():
                pass  # skipped: the layer's input passes through
            elif is_wavlm:
                with warnings.catch_warnings():  # torch's notice on WavLM's mixed mask types
                    warnings.filterwarnings("ignore", "Support for mismatched key_padding_mask")
                    x, position_bias = self.run_layer(layer, x, attention_mask=mask, position_bias=position_bias,
                                                      index=i)[:2]
            else:
                x = self.run_layer(layer, x, attention_mask=mask)
                x = x[0] if isinstance(x, tuple) else x
            hidden.append(x)
        if self.stable_layer_norm:
            hidden[-1] = encoder.layer_norm(x)
        return EncoderOutput(hidden, frames)


def masked_instance_norm(x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` (one group per channel) on (B, C, T), statistics over the first ``lengths`` frames.

    Without padding this is ``norm`` itself (except while exporting, where the graph must serve padded
    batches too). Sums over time are matrix products with the (B, T, 1) mask, and the affine map is one
    fused op: this layer has 512 channels at 320 frames per 20 ms, the largest tensor of the whole encoder.
    """
    if not exporting() and bool((lengths >= x.shape[2]).all()):
        return norm(x)
    valid = valid_mask(lengths, x.shape[2]).to(x.dtype)[..., None]  # (B, T, 1)
    count = valid.sum(1, keepdim=True).clamp(min=1)  # (B, 1, 1)
    centred = x - torch.bmm(x, valid) / count
    var = torch.bmm(centred.square(), valid) / count  # (B, C, 1)
    return torch.addcmul(norm.bias[None, :, None], centred, norm.weight[None, :, None] * torch.rsqrt(var + norm.eps))


def normalize_rows(waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per row over its valid samples; padding stays zero."""
    valid = valid_mask(lengths, waveforms.shape[1]).to(waveforms.dtype)
    count = lengths[:, None].to(waveforms.dtype)
    mean = (waveforms * valid).sum(1, keepdim=True) / count
    var = ((waveforms - mean).pow(2) * valid).sum(1, keepdim=True) / count
    return (waveforms - mean) / torch.sqrt(var + 1e-7) * valid

