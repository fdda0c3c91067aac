"""Typed configuration: small YAML files, ``--set key=value`` overrides, checked on load.

Defaults are the paper's values where the paper gives one (section 3 and 4.1.2);
the rest are marked as our choices. The resolved config is saved beside every
artifact it produced.
"""

import dataclasses
import inspect
import io
import json
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError

SYSTEMS = ("gmp-tl", "finetune", "probe")


@dataclass
class CorpusSource:
    corpus: str                        # iemocap, ravdess, emodb, cremad, manifest
    root: str                          # its directory (a CSV/JSONL file for manifest)
    map: list[str] = field(default_factory=list)  # FROM=TO label renames, e.g. [calm=neutral]


@dataclass
class DataConfig:
    corpus: str = "ravdess"            # iemocap, ravdess, emodb, cremad, manifest
    root: str = ""                     # corpus directory (a CSV/JSONL file for manifest)
    corpora: list[CorpusSource] = field(default_factory=list)  # train on several corpora at once (then corpus
                                       # and root are unused): speakers and folds namespaced by corpus
    classes: list[str] | None = None   # label subset, in this order; None: the corpus's own
    speaker_dependent: bool = False    # True: accept a manifest without speakers (each file its own); its
                                       # folds and results are then labelled speaker-dependent
    valid_fraction: float = 0.1        # share of training speakers held out for validation
    valid_by_fold: bool = False        # True: the split's seed is train.seed + fold, so folds validate on
                                       # different speakers (False: one seed, the same speakers recur)
    max_seconds: float = 4.0           # training crop (ours: 4 s keeps a CPU epoch near 90 s)
    eval_max_seconds: float = 30.0     # evaluation sees whole utterances up to this
    cache_mb: float = 512              # a split whose decoded audio fits this (230 MB an hour) is held in memory;
                                       # a larger one is decoded batch by batch by train.workers processes


@dataclass
class EncoderConfig:
    spec: str = "whisper-tiny.en"      # see gmptl.encoders: built-in, random:..., hub id or local dir
    freeze_frontend: bool = True       # convolutional front-end frozen while fine-tuning
    layer: int | None = -1             # which hidden state feeds the heads; None: learned weighted sum
    normalize: str | bool = "auto"     # zero-mean unit-variance waveforms: auto (as the checkpoint was pre-trained,
                                       # its preprocessor's do_normalize) | true | false; Whisper: auto or false
    layerdrop: float = 0.0             # LayerDrop: chance that training skips each transformer layer; 0: off, as
                                       # gmptl's results were made; the checkpoint's own layerdrop is not applied


@dataclass
class HeadConfig:
    lstm_hidden: int = 256             # BiLSTM units per direction (paper: not given)
    proj_hidden: int = 256             # LinearP hidden width (paper: not given)
    dropout: float = 0.1               # dropout in the head (after the BiLSTM and inside LinearP)


@dataclass
class Stage1Config:
    alpha: float = 0.9                 # eq. 1: alpha * CE(emotion) + (1 - alpha) * CE(gender); 1.0 = MPs
    epochs: int = 10                   # most epochs of stage 1 (early stopping: train.patience)


@dataclass
class PseudoLabelConfig:
    layer: int = -3                    # third-to-last works best (Table 3)
    scales: list[int] = field(default_factory=lambda: [64, 512, 4096])  # k-means clusters per scale (paper)
    max_frames: int = 300_000          # k-means training subsample per scale (seeded), ours
    iterations: int = 25               # k-means iterations, ours
    kmeans: str = "full"               # full (`iterations` passes) | fast (~3 passes; pseudo_labels.schedule)
    backend: str = "auto"              # auto (faiss if installed, else torch) | faiss | torch (runs on train.device)


@dataclass
class Stage2Config:
    init: str = "pretrained"           # pretrained | stage1: where the stage-2 encoder starts
    mask_prob: float = 0.8             # share of frames that start a masked span (HuBERT pre-training: 0.8)
    mask_span: int = 10                # frames per masked span (HuBERT: 10)
    unmasked_weight: float = 0.0       # CE weight of unmasked frames (HuBERT: 0)
    epochs: int = 5                    # most epochs of stage 2 (early stopping on the masked-frame loss)


@dataclass
class Stage3Config:
    loss: str = "amsoftmax"            # amsoftmax (Hybrid-FT) | ce (CE-FT)
    scale: float = 30.0                # AM-Softmax s (eq. 2)
    margin: float = 0.2                # AM-Softmax m (eq. 2)
    epochs: int = 10                   # most epochs of stage 3


@dataclass
class ProbeConfig:
    select: str = "valid"              # valid (the validation speakers) | speaker-cv (grouped CV over all training speakers)
    groups: int = 5                    # speaker groups of speaker-cv
    c: list[float] = field(default_factory=lambda: [1.0])  # logistic-regression C values, chosen with the layer


