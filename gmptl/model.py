"""The models: GMP-TL's utterance classifier (stages 1 and 3) and masked predictor (stage 2), the frozen probe."""

import torch
from torch import nn

from .encoders.base import SpeechEncoder
from .heads import AMSoftmax, BiLSTMPool, LayerSelect, LinearP, mean_std_pool


class UtteranceClassifier(nn.Module):
    """Encoder -> layer -> BiLSTM -> mean pooling (MAP) -> LinearP heads (Fig. 1a, 1b right).

    ``layer``: hidden state feeding the head (negative from the top; None: learned weighted sum).
    ``gender``: add the gender head of stage 1's multi-task loss. ``classifier``: ``linear``: LinearP
    gives logits (stage 1, CE-FT); ``amsoftmax``: LinearP gives an embedding scored by cosine against
    class weights (Hybrid-FT). ``lstm_hidden``, ``proj_hidden``, ``embed_size``, ``dropout``: head sizes.
    """

    def __init__(self, encoder: SpeechEncoder, num_classes: int, layer: int | None = -1, gender: bool = True,
                 classifier: str = "linear", lstm_hidden: int = 256, proj_hidden: int = 256,
                 embed_size: int = 128, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.layer = LayerSelect(encoder.num_layers + 1, layer)
        self.pool = BiLSTMPool(encoder.hidden_size, lstm_hidden)
        self.classifier = classifier
        amsoftmax = classifier == "amsoftmax"
        self.emotion = LinearP(self.pool.output_size, proj_hidden, embed_size if amsoftmax else num_classes, dropout)
        if amsoftmax:
            self.amsoftmax = AMSoftmax(embed_size, num_classes)
        self.gender = LinearP(self.pool.output_size, proj_hidden, 2, dropout) if gender else None

    def head_parameters(self):
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder_ids]

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor, frame_mask: torch.Tensor | None = None,
                feature_mask: torch.Tensor | None = None) -> dict:
        """Returns ``emotion`` (B, C) logits or cosines, ``gender`` (B, 2) logits or None,
        and ``pooled`` (B, 2 * lstm_hidden) utterance features. ``frame_mask``, ``feature_mask``:
        SpecAugment-style masks of the encoder's input in training (``augment.spec_masks``)."""
        out = self.encoder(waves, lengths, frame_mask, feature_mask)
        pooled = self.pool(self.layer(out.hidden_states), out.lengths)
        emotion = self.emotion(pooled)
        if self.classifier == "amsoftmax":
            emotion = self.amsoftmax(emotion)
        return {"emotion": emotion, "gender": self.gender(pooled) if self.gender is not None else None,
                "pooled": pooled}


class MaskedPredictor(nn.Module):
    """Stage 2 (Fig. 1b left): span-masked encoder, one LinearP per pseudo-label scale."""

    def __init__(self, encoder: SpeechEncoder, scales: list[int], proj_hidden: int = 256):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(LinearP(encoder.hidden_size, proj_hidden, k) for k in scales)

    def head_parameters(self):
        return list(self.heads.parameters())

    def forward(self, waves, lengths, frame_mask) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Returns per scale (B, T, K) logits, and (B,) frame lengths."""
        out = self.encoder(waves, lengths, frame_mask=frame_mask)
        top = out.hidden_states[-1]
        return [head(top) for head in self.heads], out.lengths


class ProbeClassifier(nn.Module):
    """The frozen-encoder probe as one network: encoder -> one layer -> mean and standard deviation over the
    valid frames -> standardised (the fitted scaler's ``mean`` and ``scale``) -> ``coef`` (C, 2D) and
    ``intercept`` (C,) of the logistic regression, so the logits are its decision function
    (``baselines.probe_classifier`` fills the buffers from scikit-learn's fit).

    ``layer``: the hidden state it pools (0 .. ``encoder.num_layers``, as ``baselines.pooled_layers`` numbers them).
    """

    classifier = "probe"  # what a model directory's config.json names it, and what probability_scale reads
    gender = None

    def __init__(self, encoder: SpeechEncoder, num_classes: int, layer: int):
        super().__init__()
        if not 0 <= layer <= encoder.num_layers:
            raise ValueError(f"probe layer {layer} out of range for {encoder.num_layers + 1} hidden states")
        self.encoder, self.layer = encoder, layer
        features = 2 * encoder.hidden_size
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))
        self.register_buffer("coef", torch.zeros(num_classes, features))
        self.register_buffer("intercept", torch.zeros(num_classes))

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor, frame_mask: torch.Tensor | None = None,
                feature_mask: torch.Tensor | None = None) -> dict:
        """Returns ``emotion`` (B, C) logits, ``gender`` None and ``pooled`` (B, 2D) mean + std features."""
        out = self.encoder(waves, lengths, frame_mask, feature_mask)
        pooled = mean_std_pool(out.hidden_states[self.layer][:, None], out.lengths)[:, 0]  # (B, 2D)
        with torch.autocast(pooled.device.type, enabled=False):  # standardised features amplify bf16 errors
            z = (pooled.float() - self.mean) / self.scale
            return {"emotion": z @ self.coef.t() + self.intercept, "gender": None, "pooled": pooled}
