"""GMP-TL for one fold: stage 1 -> pseudo-labels -> stage 2 -> stage 3 -> test.

A fold directory holds one sub-directory per step (see README, "Artifact layout");
each step is skipped when its ``done.json`` / ``report.json`` exists, so a killed
run picks up where it stopped.
"""

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import dist, losses
from .augment import Augment, spec_masks
from .calibration import calibrate
from .config import AugmentConfig, Config
from .corpora import Corpus, validation_split
from .data import FRAME_HOP, AudioSet, Batch, epoch_batches
from .encoders import build_encoder
from .export import probability_scale
from .errors import ConfigError
from .masking import span_mask
from .metrics import scores
from .model import MaskedPredictor, UtteranceClassifier
from .provenance import provenance
from .pseudo_labels import build_pseudo_labels, load_labels
from .train import Stage, fit, training_batches
from .utils import atomic_json, model_device, resolve_device

log = logging.getLogger(__name__)


def new_encoder(cfg: Config):
    encoder = build_encoder(cfg.encoder.spec, cfg.encoder.normalize, cfg.encoder.layerdrop)
    encoder.freeze_frontend(cfg.encoder.freeze_frontend)
    encoder.checkpointing = cfg.train.checkpointing
    return encoder


def classifier(cfg: Config, encoder, num_classes: int, gender: bool, kind: str) -> UtteranceClassifier:
    h = cfg.head
    return UtteranceClassifier(encoder, num_classes, cfg.encoder.layer, gender=gender, classifier=kind,
                               lstm_hidden=h.lstm_hidden, proj_hidden=h.proj_hidden, dropout=h.dropout)


@torch.no_grad()
def predict(model: UtteranceClassifier, data: AudioSet, max_seconds: float, batch_size: int = 16) -> np.ndarray:
    """(N, C) emotion scores (logits or cosines) in ``data`` order (under torchrun: batches
    dealt out to the ranks, each rank's rows summed into every rank's copy)."""
    model.eval()
    device = model_device(model)
    out = torch.zeros(len(data), len(data.labels))
    for i, batch in enumerate(epoch_batches(data, batch_size, max_seconds, rng=None)):
        if i % dist.world() == dist.rank():
            b = batch.to(device)
            out[batch.index] = model(b.waves, b.lengths)["emotion"].float().cpu()
    return dist.sum_(out).numpy()


def classification_eval(data: AudioSet, max_seconds: float, select: str = "uar", scale: float = 1.0):
    """Validation UAR, WAR and loss (CE of ``scale`` x the scores: AM-Softmax cosines take s, no margin);
    ``select`` picks the epoch (``score``, higher is better)."""
    def evaluate(model) -> dict:
        out = predict(model, data, max_seconds)
        s = scores(data.emotion, out.argmax(1), data.labels)
        loss = F.cross_entropy(torch.from_numpy(scale * out), torch.as_tensor(data.emotion)).item()
        return {"score": s["uar"] if select == "uar" else -loss, "uar": s["uar"], "war": s["war"], "loss": loss}
    return evaluate


def stage1_loss(alpha: float, augment: AugmentConfig = AugmentConfig()):
    def loss(model, batch: Batch, rng) -> torch.Tensor:
        out = model(batch.waves, batch.lengths, **spec_masks(model.encoder, batch.lengths, augment, rng))
        return losses.multitask_loss(out["emotion"], out["gender"], batch.emotion, batch.gender, alpha)
    return loss


def stage3_loss(kind: str, s: float, m: float, augment: AugmentConfig = AugmentConfig()):
    def loss(model, batch: Batch, rng) -> torch.Tensor:
        out = model(batch.waves, batch.lengths, **spec_masks(model.encoder, batch.lengths, augment, rng))["emotion"]
        if kind == "amsoftmax":
            return losses.am_softmax_loss(out, batch.emotion, s, m)
        return F.cross_entropy(out, batch.emotion)
    return loss


