"""The frozen-encoder probe: mean and standard-deviation pooling of one layer + logistic regression."""

import logging

import numpy as np
import torch
from tqdm import tqdm

from .data import AudioSet, epoch_batches
from .encoders.base import valid_mask
from .metrics import scores

log = logging.getLogger(__name__)


@torch.no_grad()
def pooled_layers(encoder, data: AudioSet, max_seconds: float, batch_size: int = 16) -> np.ndarray:
    """(N, layers, 2 * D) mean and standard deviation over the valid frames of every hidden state."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = np.zeros((len(data), encoder.num_layers + 1, 2 * encoder.hidden_size), dtype=np.float32)
    with tqdm(total=len(data), desc="pooling frozen features", unit="utt", leave=False, disable=None) as bar:
        for batch in epoch_batches(data, batch_size, max_seconds, rng=None):
            enc = encoder(batch.waves.to(device), batch.lengths.to(device))
            h = torch.stack(enc.hidden_states, 1)  # (B, L, T, D)
            m = valid_mask(enc.lengths, h.shape[2]).to(h.dtype)[:, None, :, None]
            n = m.sum(2)
            mean = (h * m).sum(2) / n
            std = (((h - mean[:, :, None]) ** 2 * m).sum(2) / n).sqrt()
            out[batch.index.numpy()] = torch.cat([mean, std], -1).float().cpu().numpy()
            bar.update(len(batch.index))
    return out


def fit_probe(x: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)).fit(x, y)


def probe(encoder, train: AudioSet, valid: AudioSet, test: AudioSet, max_seconds: float, seed: int) -> dict:
    """Choose the layer on validation UAR, then test that layer's probe once."""
    feats = {name: pooled_layers(encoder, data, max_seconds) for name, data in
             (("train", train), ("valid", valid), ("test", test))}
    valid_uar = []
    for layer in range(feats["train"].shape[1]):
        clf = fit_probe(feats["train"][:, layer], train.emotion, seed)
        valid_uar.append(scores(valid.emotion, clf.predict(feats["valid"][:, layer]), train.labels)["uar"])
    best = int(np.argmax(valid_uar))
    log.info("probe: validation UAR per layer %s -> layer %d", [round(u, 1) for u in valid_uar], best)
    clf = fit_probe(feats["train"][:, best], train.emotion, seed)
    return {"layer": best, "valid_uar_per_layer": valid_uar, "predictions": clf.predict(feats["test"][:, best]),
            "probabilities": clf.predict_proba(feats["test"][:, best])}
