"""What a stage hands on: its best epoch's weights, or the mean of its K best (``train.average``), and the
cross-fitted validation of that choice (``train.crossfit``).

The best validation score of a run is a maximum over epochs of the figure it reports,
so it flatters the choice it made. Cross-fitting scores the choice without that bias:
each validation speaker is predicted by the epoch (or the mean of the K epochs) that
the *other* validation speakers rank best, and the UAR of those pooled predictions is
reported. It changes nothing that is handed on.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .metrics import uar_of


def ranked(history: list[dict], speakers: list[str] | None = None, select: str = "uar") -> list[int]:
    """The epochs of ``history`` from best to worst by validation (ties: the earlier first): by the
    logged score, or with ``speakers`` by the score of those validation speakers alone."""
    def score(r):
        return r["valid_score"] if speakers is None else speaker_score(r["valid_by_speaker"], speakers, select)
    return [r["epoch"] for r in sorted(history, key=lambda r: (-score(r), r["epoch"]))]


def speaker_score(by_speaker: dict, speakers: list[str], select: str) -> float:
    """The validation score (``train.select``: UAR, or minus the mean loss) of ``speakers``' pooled
    utterances, from each speaker's confusion matrix and summed loss."""
    confusion = sum(np.asarray(by_speaker[s]["confusion"]) for s in speakers)
    if select == "loss":
        return -sum(by_speaker[s]["loss_sum"] for s in speakers) / max(int(confusion.sum()), 1)
    return uar_of(confusion)


def held_out_splits(history: list[dict]) -> list[tuple[str, list[str]]]:
    """(held-out speaker, the other validation speakers) for each validation speaker; none when the
    stage's validation does not score speakers or has fewer than two."""
    names = sorted(history[0].get("valid_by_speaker", {})) if history else []
    return [(s, [o for o in names if o != s]) for s in names] if len(names) > 1 else []


def kept_epochs(history: list[dict], average: int, crossfit: bool, select: str) -> set[int]:
    """The epochs whose weights ``top/`` must hold: the ``average`` best, and with ``crossfit`` the best
    by every held-out split as well (none with average 1: the best epoch alone needs none)."""
    if average <= 1:
        return set()
    choosers = [None] + ([others for _, others in held_out_splits(history)] if crossfit else [])
    return {e for speakers in choosers for e in ranked(history, speakers, select)[:average]}


def average_weights(paths: list[Path]) -> dict:
    """The mean of several state dicts (checkpoint averaging); integer tensors (counters) from the first."""
    states = [load_file(str(p)) for p in paths]
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}


def crossfit(history: list[dict], average: int, select: str, top_file: Callable[[int], Path],
             model: torch.nn.Module, evaluate: Callable[[], dict]) -> dict:
    """Each validation speaker predicted by the weights the others choose (module docstring); with ``average`` > 1
    the chosen epochs' mean is loaded into ``model`` and scored by ``evaluate``, which leaves other weights there."""
    by_epoch = {r["epoch"]: r["valid_by_speaker"] for r in history}
    best, mean, chosen = 0, 0, {}
    for speaker, others in held_out_splits(history):
        order = ranked(history, others, select)
        best = best + np.asarray(by_epoch[order[0]][speaker]["confusion"])
        chosen[speaker] = {"best_epoch": order[0]}
        if average > 1:
            model.load_state_dict(average_weights([top_file(e) for e in order[:average]]))
            mean = mean + np.asarray(evaluate()["speakers"][speaker]["confusion"])
            chosen[speaker]["epochs"] = order[:average]
    out = {"best_uar": uar_of(best), "speakers": chosen}
    if average > 1:
        out["average_uar"] = uar_of(mean)
    return {**out, "uar": out.get("average_uar", out["best_uar"])}
