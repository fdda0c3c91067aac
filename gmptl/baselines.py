"""The frozen-encoder probe: mean and standard-deviation pooling of one layer + logistic regression."""

import logging

import numpy as np
import torch
from tqdm import tqdm

from .data import AudioSet, epoch_batches
from .heads import mean_std_pool
from .metrics import scores
from .model import ProbeClassifier

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
            out[batch.index.numpy()] = mean_std_pool(h, enc.lengths).float().cpu().numpy()
            bar.update(len(batch.index))
    return out


def fit_probe(x: np.ndarray, y: np.ndarray, seed: int, c: float = 1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed)).fit(x, y)


# The logit of a class the fitted data lacks: never predicted, probability exp(-1e4) = 0.
ABSENT = -1e4


def probe_scores(clf, x: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, num_classes) logits of a fitted probe: its decision function (softmax of it = ``predict_proba``;
    argmax = ``predict``). Two classes: sklearn's one score z becomes [-z/2, z/2] (softmax = sigmoid(z))."""
    z = clf.decision_function(x)
    if z.ndim == 1:
        z = np.stack([-z / 2, z / 2], 1)
    out = np.full((len(x), num_classes), ABSENT)
    out[:, clf.classes_] = z
    return out


def probe_classifier(encoder, layer: int, clf, num_classes: int) -> ProbeClassifier:
    """The fitted probe ``clf`` (scaler + logistic regression) on pooled ``layer`` of ``encoder``, as a network."""
    scaler, regression = clf[0], clf[-1]
    coef, intercept = regression.coef_, regression.intercept_
    if len(regression.classes_) == 2:
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    model = ProbeClassifier(encoder, num_classes, layer)
    tensors = {"mean": scaler.mean_, "scale": scaler.scale_, "coef": np.zeros(model.coef.shape),
               "intercept": np.full(num_classes, ABSENT)}
    tensors["coef"][regression.classes_], tensors["intercept"][regression.classes_] = coef, intercept
    device = next(encoder.parameters()).device
    for name, value in tensors.items():
        getattr(model, name).copy_(torch.as_tensor(value, dtype=torch.float32, device=device))
    return model.eval()


def cross_fit(x: np.ndarray, y: np.ndarray, splits: list, seed: int, c: float, labels: list[str]):
    """A probe fitted on each split's ``fit`` part and scored on its ``held`` part: the mean UAR over the splits,
    the held-out logits concatenated and their labels."""
    held_scores = [probe_scores(fit_probe(x[fit], y[fit], seed, c), x[held], len(labels)) for fit, held in splits]
    uar = np.mean([scores(y[held], s.argmax(1), labels)["uar"] for (_, held), s in zip(splits, held_scores)])
    return float(uar), np.concatenate(held_scores), np.concatenate([y[held] for _, held in splits])


def speaker_groups(speakers: list[str], groups: int) -> list[set[str]]:
    """The sorted speakers dealt into ``groups`` groups (RAVDESS: odd actors are men, so each group mixes)."""
    ordered = sorted(set(speakers))
    return [set(ordered[i::groups]) for i in range(min(groups, len(ordered)))]


def probe(encoder, train: AudioSet, valid: AudioSet, test: AudioSet | None, max_seconds: float, seed: int,
          select: str = "valid", groups: int = 5, cs: list[float] = (1.0,)) -> dict:
    """Choose the layer and C, fit that probe, and test it once (``test``: None for none).

    ``select="valid"``: each (layer, C) fitted on ``train`` and scored (UAR) on the validation speakers; the chosen
    one is refitted on ``train``. ``"speaker-cv"``: scored by cross-validation over ``groups`` groups of all the
    training speakers (``train`` and ``valid``), each group held out once; the chosen one is refitted on all of
    them. No test speaker takes part in either. Returns the choice, ``model`` (a ``ProbeClassifier``),
    ``valid_scores`` (N, C) / ``valid_labels`` (N,): the chosen (layer, C)'s held-out logits (the validation
    speakers', or every group's when held out) and, with ``test``, its ``scores`` (logits) and ``predictions``.
    """
    feats = {name: pooled_layers(encoder, data, max_seconds) for name, data in
             (("train", train), ("valid", valid), ("test", test)) if data is not None}
    x, y = np.concatenate([feats["train"], feats["valid"]]), np.concatenate([train.emotion, valid.emotion])
    if select == "speaker-cv":
        speakers = np.array([u.speaker for u in train.utterances + valid.utterances])
        splits = [(~np.isin(speakers, list(g)), np.isin(speakers, list(g))) for g in speaker_groups(speakers, groups)]
    else:
        splits = [(np.arange(len(x)) < len(train), np.arange(len(x)) >= len(train))]
    scored, held_out = {}, {}
    for layer in range(x.shape[1]):
        for c in cs:
            scored[layer, c], *held_out[layer, c] = cross_fit(x[:, layer], y, splits, seed, c, train.labels)
    layer, c = max(scored, key=scored.get)
    per_layer = [max(v for (n, _), v in scored.items() if n == i) for i in range(x.shape[1])]
    log.info("probe (%s): best UAR per layer %s -> layer %d, C %g", select, [round(u, 1) for u in per_layer], layer, c)
    fit = np.ones(len(x), dtype=bool) if select == "speaker-cv" else splits[0][0]
    clf = fit_probe(x[fit, layer], y[fit], seed, c)
    found = {"layer": layer, "c": c, "select": select, "valid_uar_per_layer": per_layer,
             "valid_uar": {f"{n},{v}": round(u, 2) for (n, v), u in scored.items()},
             "chosen_valid_uar": scored[layer, c], "valid_scores": held_out[layer, c][0],
             "valid_labels": held_out[layer, c][1],
             "model": probe_classifier(encoder, layer, clf, len(train.labels))}
    if test is not None:
        found["scores"] = probe_scores(clf, feats["test"][:, layer], len(train.labels))
        found["predictions"] = found["scores"].argmax(1)
    return found
