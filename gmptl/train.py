"""One training loop for every stage: accumulation, clipping, early stopping, resumable checkpoints
and checkpoint averaging (``checkpoints``)."""

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import dist
from .checkpoints import CheckpointStore, average_weights, kept_epochs, ranked
from .config import TrainConfig
from .data import AudioSet, Batch, epoch_batches
from .utils import autocast, model_device, resolve_device

log = logging.getLogger(__name__)
MAX_PADDING = 0.10  # warn when more of an epoch's batch samples than this are padding


@dataclass
class Stage:
    """What one stage trains and how it is judged.

    Attributes:
        name: directory name and log label.
        model: a module with ``encoder`` and ``head_parameters()``.
        loss: (model, batch, rng) -> scalar loss of a micro-batch.
        evaluate: model -> dict with ``score`` (higher is better) and any metrics to log.
        epochs: most epochs to run (early stopping may end it sooner).
    """

    name: str
    model: torch.nn.Module
    loss: Callable[[torch.nn.Module, Batch, np.random.Generator], torch.Tensor]
    evaluate: Callable[[torch.nn.Module], dict]
    epochs: int


def training_batches(data: AudioSet, cfg: TrainConfig, max_seconds: float,
                     augment: bool = False) -> Callable[[int], Iterable[Batch]]:
    """Epoch -> its micro-batches of ``data``, order, crops and (``augment``: with ``data.augment``)
    augmentation seeded by (seed, epoch): a resumed run sees the same batches."""
    return lambda epoch: epoch_batches(data, cfg.micro_batch, max_seconds, np.random.default_rng([cfg.seed, epoch]),
                                       (cfg.seed, epoch) if augment else None)


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Adam:
    head = {id(p) for p in model.head_parameters()}
    encoder = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
    heads = [p for p in model.head_parameters() if p.requires_grad]
    return torch.optim.Adam([{"params": encoder, "lr": cfg.lr, "weight_decay": 0.0},
                             {"params": heads, "lr": cfg.head_lr or cfg.lr, "weight_decay": cfg.head_weight_decay}],
                            decoupled_weight_decay=True)  # 0 (the default): plain Adam, as in the paper


def fit(stage: Stage, batches: Callable[[int], Iterable[Batch]], cfg: TrainConfig, out_dir: Path) -> dict:
    """Train ``stage.model`` on ``batches(epoch)`` for each epoch; returns the summary of ``done.json``.

    Every epoch ends with a checkpoint; batches are seeded by (seed, epoch), masks and
    dropout by (seed, epoch, micro-batch), so a run killed at any moment resumes to the
    same weights, and a finished stage is skipped. The first ``cfg.frozen_epochs`` epochs
    train the heads only (LP-FT). Under torchrun each step's micro-batches are dealt out
    to the ranks and their gradients summed: the update of one process.
    """
    store = CheckpointStore(out_dir)
    device = resolve_device(cfg.device)
    model = stage.model.to(device)
    if (summary := store.finished(model)) is not None:
        return summary
    opt = make_optimizer(model, cfg)
    state = store.resume(model, opt) or {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad_epochs": 0,
                                         "history": []}
    if state["epoch"]:
        log.info("%s: resuming after epoch %d", stage.name, state["epoch"])
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]  # a frozen front-end stays frozen
    while state["epoch"] < stage.epochs and state["bad_epochs"] < cfg.patience:
        epoch = state["epoch"] + 1
        frozen = epoch <= cfg.frozen_epochs  # LP-FT: the heads learn first, on the pretrained features
        for p in encoder:
            p.requires_grad_(not frozen)
        start = time.perf_counter()
        record = {"stage": stage.name, "epoch": epoch, **train_epoch(stage, model, opt, batches(epoch), cfg, epoch),
                  "encoder_frozen": frozen}
        metrics = validate(stage, model, cfg.precision)
        record.update(wall_s=round(time.perf_counter() - start, 1), **valid_figures(metrics))
        improved = metrics["score"] > state["best"]
        state.update(epoch=epoch, history=state["history"] + [record])
        if improved:
            state.update(best=metrics["score"], best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        store.save_epoch(model, opt, state, improved,
                         kept_epochs(state["history"], cfg.average))
        log.info("%s epoch %d: train loss %.4f, valid score %.4f%s (%.0f s)", stage.name, epoch,
                 record["train_loss"], metrics["score"], " *" if improved else "", record["train_s"])
    for p in encoder:  # the next stage may train this encoder
        p.requires_grad_(True)
    summary = hand_on(stage, model, cfg, state, store)
    store.finish(summary, state["best_epoch"])
    return summary


def train_epoch(stage: Stage, model, opt, batches: Iterable[Batch], cfg: TrainConfig, epoch: int) -> dict:
    """One pass over ``batches``: each optimizer step averages ``batch_size // micro_batch`` micro-batches
    (the last step may hold fewer), dealt out to the ranks in turn; returns the epoch's log figures."""
    device, accumulate = model_device(model), cfg.batch_size // cfg.micro_batch
    model.train()
    start, total, seen, samples, padded = time.perf_counter(), 0.0, 0, 0, 0
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(desc=f"{stage.name} epoch {epoch}/{stage.epochs}", unit="batch", leave=False, disable=None,
               total=len(batches) if hasattr(batches, "__len__") else None)
    opt.zero_grad(set_to_none=True)
    for first, group in steps(batches, accumulate):
        size = sum(len(b.index) for b in group)
        for j, batch in enumerate(group):
            samples, padded = samples + int(batch.lengths.sum()), padded + batch.waves.numel()
            if j % dist.world() == dist.rank():
                torch.manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + first + j)  # dropout
                micro_rng = np.random.default_rng([cfg.seed, epoch, first + j])  # masks
                with autocast(device, cfg.precision):
                    loss = stage.loss(model, batch.to(device), micro_rng)
                (loss * len(batch.index) / size).backward()
                total, seen = total + loss.item() * len(batch.index), seen + len(batch.index)
        dist.sum_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.update(len(group))
        bar.set_postfix(loss=f"{total / max(seen, 1):.3f}")
    bar.close()
    total, seen = dist.sum_(torch.tensor([total, float(seen)], dtype=torch.float64)).tolist()
    train_s, padding = time.perf_counter() - start, 1 - samples / max(padded, 1)
    if padding > MAX_PADDING:
        log.warning("%s: %.1f%% of the batch samples are padding: lower train.micro_batch", stage.name, 100 * padding)
    return {"train_loss": total / max(seen, 1), "train_s": round(train_s, 1),
            "train_audio_s_per_s": round(samples / model.encoder.sample_rate / train_s, 1),
            "padding": round(padding, 4), "head_lr": opt.param_groups[1]["lr"]}


