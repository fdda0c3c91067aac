"""One training loop for every stage: accumulation, clipping, early stopping, atomic resumable checkpoints,
checkpoint averaging, cross-fitted validation."""

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import dist
from .config import TrainConfig
from .data import AudioSet, Batch, epoch_batches
from .metrics import uar_of

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """What one stage trains and how it is judged.

    Attributes:
        name: directory name and log label.
        model: a module with ``encoder`` and ``head_parameters()``.
        loss: (model, batch, rng) -> scalar loss of a micro-batch.
        evaluate: model -> dict with ``score`` (higher is better) and any metrics to log; optionally
            ``speakers``, each validation speaker's ``confusion`` and ``loss_sum`` (``train.crossfit``).
        epochs: most epochs to run (early stopping may end it sooner).
    """

    name: str
    model: torch.nn.Module
    loss: Callable[[torch.nn.Module, Batch, np.random.Generator], torch.Tensor]
    evaluate: Callable[[torch.nn.Module], dict]
    epochs: int


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())  # under torchrun: this rank's GPU
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError
        raise ConfigError(f"train.device={name}: PyTorch sees no CUDA device here (use auto or cpu)")
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast (CUDA or CPU) when asked for; a no-op context for fp32.

    On a CPU with native bf16 (AVX512-BF16 or AMX) a Whisper tiny.en training step
    is about 1.7x faster (bench ``cpu_bf16``); a CPU without it is refused
    (``check_precision``)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    check_precision(device, precision)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def check_precision(device: torch.device | str, precision: str) -> None:
    """Refuse bf16 on a CPU without native bf16 (``device``: a device or a ``train.device`` name):
    oneDNN emulates it, slower than fp32, and its LSTM (the head's BiLSTM) cannot run it at all."""
    if precision != "bf16":
        return
    if isinstance(device, str):
        device = resolve_device(device)
    if device.type == "cpu" and not cpu_has_bf16():
        from .errors import ConfigError
        raise ConfigError("precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), "
                          "where oneDNN cannot run the BiLSTM in bf16; use fp32")


def cpu_has_bf16() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private: absent means unknown
    return bool(check()) if check is not None else True


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """safetensors written to a temporary file and renamed: a kill leaves the old file or the new.
    Under torchrun only rank 0 writes."""
    if not dist.is_main():
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: workers may share a directory
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


def atomic_json(obj, path: Path) -> None:
    """JSON written to a temporary file and renamed; under torchrun only rank 0 writes."""
    if not dist.is_main():
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def heads_lr(cfg: TrainConfig, frozen: bool = False) -> float:
    """The heads' learning rate: ``frozen_head_lr`` while the encoder is frozen (LP-FT), else ``head_lr``, else ``lr``."""
    return (cfg.frozen_head_lr if frozen and cfg.frozen_head_lr else cfg.head_lr) or cfg.lr


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Adam:
    head = {id(p) for p in model.head_parameters()}
    encoder = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
    heads = [p for p in model.head_parameters() if p.requires_grad]
    return torch.optim.Adam([{"params": encoder, "lr": cfg.lr, "weight_decay": 0.0},
                             {"params": heads, "lr": heads_lr(cfg), "weight_decay": cfg.head_weight_decay}],
                            decoupled_weight_decay=True)  # 0 (the default): plain Adam, as in the paper


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict:
    """Adam's state as flat named tensors (safetensors holds no pickles)."""
    out = {}
    for i, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"optimizer.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict) -> None:
    state_dict = opt.state_dict()
    state: dict = {}
    for name, value in tensors.items():
        _, i, key = name.split(".", 2)
        state.setdefault(int(i), {})[key] = value
    state_dict["state"] = state
    opt.load_state_dict(state_dict)