def stage2_batch_loss(model: MaskedPredictor, batch: Batch, labels: list, cfg: Config,
                      rng: np.random.Generator) -> torch.Tensor:
    """Masked-prediction loss of one batch; ``labels[i]`` holds utterance i's frame labels per scale."""
    frames = model.encoder.frame_lengths(batch.lengths)
    T = int(frames.max())
    mask = span_mask(frames.cpu(), cfg.stage2.mask_prob, cfg.stage2.mask_span, rng=rng)
    targets = [torch.zeros(len(frames), T, dtype=torch.long) for _ in cfg.pseudo.scales]
    valid = torch.zeros(len(frames), T, dtype=torch.bool)
    for row, (i, offset) in enumerate(zip(batch.index.tolist(), batch.offset.tolist())):
        first = offset // FRAME_HOP  # crops start on frame boundaries
        for scale, utt_labels in enumerate(labels[i]):
            take = utt_labels[first:first + int(frames[row])]
            targets[scale][row, :len(take)] = torch.from_numpy(take.astype(np.int64))
        valid[row, :len(take)] = True  # frames past the dumped ones (beyond 30 s) have no label
    device = batch.waves.device
    mask, valid = mask.to(device), valid.to(device)
    logits, _ = model(batch.waves, batch.lengths, mask)
    return losses.masked_prediction_loss(logits, [t.to(device) for t in targets], mask, valid,
                                         cfg.stage2.unmasked_weight)


STEPS = ("stage1", "pseudo", "stage2", "stage3")
# Bump a step's version when a code change alters what it computes (its weights, labels or figures): every
# directory of that step and of the steps after it gets a new key, so an old one is recomputed, never patched.
VERSIONS = {"stage1": 1, "pseudo": 2, "stage2": 1, "stage3": 1}  # pseudo 2: torch k-means sums in float64
HOW = {"data": ("root", "cache_mb"), "train": ("device", "checkpointing", "workers")}  # where data lies, how steps run


def step_keys(cfg: Config, key: str = "") -> dict[str, str]:
    """Each step's key: a digest of the config values it depends on and of the versions of its code.

    A step depends on the data (not its path: ``key`` names the fold), the encoder, the
    head, the training settings (not the device or gradient checkpointing), its own
    section and those of the steps before it, and the versions of all of them.
    """
    c = cfg.to_dict()
    for section, names in HOW.items():
        for name in names:
            c[section].pop(name)
    keys, depends = {}, {"key": key, **{s: c[s] for s in ("data", "encoder", "head", "train")}}
    if c["augment"] != AugmentConfig().__dict__:  # keys made before augmentation existed stay as they were
        depends["augment"] = c["augment"]
    for step in STEPS:
        depends = {**depends, step: c[step], f"{step}_version": VERSIONS[step]}
        keys[step] = hashlib.sha256(json.dumps(depends, sort_keys=True).encode()).hexdigest()[:12]
    return keys


def step_dirs(cfg: Config, out: Path, shared: Path | None = None, key: str = "") -> dict[str, Path]:
    """Where each step of ``cfg`` lives: ``out/<step>``, or, with ``shared``, ``shared/<step>-<key>``
    (``step_keys``), so that systems differing only in a later step (CE-FT vs Hybrid-FT) reuse the earlier ones."""
    if shared is None:
        return {step: out / step for step in STEPS}
    return {step: shared / f"{step}-{digest}" for step, digest in step_keys(cfg, key).items()}


def claim_steps(cfg: Config, dirs: dict[str, Path], key: str) -> None:
    """Record each step's key in its directory (``step.json``); refuse a directory made by another version
    of a step's code (or by a gmptl before step keys), which a resume must not take up as if it were this one's."""
    keys = step_keys(cfg, key)
    for step in dirs if dist.is_main() else ():  # rank 0 checks and writes; the others wait for it
        path, digest = dirs[step] / "step.json", keys[step]
        if path.exists():
            found = json.loads(path.read_text()).get("key")
            if found != digest:
                raise ConfigError(f"{dirs[step]}: made by another version of the {step} step (key {found}, "
                                  f"this gmptl's {digest}); remove it or use another --out")
        elif dirs[step].exists() and any(dirs[step].iterdir()):
            raise ConfigError(f"{dirs[step]}: made by a gmptl before step keys; remove it or use another --out")
        else:
            dirs[step].mkdir(parents=True, exist_ok=True)
            atomic_json({"step": step, "key": digest, "version": VERSIONS[step]}, path)
    dist.barrier()