def steps(batches: Iterable[Batch], size: int):
    """(index of the first, up to ``size`` consecutive micro-batches) for each optimizer step."""
    group, first = [], 0
    for i, batch in enumerate(batches):
        group.append(batch)
        if len(group) == size:
            yield first, group
            group, first = [], i + 1
    if group:
        yield first, group


def hand_on(stage: Stage, model, cfg: TrainConfig, state: dict, store: CheckpointStore) -> dict:
    """Load what the stage hands on into ``model`` and ``best.safetensors``: its best epoch's weights, or the
    mean of the ``cfg.average`` best; returns the stage's summary."""
    history = state["history"]
    best = next((r for r in history if r["epoch"] == state["best_epoch"]), {})
    summary = {"stage": stage.name, "epochs": state["epoch"], "best_epoch": state["best_epoch"],
               "best_score": state["best"], "best_valid": {k: v for k, v in best.items() if k.startswith("valid_")},
               "wall_s": round(sum(r.get("wall_s", r["train_s"]) for r in history), 1), "history": history}
    start = time.perf_counter()
    epochs = ranked(history)[:cfg.average]
    if len(epochs) > 1:
        model.load_state_dict(average_weights([store.top_file(e) for e in epochs]))
        summary["average"] = {"epochs": epochs, "valid": valid_figures(validate(stage, model, cfg.precision))}
        log.info("%s: mean of the weights of epochs %s: valid score %.4f (best epoch %d alone: %.4f)", stage.name,
                 ", ".join(map(str, epochs)), summary["average"]["valid"]["valid_score"], state["best_epoch"],
                 state["best"])
        store.save_best(model)
    else:
        store.load_best(model)
    summary["wall_s"] = round(summary["wall_s"] + time.perf_counter() - start, 1)
    return summary


def validate(stage: Stage, model: torch.nn.Module, precision: str) -> dict:
    model.eval()
    with torch.no_grad(), autocast(model_device(model), precision):
        return stage.evaluate(model)


def valid_figures(metrics: dict) -> dict:
    """A validation's scalar figures, named as the log names them (``valid_uar``, ...)."""
    return {f"valid_{k}": v for k, v in metrics.items() if np.isscalar(v)}