@dataclass
class AugmentConfig:
    speed: list[float] = field(default_factory=lambda: [1.0])  # speed factors, one drawn per training crop
                                       # (Kaldi, SpeechBrain: [0.9, 1.0, 1.1]); [1.0]: off
    noise_dir: str = ""                # noise recordings (any depth, e.g. MUSAN's noise/) added to training crops
    noise_snr: list[float] = field(default_factory=lambda: [5.0, 20.0])  # SNR range in dB, drawn uniformly
    noise_prob: float = 0.5            # share of training crops that get noise (with noise_dir)
    rir_dir: str = ""                  # room impulse responses convolved with training crops
    rir_prob: float = 0.5              # share of training crops reverberated (with rir_dir)
    time_mask_prob: float = 0.0        # SpecAugment time masks on encoder input frames in stages 1 and 3, as
                                       # transformers' mask_time_prob (fine-tuning configs: 0.05); 0: off
    time_mask_span: int = 10           # frames per time mask (transformers' mask_time_length)
    freq_mask_prob: float = 0.0        # Whisper only: masks of log-mel bins (transformers' mask_feature_prob)
    freq_mask_span: int = 10           # mel bins per frequency mask (of 80)


@dataclass
class TrainConfig:
    lr: float = 1e-4                   # Adam (paper)
    head_lr: float | None = None       # None: same as lr
    head_weight_decay: float = 0.0     # decoupled weight decay of the heads only: each step scales them by
                                       # 1 - lr * head_weight_decay (0: plain Adam, the paper); ours
    frozen_epochs: int = 0             # first epochs of every stage train the heads only, the encoder frozen
                                       # (LP-FT, Kumar et al. 2022: less distortion of the pretrained features); ours
    batch_size: int = 64               # effective batch (paper), reached by accumulation
    micro_batch: int = 16              # utterances per forward pass
    grad_clip: float = 5.0             # largest gradient norm (clipped before each step)
    patience: int = 3                  # epochs without validation gain (train.select) before stopping
    select: str = "uar"                # uar | loss: the validation figure that picks the epoch of stages 1 and 3
    average: int = 1                   # a stage hands on the mean of its K best epochs' weights (by validation),
                                       # not the best epoch's alone (checkpoint averaging); 1: the best epoch; ours
    workers: int | None = None         # processes decoding a split too large for data.cache_mb; None: min(4, cores)
    seed: int = 0                      # initial weights, batch order and crops, masks, dropout, validation speakers
    device: str = "auto"               # auto (cuda when present) | cpu | cuda | cuda:N
    precision: str = "fp32"            # fp32 | bf16 (autocast on CUDA or CPU; the log-mel and cosines stay fp32)
    checkpointing: bool = False        # gradient checkpointing of the encoder's layers: less memory, ~30% more time