def train_system(cfg: Config, labels: list[str], train: AudioSet, valid: AudioSet, out: Path,
                 dirs: dict[str, Path] | None = None):
    """Train the configured system; returns the final classifier, its weights file and stage summaries."""
    C, d = len(labels), cfg.data
    dirs = dirs or step_dirs(cfg, out)
    stages = {}

    # Stage 1: encoder + BiLSTM/MAP/LinearP, alpha * CE(emotion) + (1 - alpha) * CE(gender).
    torch.manual_seed(cfg.train.seed * 10 + 1)  # initial weights: a resumed run rebuilds the same model
    model = classifier(cfg, new_encoder(cfg), C, gender=cfg.stage1.alpha < 1.0, kind="linear")
    batches = training_batches(train, cfg.train, d.max_seconds)
    augmented = training_batches(train, cfg.train, d.max_seconds, augment=True)  # stages 1 and 3 only
    stages["stage1"] = fit(Stage("stage1", model, stage1_loss(cfg.stage1.alpha, cfg.augment),
                                 classification_eval(valid, d.eval_max_seconds, cfg.train.select), cfg.stage1.epochs),
                           augmented, cfg.train, dirs["stage1"])
    if cfg.system != "gmp-tl":
        return model, dirs["stage1"] / "best.safetensors", stages

    # Pseudo-labels: k-means at every scale on one layer of the stage-1 encoder, training frames only.
    p = cfg.pseudo
    stages["pseudo"] = build_pseudo_labels(model.encoder, train, valid, dirs["pseudo"], p.layer, p.scales,
                                           p.max_frames, p.iterations, cfg.train.seed, d.eval_max_seconds,
                                           backend=p.backend, kmeans=p.kmeans)
    train_labels = load_labels(dirs["pseudo"], "train", p.scales, [u.id for u in train.utterances])
    valid_labels = load_labels(dirs["pseudo"], "valid", p.scales, [u.id for u in valid.utterances])

    # Stage 2: masked prediction of the pseudo-labels, one LinearP per scale.
    torch.manual_seed(cfg.train.seed * 10 + 2)
    encoder = new_encoder(cfg)
    if cfg.stage2.init == "stage1":
        encoder.load_state_dict(model.encoder.state_dict())
    predictor = MaskedPredictor(encoder, p.scales, cfg.head.proj_hidden)

    def stage2_eval(m) -> dict:
        device = model_device(m)
        total = n = 0
        for i, batch in enumerate(epoch_batches(valid, cfg.train.micro_batch, d.max_seconds, rng=None)):
            if i % dist.world() == dist.rank():
                rng = np.random.default_rng([cfg.train.seed, 2, i])  # the same masks at every epoch
                total += stage2_batch_loss(m, batch.to(device), valid_labels, cfg, rng).item() * len(batch.index)
                n += len(batch.index)
        total, n = dist.sum_(torch.tensor([total, float(n)], dtype=torch.float64)).tolist()
        return {"score": -total / max(n, 1), "loss": total / max(n, 1)}

    stages["stage2"] = fit(Stage("stage2", predictor, lambda m, b, rng: stage2_batch_loss(m, b, train_labels, cfg, rng),
                                 stage2_eval, cfg.stage2.epochs),
                           batches, cfg.train, dirs["stage2"])

    # Stage 3: the stage-2 encoder, a fresh head, AM-Softmax (Hybrid-FT) or CE (CE-FT).
    s3 = cfg.stage3
    torch.manual_seed(cfg.train.seed * 10 + 3)
    model = classifier(cfg, predictor.encoder, C, gender=False, kind="amsoftmax" if s3.loss == "amsoftmax" else "linear")
    stages["stage3"] = fit(Stage("stage3", model, stage3_loss(s3.loss, s3.scale, s3.margin, cfg.augment),
                                 classification_eval(valid, d.eval_max_seconds, cfg.train.select,
                                                     probability_scale(model, {"config": cfg.to_dict()})), s3.epochs),
                           augmented, cfg.train, dirs["stage3"])
    return model, dirs["stage3"] / "best.safetensors", stages


def decoded(data: AudioSet) -> np.ndarray:
    """(N,) bool: which utterances of ``data`` were scored (decoded on demand, a file can fail at test time)."""
    failed = {e.path for e in data.failed}
    return np.array([u.path not in failed for u in data.utterances], dtype=bool)


def write_predictions(test: AudioSet, emotion_scores: np.ndarray, out: Path) -> dict:
    """One line per test utterance in ``out/predictions.jsonl``; returns the test scores."""
    keep = decoded(test)
    pred = emotion_scores.argmax(1)
    if dist.is_main():
        with open(out / "predictions.jsonl", "w") as f:
            for u, y, p, row, kept in zip(test.utterances, test.emotion, pred, emotion_scores, keep):
                if kept:
                    f.write(json.dumps({"id": u.id, "speaker": u.speaker, "emotion": test.labels[y],
                                        "predicted": test.labels[p],
                                        "scores": [round(float(v), 5) for v in row]}) + "\n")
    return scores(test.emotion[keep], pred[keep], test.labels)