def fit(stage: Stage, train: AudioSet, cfg: TrainConfig, max_seconds: float, out_dir: Path) -> dict:
    """Train ``stage.model`` on ``train``; returns the summary of ``done.json``.

    Every epoch ends with ``last.safetensors`` (model and optimizer) + ``last.json``
    (epoch, best score, history), and ``best.safetensors`` when validation improved;
    a run killed at any moment resumes from the last finished epoch and, since each
    epoch's shuffling and crops are seeded by (seed, epoch) and each micro-batch's
    masks and dropout by (seed, epoch, micro-batch), ends with the same weights as
    an uninterrupted run. A finished stage is skipped. The first ``cfg.frozen_epochs``
    epochs train the heads only (LP-FT), at ``cfg.frozen_head_lr`` when it is set.

    With ``cfg.average`` K > 1 the K best epochs' weights are kept in ``top/`` while
    training, and the stage hands on their mean (checkpoint averaging): it is
    scored on validation (``average`` in the summary) and written to
    ``best.safetensors``; ``top/`` then keeps the best epoch's own weights only.

    With ``cfg.crossfit`` and an ``evaluate`` that scores each validation speaker,
    the summary's ``crossfit`` scores the stage's way of choosing weights without
    the selection bias of a best score: each validation speaker is predicted by the
    epoch (and with K > 1 the mean of the K epochs) that the other validation
    speakers rank best, and the UAR of those pooled predictions is reported for the
    best epoch alone (``best_uar``), for the mean of K (``average_uar``) and for
    what this stage hands on (``uar``). What is handed on does not change.

    Under torchrun (see ``gmptl.dist``) the micro-batches of every optimizer step
    are dealt out to the ranks and their gradients summed before the step: the
    same update as one process with the same ``batch_size``. Only rank 0 writes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    done = out_dir / "done.json"
    device = resolve_device(cfg.device)
    model = stage.model.to(device)
    if done.exists():
        model.load_state_dict(load_file(str(out_dir / "best.safetensors")))
        return json.loads(done.read_text())

    opt = make_optimizer(model, cfg)
    state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad_epochs": 0, "history": []}
    last = out_dir / "last.safetensors"
    if last.exists():
        tensors = load_file(str(last))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        load_optimizer_tensors(opt, {k: v for k, v in tensors.items() if k.startswith("optimizer.")})
        state = json.loads((out_dir / "last.json").read_text())
        log.info("%s: resuming after epoch %d", stage.name, state["epoch"])

    accumulate = cfg.batch_size // cfg.micro_batch
    logfile = out_dir / "log.jsonl"
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]  # a frozen front-end stays frozen
    while state["epoch"] < stage.epochs and state["bad_epochs"] < cfg.patience:
        epoch = state["epoch"] + 1
        frozen = epoch <= cfg.frozen_epochs  # LP-FT: the heads learn first, on the pretrained features
        for p in encoder:
            p.requires_grad_(not frozen)
        opt.param_groups[1]["lr"] = heads_lr(cfg, frozen)
        rng = np.random.default_rng([cfg.seed, epoch])  # order, crops
        batches = list(epoch_batches(train, cfg.micro_batch, max_seconds, rng))
        padding = 1 - sum(float(b.lengths.sum()) for b in batches) / sum(b.waves.numel() for b in batches)
        if padding > cfg.max_padding:
            log.warning("%s: %.1f%% of the batch samples are padding (train.max_padding %.0f%%): "
                        "lower train.micro_batch", stage.name, 100 * padding, 100 * cfg.max_padding)
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(batches, desc=f"{stage.name} epoch {epoch}/{stage.epochs}", unit="batch", leave=False,
                   disable=None)
        opt.zero_grad(set_to_none=True)
        params = [p for p in model.parameters() if p.requires_grad]
        for step, batch in enumerate(bar):
            # Each step averages over up to `accumulate` micro-batches (the last step may hold fewer),
            # dealt out to the ranks in turn.
            if (step % accumulate) % dist.world() == dist.rank():
                group = batches[step - step % accumulate: step - step % accumulate + accumulate]
                weight = len(batch.index) / sum(len(b.index) for b in group)
                torch.manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + step)  # dropout
                micro_rng = np.random.default_rng([cfg.seed, epoch, step])  # masks
                with autocast(device, cfg.precision):
                    loss = stage.loss(model, batch.to(device), micro_rng)
                (loss * weight).backward()
                total += loss.item() * len(batch.index)
                seen += len(batch.index)
            if step % accumulate == accumulate - 1 or step == len(batches) - 1:
                dist.sum_gradients(params)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{total / max(seen, 1):.3f}")
        total, seen = dist.sum_(torch.tensor([total, float(seen)], dtype=torch.float64)).tolist()
        train_s = time.perf_counter() - start
        model.eval()
        metrics = validate(stage, model, device, cfg.precision)
        wall_s = time.perf_counter() - start
        audio_s = sum(float(b.lengths.sum()) for b in batches) / train.sample_rate
        record = {"stage": stage.name, "epoch": epoch, "train_loss": total / max(seen, 1),
                  "train_s": round(train_s, 1), "wall_s": round(wall_s, 1),
                  "train_audio_s_per_s": round(audio_s / train_s, 1),
                  "padding": round(padding, 4), "encoder_frozen": frozen, "head_lr": opt.param_groups[1]["lr"],
                  **valid_figures(metrics), **({"valid_by_speaker": metrics["speakers"]} if "speakers" in metrics else {})}
        improved = metrics["score"] > state["best"]
        state.update(epoch=epoch, history=state["history"] + [record])
        kept = kept_epochs(state["history"], cfg)
        if improved:
            state.update(best=metrics["score"], best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        if dist.is_main():
            if improved:
                atomic_save(model.state_dict(), out_dir / "best.safetensors")
            if epoch in kept:
                (out_dir / "top").mkdir(exist_ok=True)
                atomic_save(model.state_dict(), top_file(out_dir, epoch))
            atomic_save({**{f"model.{k}": v for k, v in model.state_dict().items()}, **optimizer_tensors(opt)}, last)
            atomic_json(state, out_dir / "last.json")
            tmp = logfile.with_name(logfile.name + ".tmp")  # rewritten whole: a resumed epoch is never logged twice
            tmp.write_text("".join(json.dumps(r) + "\n" for r in state["history"]))
            os.replace(tmp, logfile)
            prune_top(out_dir, kept)  # after last.json: a run killed before has them all still
        dist.barrier()  # the other ranks read nothing before rank 0 has written it
        log.info("%s epoch %d: train loss %.4f, valid score %.4f%s (%.0f s)", stage.name, epoch,
                 record["train_loss"], metrics["score"], " *" if improved else "", train_s)

    for p in encoder:  # the next stage may train this encoder
        p.requires_grad_(True)
    best = next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {})
    summary = {"stage": stage.name, "epochs": state["epoch"], "best_epoch": state["best_epoch"],
               "best_score": state["best"], "best_valid": {k: v for k, v in best.items() if k.startswith("valid_")},
               "wall_s": round(sum(r.get("wall_s", r["train_s"]) for r in state["history"]), 1),
               "history": state["history"]}
    if cfg.crossfit and not held_out_splits(state["history"]):
        log.warning("%s: train.crossfit needs a validation scored by speaker, with two speakers at least: "
                    "no cross-fitted figure", stage.name)
    elif cfg.crossfit:
        start = time.perf_counter()
        summary["crossfit"] = crossfit(stage, model, device, cfg, state["history"], out_dir)
        summary["wall_s"] = round(summary["wall_s"] + time.perf_counter() - start, 1)
    epochs = ranked(state["history"])[:cfg.average]
    if len(epochs) > 1:
        model.load_state_dict(average_weights([top_file(out_dir, e) for e in epochs]))
        start = time.perf_counter()
        metrics = validate(stage, model, device, cfg.precision)
        summary["average"] = {"epochs": epochs, "valid": valid_figures(metrics)}
        summary["wall_s"] = round(summary["wall_s"] + time.perf_counter() - start, 1)
        log.info("%s: mean of the weights of epochs %s: valid score %.4f (best epoch %d alone: %.4f)", stage.name,
                 ", ".join(map(str, epochs)), metrics["score"], state["best_epoch"], state["best"])
        if dist.is_main():
            atomic_save(model.state_dict(), out_dir / "best.safetensors")
    else:
        model.load_state_dict(load_file(str(out_dir / "best.safetensors")))
    dist.barrier()
    if dist.is_main():
        atomic_json(summary, done)
        last.unlink(missing_ok=True)  # the best weights stay; the optimizer state is no longer needed
        prune_top(out_dir, {state["best_epoch"]})
    dist.barrier()
    return summary


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


def kept_epochs(history: list[dict], cfg: TrainConfig) -> set[int]:
    """The epochs whose weights ``top/`` must hold: the ``cfg.average`` best, and with ``cfg.crossfit``
    the best by every held-out split as well (none with average 1: the best epoch alone needs none)."""
    if cfg.average <= 1:
        return set()
    kept = set(ranked(history)[:cfg.average])
    if cfg.crossfit:
        for _, others in held_out_splits(history):
            kept |= set(ranked(history, others, cfg.select)[:cfg.average])
    return kept


def crossfit(stage: Stage, model: torch.nn.Module, device: torch.device, cfg: TrainConfig, history: list[dict],
             out_dir: Path) -> dict:
    """Each validation speaker predicted by the weights the others choose (see ``fit``); leaves other
    weights in ``model``."""
    by_epoch = {r["epoch"]: r["valid_by_speaker"] for r in history}
    best = average = 0
    chosen = {}
    for speaker, others in held_out_splits(history):
        order = ranked(history, others, cfg.select)
        best = best + np.asarray(by_epoch[order[0]][speaker]["confusion"])
        chosen[speaker] = {"best_epoch": order[0]}
        if cfg.average > 1:
            epochs = order[:cfg.average]
            model.load_state_dict(average_weights([top_file(out_dir, e) for e in epochs]))
            average = average + np.asarray(validate(stage, model, device, cfg.precision)["speakers"][speaker]["confusion"])
            chosen[speaker]["epochs"] = epochs
    out = {"best_uar": uar_of(best), "speakers": chosen}
    if cfg.average > 1:
        out["average_uar"] = uar_of(average)
    out["uar"] = out.get("average_uar", out["best_uar"])
    log.info("%s: cross-fitted validation UAR %.2f (best epoch alone %.2f)", stage.name, out["uar"], out["best_uar"])
    return out


def validate(stage: Stage, model: torch.nn.Module, device: torch.device, precision: str) -> dict:
    with torch.no_grad(), autocast(device, precision):
        return stage.evaluate(model)


def valid_figures(metrics: dict) -> dict:
    """A validation's scalar figures, named as the log names them (``valid_uar``, ...)."""
    return {f"valid_{k}": v for k, v in metrics.items() if np.isscalar(v)}


def top_file(out_dir: Path, epoch: int) -> Path:
    """Where ``train.average`` keeps the weights of one of the best epochs."""
    return out_dir / "top" / f"epoch{epoch}.safetensors"


def prune_top(out_dir: Path, keep: set[int]) -> None:
    """Unlinks the weights of every epoch in ``top/`` but ``keep``'s, found by listing the folder:
    an epoch a kill left there between ``last.json`` and its unlinking goes too."""
    names = {top_file(out_dir, e).name for e in keep}
    for path in (out_dir / "top").glob("epoch*.safetensors"):
        if path.name not in names:
            path.unlink(missing_ok=True)


def average_weights(paths: list[Path]) -> dict:
    """The mean of several state dicts (checkpoint averaging); integer tensors (counters) from the first."""
    states = [load_file(str(p)) for p in paths]
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}