@dataclass
class Config:
    system: str = "gmp-tl"             # gmp-tl (all stages) | finetune (stage 1, then test) | probe
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        checks = [
            (self.system in SYSTEMS, f"system must be one of {', '.join(SYSTEMS)}"),
            (0.0 <= self.stage1.alpha <= 1.0, "stage1.alpha must be in [0, 1]"),
            (self.stage2.init in ("pretrained", "stage1"), "stage2.init must be 'pretrained' or 'stage1'"),
            (self.encoder.normalize in ("auto", True, False),
             f"encoder.normalize must be auto, true or false, not {self.encoder.normalize!r}"),
            (0.0 <= self.encoder.layerdrop < 1.0, "encoder.layerdrop must be in [0, 1)"),
            (self.stage3.loss in ("amsoftmax", "ce"), "stage3.loss must be 'amsoftmax' or 'ce'"),
            (0.0 <= self.stage2.mask_prob <= 1.0, "stage2.mask_prob must be in [0, 1]"),
            (self.stage2.mask_span >= 1, "stage2.mask_span must be >= 1"),
            (all(k >= 2 for k in self.pseudo.scales) and self.pseudo.scales, "pseudo.scales must be >= 2 each"),
            (self.train.frozen_epochs >= 0, "train.frozen_epochs must be >= 0"),
            (self.train.select in ("uar", "loss"), "train.select must be 'uar' or 'loss'"),
            (self.train.average >= 1, "train.average must be >= 1"),
            (self.train.head_weight_decay >= 0, "train.head_weight_decay must be >= 0"),
            (self.train.batch_size % self.train.micro_batch == 0,
             "train.batch_size must be a multiple of train.micro_batch"),
            (0.0 < self.data.valid_fraction < 1.0, "data.valid_fraction must be in (0, 1)"),
            (self.data.cache_mb >= 0, "data.cache_mb must be >= 0"),
            (not (self.data.corpora and self.data.root), "data.root: give data.corpora or data.root, not both"),
            (all("=" in m for c in self.data.corpora for m in c.map), "data.corpora map entries are FROM=TO"),
            (bool(self.augment.speed) and all(0.5 <= f <= 2.0 for f in self.augment.speed),
             "augment.speed must be factors in [0.5, 2]"),
            (len(self.augment.noise_snr) == 2 and self.augment.noise_snr[0] <= self.augment.noise_snr[1],
             "augment.noise_snr must be [low, high] in dB"),
            (all(0.0 <= p <= 1.0 for p in (self.augment.noise_prob, self.augment.rir_prob, self.augment.time_mask_prob,
                                            self.augment.freq_mask_prob)), "augment.*_prob must be in [0, 1]"),
            (min(self.augment.time_mask_span, self.augment.freq_mask_span) >= 1, "augment.*_span must be >= 1"),
            (self.train.workers is None or self.train.workers >= 0, "train.workers must be >= 0"),
            (self.train.precision in ("fp32", "bf16"), "train.precision must be 'fp32' or 'bf16'"),
            (self.train.device == "auto" or self.train.device == "cpu" or self.train.device.startswith("cuda"),
             "train.device must be auto, cpu, cuda or cuda:N"),
            (self.pseudo.backend in ("auto", "faiss", "torch"), "pseudo.backend must be auto, faiss or torch"),
            (self.pseudo.kmeans in ("full", "fast"), "pseudo.kmeans must be full or fast"),
            (self.probe.select in ("valid", "speaker-cv"), "probe.select must be valid or speaker-cv"),
            (self.probe.groups >= 2, "probe.groups must be >= 2"),
            (bool(self.probe.c) and all(c > 0 for c in self.probe.c), "probe.c must be positive values"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def _convert(value, kind, where: str):
    """``value`` checked against the annotation ``kind``; ints are accepted for floats."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_name(kind)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, where)
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads 1e-4 as a string
            return float(value)
        except ValueError:
            pass
    if kind in (int, float) and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {_name(kind)}, got {value!r}")
    return value


def _name(kind) -> str:
    return getattr(kind, "__name__", str(kind).replace("typing.", ""))


def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key '{key}' (known here: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def parse_overrides(pairs: list[str]) -> dict:
    """``["train.lr=3e-4", "pseudo.scales=[64,512]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(data: dict) -> Config:
    """A ``Config`` from a resolved config's dict (missing keys take their defaults)."""
    return _build(Config, data, "").validate()


def load_config(path=None, overrides: list[str] = ()) -> Config:
    """A ``Config`` from a YAML file (or the defaults) with ``key=value`` overrides applied."""
    data = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    data = _merge(data, parse_overrides(list(overrides)))
    try:
        return _build(Config, data, "").validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


# ----------------------------------------------------------------------------- the options, documented once

def option_docs() -> list[dict]:
    """Every option as ``key`` (``section.name``), ``type``, ``default`` and ``doc``: the comment beside its
    field above, the one place an option is documented (``gmptl config --list`` prints them)."""
    defaults, rows = Config().to_dict(), []
    for f in dataclasses.fields(Config):
        section = f.type if dataclasses.is_dataclass(f.type) else None
        owner = section or Config
        docs, hints = _field_comments(owner), typing.get_type_hints(owner)
        for g in dataclasses.fields(section) if section else [f]:
            rows.append({"key": f"{f.name}.{g.name}" if section else g.name, "type": _name(hints[g.name]),
                         "default": defaults[f.name][g.name] if section else defaults[g.name],
                         "doc": docs.get(g.name, "")})
    return rows


def _field_comments(cls) -> dict[str, str]:
    """``{field: its comment}`` from ``cls``'s source: the comment on the field's line and the comment-only
    lines below it, which continue it."""
    docs, field_name = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4:
            field_name = tok.string  # a field (or a method's def) starts a line indented once
        elif tok.type == tokenize.COMMENT and field_name:
            text = tok.string.lstrip("#").strip()
            docs[field_name] = f"{docs[field_name]} {text}" if field_name in docs else text
    return docs


def options_table(markdown: bool = False) -> str:
    """Every option with its default and what it does: a Markdown table (the README's), or plain text."""
    rows = option_docs()
    shown = lambda v: v if isinstance(v, str) and v else json.dumps(v)  # noqa: E731
    if markdown:
        escaped = [r["doc"].replace("|", r"\|") for r in rows]  # a | inside a cell would end it
        return "\n".join(["| option | default | what it does |", "| --- | --- | --- |"]
                         + [f"| `{r['key']}` | `{shown(r['default'])}` | {doc} |"
                            for r, doc in zip(rows, escaped)]) + "\n"
    width = max(len(r["key"]) for r in rows)
    return "".join(f"{r['key']:<{width}}  {shown(r['default']):<18} {r['doc']}\n" for r in rows)