def run_probe(cfg: Config, train: AudioSet, valid: AudioSet, test: AudioSet | None, out: Path, info: dict,
              start: float) -> dict:
    """The frozen-encoder probe: no fine-tuning, the layer and C chosen on validation speakers (or by speaker
    cross-validation); tested on ``test`` where given, saved as a model directory (``out/model``)."""
    from .baselines import probe

    torch.manual_seed(cfg.train.seed * 10 + 1)  # a random test encoder's weights (pretrained ones load)
    encoder = new_encoder(cfg).to(resolve_device(cfg.train.device))
    found = probe(encoder, train, valid, test, cfg.data.eval_max_seconds, cfg.train.seed,
                  cfg.probe.select, cfg.probe.groups, cfg.probe.c)
    result = {**info, "valid_speakers": sorted({u.speaker for u in valid.utterances})}
    test_scores = test_labels = None
    if test is not None:
        result.update(write_predictions(test, found["scores"], out))  # logits: softmax gives predict_proba
        kept = decoded(test)
        test_scores, test_labels = found["scores"][kept], test.emotion[kept]
    # The temperature on predictions of speakers the fitted probe did not see: the validation speakers', or
    # with speaker-cv (refitted on all training speakers) each group's held-out predictions.
    cv = cfg.probe.select == "speaker-cv"
    held_out = train.utterances + valid.utterances if cv else valid.utterances
    calibration, tested = calibrate(found["valid_scores"], found["valid_labels"], test_scores, test_labels,
                                    speakers={u.speaker for u in held_out},
                                    fitted_on="held-out predictions of the probe's speaker cross-validation" if cv
                                    else "validation speakers")
    if tested:
        result["calibration"] = tested
    metrics = {k: result[k] for k in ("war", "uar", "f1") if k in result}
    metrics["valid_uar"] = found["chosen_valid_uar"]
    export(cfg, found["model"], None, train.labels, out, metrics, info["protocol"], {}, calibration)
    failed = train.failed + valid.failed + (test.failed if test is not None else [])
    result.update(probe={k: found[k] for k in ("layer", "c", "select", "valid_uar_per_layer", "valid_uar")},
                  failed_files=[str(e) for e in failed], wall_s=round(time.perf_counter() - start, 1))
    result.update(compute_s=result["wall_s"], provenance=provenance())
    atomic_json(result, out / "result.json")
    return result


def export(cfg: Config, model, weights: Path | None, labels: list[str], out: Path, metrics: dict, protocol: str,
           dirs: dict[str, Path], calibration: dict | None = None) -> Path:
    """The final model as a model directory (``out/model``), with the pseudo-label centroids and the stage-1
    encoder of ``dirs``; ``weights``: its state (None: ``model``'s own, the probe's); ``protocol`` says whether
    its test speakers were unseen in training; ``calibration``: the temperature record of
    ``gmptl.calibration.calibrate``."""
    from safetensors.torch import load_file

    from .modeldir import save_model_dir

    if not dist.is_main():
        return out / "model"
    centroids, pseudo_encoder = {}, None
    if cfg.system == "gmp-tl":
        centroids = {f"km{k}": torch.from_numpy(np.load(dirs["pseudo"] / f"km{k}.centroids.npy"))
                     for k in cfg.pseudo.scales}
        stage1 = load_file(str(dirs["stage1"] / "best.safetensors"))
        pseudo_encoder = {k[len("encoder."):]: v for k, v in stage1.items() if k.startswith("encoder.")}
    extra = {"pseudo_labels": {"layer": cfg.pseudo.layer, "scales": cfg.pseudo.scales} if centroids else None,
             "metrics": metrics, "protocol": protocol, "config": cfg.to_dict(), "provenance": provenance()}
    if calibration is not None:
        extra["calibration"] = calibration
    return save_model_dir(out / "model", model, labels, weights, extra, centroids, pseudo_encoder)


def final_stage(stages: dict) -> str:
    """The stage whose classifier a system hands on: stage 3, or stage 1 when there is no stage 3."""
    return "stage3" if "stage3" in stages else "stage1"


def chosen_valid_uar(stages: dict) -> float:
    """The final stage's validation UAR: of its chosen epoch (chosen by UAR, or by loss with
    ``train.select=loss``), or with ``train.average`` of the averaged weights."""
    stage = stages[final_stage(stages)]
    return stage["average"]["valid"]["valid_uar"] if "average" in stage else stage["best_valid"]["valid_uar"]


