"""The losses of the three stages, as pure functions."""

import torch
from torch.nn import functional as F


def multitask_loss(emotion_logits, gender_logits, emotion, gender, alpha: float = 0.9) -> torch.Tensor:
    """Stage 1 (eq. 1): ``alpha * CE(emotion) + (1 - alpha) * CE(gender)``.

    Utterances of unknown gender (label -1) count for the emotion term only; with
    ``alpha = 1`` this is plain fine-tuning (the paper's MPs variant).
    """
    loss = F.cross_entropy(emotion_logits, emotion)
    if alpha < 1.0 and gender_logits is not None and (gender >= 0).any():
        loss = alpha * loss + (1.0 - alpha) * F.cross_entropy(gender_logits, gender, ignore_index=-1)
    return loss


def am_softmax_loss(cosines: torch.Tensor, targets: torch.Tensor, s: float = 30.0, m: float = 0.2) -> torch.Tensor:
    """Stage 3 (eqs. 2-3): cross-entropy of ``s * (cos - m * onehot(target))``.

    ``cosines`` (B, C) between normalised features and class weights; ``targets`` (B,) class indices.
    """
    margin = F.one_hot(targets, cosines.shape[1]).to(cosines.dtype) * m
    return F.cross_entropy(s * (cosines - margin), targets)


def masked_prediction_loss(logits: list[torch.Tensor], labels: list[torch.Tensor], frame_mask: torch.Tensor,
                           valid: torch.Tensor, unmasked_weight: float = 0.0) -> torch.Tensor:
    """Stage 2: sum over scales of the CE on masked frames (+ weighted CE on unmasked ones).

    Per scale, ``logits`` (B, T, K_scale) and ``labels`` (B, T) cluster ids (any value on padding);
    ``frame_mask`` (B, T) True where the input frame was masked, ``valid`` (B, T) True on real frames.
    """
    total = logits[0].new_zeros(())
    masked, unmasked = frame_mask & valid, ~frame_mask & valid
    for scale_logits, scale_labels in zip(logits, labels):
        if masked.any():
            total = total + F.cross_entropy(scale_logits[masked], scale_labels[masked])
        if unmasked_weight > 0 and unmasked.any():
            total = total + unmasked_weight * F.cross_entropy(scale_logits[unmasked], scale_labels[unmasked])
    return total
