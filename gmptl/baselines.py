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


def fit_probe(x: np.ndarray, y: np.ndarray, seed: int, c: float = 1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed)).fit(x, y)


def speaker_groups(speakers: list[str], groups: int) -> list[set[str]]:
    """The sorted speakers dealt into ``groups`` groups (RAVDESS: odd actors are men, so each group mixes)."""
    ordered = sorted(set(speakers))
    return [set(ordered[i::groups]) for i in range(min(groups, len(ordered)))]


def probe(encoder, train: AudioSet, valid: AudioSet, test: AudioSet, max_seconds: float, seed: int,
          select: str = "valid", groups: int = 5, cs: list[float] = (1.0,)) -> dict:
    """Choose the layer and C, then test that probe once.

    ``select="valid"``: each (layer, C) fitted on ``train`` and scored (UAR) on the validation speakers; the chosen
    one is refitted on ``train``. ``"speaker-cv"``: scored by cross-validation over ``groups`` groups of all the
    training speakers (``train`` and ``valid``), each group held out once; the chosen one is refitted on all of
    them. No test speaker takes part in either.
    """
    feats = {name: pooled_layers(encoder, data, max_seconds) for name, data in
             (("train", train), ("valid", valid), ("test", test))}
    x, y = np.concatenate([feats["train"], feats["valid"]]), np.concatenate([train.emotion, valid.emotion])
    if select == "speaker-cv":
        speakers = np.array([u.speaker for u in train.utterances + valid.utterances])
        splits = [(~np.isin(speakers, list(g)), np.isin(speakers, list(g))) for g in speaker_groups(speakers, groups)]
    else:
        splits = [(np.arange(len(x)) < len(train), np.arange(len(x)) >= len(train))]
    scored = {}
    for layer in range(x.shape[1]):
        for c in cs:
            scored[layer, c] = float(np.mean([scores(y[held], fit_probe(x[fit, layer], y[fit], seed, c)
                                                     .predict(x[held, layer]), train.labels)["uar"]
                                              for fit, held in splits]))
    layer, c = max(scored, key=scored.get)
    per_layer = [max(v for (n, _), v in scored.items() if n == i) for i in range(x.shape[1])]
    log.info("probe (%s): best UAR per layer %s -> layer %d, C %g", select, [round(u, 1) for u in per_layer], layer, c)
    fit = np.ones(len(x), dtype=bool) if select == "speaker-cv" else splits[0][0]
    clf = fit_probe(x[fit, layer], y[fit], seed, c)
    return {"layer": layer, "c": c, "select": select, "valid_uar_per_layer": per_layer,
            "valid_uar": {f"{n},{v}": round(u, 2) for (n, v), u in scored.items()},
            "predictions": clf.predict(feats["test"][:, layer]), "probabilities": clf.predict_proba(feats["test"][:, layer])}