def run_split(cfg: Config, labels: list[str], train_utts, valid_utts, test_utts, out: Path, info: dict,
              shared: Path | None = None) -> dict:
    """Train on ``train_utts`` (choosing on ``valid_utts``), test on ``test_utts`` (if any), export the model.

    With ``shared``, the steps live there under digests of their settings (see
    ``step_dirs``) and are reused by every system that shares them.
    """
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log.info("train %d utterances, valid %d (speakers %s), test %d", len(train_utts), len(valid_utts),
             ", ".join(sorted({u.speaker for u in valid_utts})), len(test_utts))
    def audio(utterances, desc: str, augment: Augment | None = None) -> AudioSet:
        return AudioSet(utterances, labels, desc, cfg.data.cache_mb, cfg.train.workers, augment)

    train = audio(train_utts, "train", Augment(cfg.augment) if Augment.wanted(cfg.augment) else None)
    valid = audio(valid_utts, "valid")
    if cfg.system == "probe":
        return run_probe(cfg, train, valid, audio(test_utts, "test") if test_utts else None, out, info, start)
    corpus = "+".join(c.corpus for c in cfg.data.corpora) or cfg.data.corpus
    key = f"{corpus}/{info.get('fold', 'all')}"
    dirs = step_dirs(cfg, out, shared, key)
    claim_steps(cfg, {s: d for s, d in dirs.items() if cfg.system == "gmp-tl" or s == "stage1"}, key)
    model, weights, stages = train_system(cfg, labels, train, valid, out, dirs)
    result = {**info, "valid_speakers": sorted({u.speaker for u in valid_utts})}
    test_start = time.perf_counter()
    # Temperature scaling on the validation speakers, unseen by the weights (they only chose the epoch).
    scale = probability_scale(model, {"config": cfg.to_dict()})
    valid_scores, keep = scale * predict(model, valid, cfg.data.eval_max_seconds), decoded(valid)
    test_scores = test_labels = None
    failed = train.failed + valid.failed
    if test_utts:
        test = audio(test_utts, "test")
        emotion = predict(model, test, cfg.data.eval_max_seconds)
        failed += test.failed
        result.update(write_predictions(test, emotion, out))
        scored = decoded(test)
        test_scores, test_labels = scale * emotion[scored], test.emotion[scored]
    calibration, tested = calibrate(valid_scores[keep], valid.emotion[keep], test_scores, test_labels,
                                    speakers={u.speaker for u, k in zip(valid.utterances, keep) if k})
    if tested:
        result["calibration"] = tested
    # What the system costs alone: its steps (whoever ran them first), its calibration and its test.
    compute_s = sum(s.get("wall_s", 0.0) for s in stages.values()) + time.perf_counter() - test_start
    result.update(failed_files=[str(e) for e in failed], compute_s=round(compute_s, 1),
                  stages={name: {k: v for k, v in s.items() if k != "history"} for name, s in stages.items()},
                  step_dirs={step: str(dirs[step]) for step in stages}, provenance=provenance(),
                  wall_s=round(time.perf_counter() - start, 1))
    metrics = {k: result[k] for k in ("war", "uar", "f1") if k in result}
    metrics["valid_uar"] = chosen_valid_uar(stages)
    export(cfg, model, weights, labels, out, metrics, info["protocol"], dirs, calibration)
    atomic_json(result, result_path)
    dist.barrier()
    return result


def fold_split(cfg: Config, fold) -> tuple[list, list]:
    """A fold's training speakers split into training and validation speakers (``data.valid_by_fold``)."""
    seed = cfg.train.seed + (fold.index if cfg.data.valid_by_fold else 0)
    return validation_split(fold.train, cfg.data.valid_fraction, seed=seed)


def run_fold(cfg: Config, corpus: Corpus, k: int, out: Path, shared: Path | None = None) -> dict:
    """The configured system on fold ``k``: validation speakers from its training speakers, test on its own."""
    fold = corpus.fold(k)
    train_utts, valid_utts = fold_split(cfg, fold)
    log.info("fold %d: test speakers %s", k, ", ".join(fold.test_speakers))
    return run_split(cfg, corpus.labels, train_utts, valid_utts, fold.test, out,
                     {"fold": k, "test_speakers": fold.test_speakers, "protocol": corpus.protocol},
                     shared=shared and shared / f"fold{k}")
