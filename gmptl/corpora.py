"""Corpus adapters: a corpus on disk becomes sorted utterance records with speaker-independent folds.

Each adapter lists the labelled audio files of one corpus layout (IEMOCAP, RAVDESS, EmoDB, CREMA-D, or any
corpus through a CSV/JSONL manifest); :func:`load_corpus` then keeps the requested classes, reads each kept
file's header for its duration and sets aside what cannot be used as :class:`Problem` records, never silently.

Fold groups (one test fold per group, in natural order):

- IEMOCAP: the session, ``Ses01`` .. ``Ses05`` (leave one session out).
- RAVDESS: fold k tests actors 4k-3 .. 4k (two men, two women), the benchmark protocol.
- EmoDB: one man and one woman per fold, each gender's speakers paired in sorted order: 03+08, 10+09, 11+13,
  12+14, 15+16.
- CREMA-D, and manifests without a ``fold`` column: speakers sorted by id within each gender (female, male,
  unknown) and dealt round-robin to 5 folds in one deal across the genders, so each fold's share of either
  gender and its number of speakers differ from the others' by at most one.
"""

import csv
import json
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .audio import audio_files, audio_info
from .config import DataConfig
from .errors import AudioError, CorpusError

log = logging.getLogger(__name__)

CORPUS_SUFFIXES = (".wav", ".flac")  # what the corpus layouts hold
NUM_FOLDS = 5  # CREMA-D and manifests without folds


@dataclass(frozen=True)
class Utterance:
    """One labelled audio file."""

    id: str             # unique within the corpus
    path: str           # absolute path to the audio file
    emotion: str        # label name, in the corpus's label set
    gender: str | None  # "female", "male", or None if unknown
    speaker: str
    group: str          # fold group: the utterance is tested in that group's fold
    duration: float     # seconds, from the file header (no decoding)


@dataclass(frozen=True)
class Problem:
    """A file or manifest row that was left out, and why."""

    path: str
    reason: str         # "missing file", "unreadable: ...", "unknown label 'xxx'", ...


@dataclass
class Fold:
    """One speaker-independent split: the test speakers' utterances against all the others."""

    index: int          # 1-based
    test_speakers: list[str]
    train: list[Utterance]
    test: list[Utterance]


@dataclass
class Corpus:
    """A loaded corpus: the usable utterances, what was left out, and its folds."""

    name: str
    root: str
    labels: list[str]            # fixed label order (saved with models)
    utterances: list[Utterance]  # sorted by id, only those with a label in `labels`
    problems: list[Problem]      # missing/unreadable files, unknown labels: listed, never hidden
    dropped: dict[str, int] = field(default_factory=dict)  # label or code -> files outside `labels`
    warnings: list[str] = field(default_factory=list)
    speaker_independent: bool = True  # False: a manifest without speakers, each file its own (opted in)

    @property
    def protocol(self) -> str:
        """What its folds are, for every result made on them: speaker-independent or speaker-dependent."""
        return "speaker-independent" if self.speaker_independent else "speaker-dependent"

    def folds(self) -> list[Fold]:
        """Speaker-independent folds, one per group, in natural group order (``2`` before ``10``)."""
        folds = []
        for k, g in enumerate(sorted({u.group for u in self.utterances}, key=_natural), start=1):
            test = [u for u in self.utterances if u.group == g]
            folds.append(Fold(k, sorted({u.speaker for u in test}), [u for u in self.utterances if u.group != g], test))
        return folds

    def fold(self, k: int) -> Fold:
        """Fold ``k`` (1-based)."""
        folds = self.folds()
        if not 1 <= k <= len(folds):
            raise CorpusError(f"{self.name}: no fold {k} (folds are 1..{len(folds)})")
        return folds[k - 1]

    def speakers(self) -> list[str]:
        """The speakers, sorted."""
        return sorted({u.speaker for u in self.utterances})


@dataclass
class Listing:
    """What an adapter found: labelled files (durations not read yet), problems, drops, warnings."""

    items: list[Utterance] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    no_speaker: int = 0  # rows whose speaker is unknown (a manifest without the column): each its own speaker


@dataclass(frozen=True)
class Adapter:
    """How one corpus layout is read."""

    read: Callable[[Path], Listing]
    labels: tuple[str, ...] | None  # the corpus's label set in standard order; None: sorted labels found
    layout: str                     # what root should hold, for error messages
    check: Callable[[Corpus], list[str]] | None = None  # extra warnings about a loaded corpus


# ----------------------------------------------------------------------------- shared helpers
_GENDERS = {"f": "female", "female": "female", "woman": "female", "m": "male", "male": "male", "man": "male"}
_GENDER_ORDER = {"female": 0, "male": 1, None: 2}


def _gender(value: str | None) -> str | None:
    """``F``, ``female``, ``Woman``... -> ``female``; ``M``, ``male``, ``man`` -> ``male``; else None."""
    return _GENDERS.get((value or "").strip().lower())


def _natural(text: str):
    """Sort key putting numeric strings in numeric order, after a ``<corpus>/`` prefix (``combine``)."""
    head, _, tail = text.rpartition("/")
    return (head, 0, int(tail), "") if tail.isdigit() else (head, 1, 0, tail)


def _item(path, id: str, emotion: str, gender: str | None, speaker: str, group: str) -> Utterance:
    """A record whose duration is read later, once the file is known to be kept."""
    return Utterance(id, os.path.abspath(path), emotion, gender, speaker, group, duration=0.0)


def _with_duration(item: Utterance) -> Utterance | Problem:
    """The record with its duration from the header, or the reason it cannot be used."""
    if not os.path.isfile(item.path):  # said plainly: the usual problem of a label list or manifest
        return Problem(item.path, "missing file")
    try:
        return replace(item, duration=float(audio_info(item.path).duration))
    except AudioError as e:
        return Problem(item.path, f"unreadable: {e.reason}")


def _deal_folds(items: list[Utterance], n: int = NUM_FOLDS) -> list[Utterance]:
    """The items with groups ``"1"``..``"n"``: speakers sorted within gender (female, male, unknown), dealt
    round-robin (fewer folds if fewer speakers) in one deal across the genders, so every fold gets its share
    of each gender (within one speaker) and the folds' speaker counts differ by at most one."""
    genders = {u.speaker: u.gender for u in reversed(items)}  # a manifest may disagree with itself: the first row wins
    order = sorted(genders, key=lambda s: (_GENDER_ORDER[genders[s]], s))
    n = max(1, min(n, len(order)))
    group = {s: str(i % n + 1) for i, s in enumerate(order)}
    return [replace(u, group=group[u.speaker]) for u in items]


def _by_name(root: Path, sub: str | None, name: re.Pattern, expected: str, parse) -> Listing:
    """The audio files under ``root / sub`` (or ``root``, without that folder), labelled by their names:
    ``parse(match, listing)`` of a name that fullmatches ``name`` gives the file's (emotion, gender, speaker,
    group), a problem's reason, or None for a file it counted in ``listing.dropped``."""
    out = Listing()
    folder = root / sub if sub and (root / sub).is_dir() else root
    for path in audio_files(folder, CORPUS_SUFFIXES):
        m = name.fullmatch(path.stem)
        found = parse(m, out) if m else f"name does not match {expected}"
        if isinstance(found, str):
            out.problems.append(Problem(str(path), found))
        elif found is not None:
            out.items.append(_item(path, path.stem, *found))
    return out


# ----------------------------------------------------------------------------- IEMOCAP
IEMOCAP_LABELS = ("neutral", "happy", "angry", "sad")
_IEMOCAP_CODES = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
_IEMOCAP_OTHER = {"fru", "sur", "fea", "dis", "oth", "xxx"}  # outside the 4-class set: dropped
# "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]"; evaluator lines
# ("C-E1:", "A-F1:") and "%" headers do not match.
_IEMOCAP_LINE = re.compile(r"\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(Ses\d\d\w+)\s+(\w+)\s+\[")
# The usual 4-class IEMOCAP (hap + exc merged, all 5 sessions): 5531 utterances.
IEMOCAP_STANDARD_COUNTS = {"neutral": 1708, "happy": 1636, "angry": 1103, "sad": 1084}


def _iemocap(root: Path) -> Listing:
    """IEMOCAP release: labels from ``SessionN/dialog/EmoEvaluation/*.txt``, audio in ``sentences/wav``."""
    out = Listing()
    for txt in sorted(t for t in root.glob("Session*/dialog/EmoEvaluation/*.txt") if not t.name.startswith(".")):
        for line in txt.read_text(errors="replace").splitlines():
            m = _IEMOCAP_LINE.match(line)
            if not m:
                continue
            uid, code = m.groups()
            dialog, turn = uid.rsplit("_", 1)
            wav = txt.parents[2] / "sentences" / "wav" / dialog / f"{uid}.wav"
            if code in _IEMOCAP_OTHER:
                out.dropped[code] += 1
            elif code not in _IEMOCAP_CODES:
                out.problems.append(Problem(str(wav), f"unknown label '{code}'"))
            else:
                # The turn's letter (F000, M012) is the speaker; the dialog's letter is who wore the markers.
                session = uid[:5]
                out.items.append(_item(wav, uid, _IEMOCAP_CODES[code], _gender(turn[0]), session + turn[0], session))
    return out


def _iemocap_check(corpus: Corpus) -> list[str]:
    """A warning when a full 5-session corpus's class counts are not the standard ones."""
    counts = Counter(u.emotion for u in corpus.utterances)
    found = {k: counts[k] for k in corpus.labels}
    expected = {k: IEMOCAP_STANDARD_COUNTS[k] for k in corpus.labels}
    if found == expected or {u.group for u in corpus.utterances} != {f"Ses0{i}" for i in range(1, 6)}:
        return []
    return [f"IEMOCAP class counts {_counts(found)} differ from the standard {_counts(expected)}"]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) + f" ({sum(counts.values())} in all)"


# ----------------------------------------------------------------------------- RAVDESS
RAVDESS_LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
_RAVDESS_NAME = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")


def _ravdess(root: Path) -> Listing:
    """RAVDESS speech: ``Actor_XX/MM-VC-EE-II-SS-RR-AA.wav`` (48 kHz original) or ``.flac``."""
    def parse(m, out):
        modality, channel, emotion, *_, actor = (int(x) for x in m.groups())
        if (modality, channel) != (3, 1):  # only audio-only speech; the song part is another corpus
            out.dropped["song" if channel == 2 else "video"] += 1
            return None
        if not 1 <= emotion <= len(RAVDESS_LABELS):
            return f"unknown label '{m[3]}'"
        if not 1 <= actor <= 24:
            return f"unknown actor '{m[7]}'"
        return (RAVDESS_LABELS[emotion - 1], "male" if actor % 2 else "female", f"Actor_{actor:02d}",
                str((actor - 1) // 4 + 1))
    return _by_name(root, None, _RAVDESS_NAME, "MM-VC-EE-II-SS-RR-AA", parse)


# ----------------------------------------------------------------------------- EmoDB
EMODB_LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "bored")
_EMODB_CODES = {"W": "angry", "L": "bored", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad", "N": "neutral"}
_EMODB_MALE, _EMODB_FEMALE = ("03", "10", "11", "12", "15"), ("08", "09", "13", "14", "16")
_EMODB_GROUP = {s: str(k) for pair in (_EMODB_MALE, _EMODB_FEMALE) for k, s in enumerate(pair, start=1)}
_EMODB_NAME = re.compile(r"(\d\d)([a-z]\d\d)([A-Za-z])([a-z])")


def _emodb(root: Path) -> Listing:
    """EmoDB: ``wav/03a01Fa.wav`` = speaker, text, emotion letter, version."""
    def parse(m, out):
        if m[3] not in _EMODB_CODES:
            return f"unknown label '{m[3]}'"
        if m[1] not in _EMODB_GROUP:
            return f"unknown speaker '{m[1]}'"
        return _EMODB_CODES[m[3]], "male" if m[1] in _EMODB_MALE else "female", m[1], _EMODB_GROUP[m[1]]
    return _by_name(root, "wav", _EMODB_NAME, "SSTTTEV (e.g. 03a01Fa)", parse)


# ----------------------------------------------------------------------------- CREMA-D
CREMAD_LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust")
_CREMAD_CODES = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
_CREMAD_NAME = re.compile(r"(\d+)_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})")


def _cremad(root: Path) -> Listing:
    """CREMA-D: ``AudioWAV/1001_DFA_ANG_XX.wav``, genders from ``VideoDemographics.csv``."""
    sexes = {}
    demographics = root / "VideoDemographics.csv"
    if demographics.is_file():
        with open(demographics, newline="", encoding="utf-8-sig") as f:
            sexes = {row["ActorID"].strip(): _gender(row.get("Sex")) for row in csv.DictReader(f)}

    def parse(m, out):
        if m[3] not in _CREMAD_CODES:
            return f"unknown label '{m[3]}'"
        return _CREMAD_CODES[m[3]], sexes.get(m[1]), m[1], ""
    out = _by_name(root, "AudioWAV", _CREMAD_NAME, "ACTOR_SENTENCE_EMOTION_LEVEL", parse)
    if not demographics.is_file():
        out.warnings.append(f"{demographics} not found: genders unknown, folds not gender-balanced")
    missing = sorted({u.speaker for u in out.items if sexes and u.speaker not in sexes})
    out.problems += [Problem(str(demographics), f"no row for actor {a}: gender unknown") for a in missing]
    out.items = _deal_folds(out.items)
    return out


# ----------------------------------------------------------------------------- manifest
def _manifest_rows(manifest: Path):
    """(line number, row dict or None if unparsable) for each record of a CSV or JSONL manifest."""
    suffix = manifest.suffix.lower()
    if suffix == ".csv":
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not {"path", "emotion"} <= set(reader.fieldnames or ()):
                raise CorpusError(f"{manifest}: a manifest needs 'path' and 'emotion' columns "
                                  f"(found: {', '.join(reader.fieldnames or ()) or 'none'})")
            for row in reader:
                yield reader.line_num, row
    elif suffix == ".jsonl":
        with open(manifest, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = None
                    yield n, row if isinstance(row, dict) else None
    else:
        raise CorpusError(f"{manifest}: a manifest must be a .csv or .jsonl file")


def _field(row: dict | None, key: str) -> str:
    """A manifest value as text ("" if absent); JSON numbers, 0 included, become text too."""
    value = (row or {}).get(key)
    return "" if value is None else str(value).strip()


def _manifest(manifest: Path) -> Listing:
    """Any corpus: rows ``path, emotion[, gender, speaker, fold, id]``; paths relative to the manifest."""
    out = Listing()
    for n, row in _manifest_rows(manifest):
        path, emotion, gender = (_field(row, key) for key in ("path", "emotion", "gender"))
        if row is None or not path or not emotion:
            why = "not a JSON object" if row is None else "no path" if not path else "no emotion"
            out.problems.append(Problem(str(manifest), f"line {n}: {why}"))
            continue
        full = manifest.parent / path
        if gender and not _gender(gender):
            out.problems.append(Problem(str(full), f"unknown gender '{gender}'"))
        uid = _field(row, "id") or os.path.splitext(path)[0]
        speaker = _field(row, "speaker")
        out.no_speaker += not speaker
        out.items.append(_item(full, uid, emotion, _gender(gender), speaker or uid, group=_field(row, "fold")))
    given = sum(bool(u.group) for u in out.items)
    if 0 < given < len(out.items):
        raise CorpusError(f"{manifest}: 'fold' is given for {given} of {len(out.items)} rows; give it for all or none")
    seen = {}
    for u in out.items:
        if seen.setdefault(u.speaker, u.group) != u.group:  # a speaker in two folds would be tested on itself
            raise CorpusError(f"{manifest}: speaker '{u.speaker}' is in folds {seen[u.speaker]} and {u.group}")
    if not given:
        out.items = _deal_folds(out.items)
    return out


CORPORA: dict[str, Adapter] = {
    "iemocap": Adapter(_iemocap, IEMOCAP_LABELS, "SessionN/dialog/EmoEvaluation/*.txt and "
                       "SessionN/sentences/wav/<dialog>/<utterance>.wav", _iemocap_check),
    "ravdess": Adapter(_ravdess, RAVDESS_LABELS, "Actor_XX/03-01-EE-II-SS-RR-AA.wav or .flac"),
    "emodb": Adapter(_emodb, EMODB_LABELS, "wav/03a01Fa.wav"),
    "cremad": Adapter(_cremad, CREMAD_LABELS, "AudioWAV/1001_DFA_ANG_XX.wav"),
    "manifest": Adapter(_manifest, None, "a CSV or JSONL file with path and emotion"),
}


# ----------------------------------------------------------------------------- public functions
def configured_corpus(data) -> Corpus:
    """The corpus a config's ``data`` section (``gmptl.config.DataConfig``) names: one, or with
    ``data.corpora`` the union of several (``combine``)."""
    if data.corpora:
        return combine([load_corpus(c.corpus, c.root, speaker_dependent=data.speaker_dependent) for c in data.corpora],
                       [label_map(c.map) for c in data.corpora], data.classes)
    return load_corpus(data.corpus, data.root, classes=data.classes, speaker_dependent=data.speaker_dependent)


def label_map(pairs: list[str]) -> dict[str, str]:
    """``["calm=neutral", ...]`` -> ``{"calm": "neutral", ...}``."""
    return dict(p.split("=", 1) for p in pairs)


def combine(corpora: list[Corpus], maps: list[dict[str, str]], classes: list[str] | None = None) -> Corpus:
    """Several corpora as one: labels renamed by each corpus's map, kept if in ``classes`` (None: every label
    any corpus has, sorted); ids, speakers and fold groups prefixed ``<corpus>/``, so no two corpora share a
    speaker and every fold tests one group of one corpus, speaker-independent as each corpus's own folds."""
    if len({c.name for c in corpora}) < len(corpora):
        raise CorpusError(f"data.corpora: {', '.join(c.name for c in corpora)}: give each corpus once")
    renamed = [[replace(u, emotion=m.get(u.emotion, u.emotion)) for u in c.utterances] for c, m in zip(corpora, maps)]
    found = sorted({u.emotion for us in renamed for u in us})
    if classes is not None and (unknown := [k for k in classes if k not in found]):
        raise CorpusError(f"data.classes: {', '.join(unknown)} in none of the corpora (labels: {', '.join(found)})")
    labels = list(classes) if classes is not None else found
    utterances, dropped = [], Counter()
    for c, us in zip(corpora, renamed):
        for u in us:
            if u.emotion in labels:
                utterances.append(replace(u, id=f"{c.name}/{u.id}", speaker=f"{c.name}/{u.speaker}",
                                          group=f"{c.name}/{u.group}"))
            else:
                dropped[f"{c.name}/{u.emotion}"] += 1
        dropped.update({f"{c.name}/{k}": v for k, v in c.dropped.items()})
    return Corpus("+".join(c.name for c in corpora), ";".join(c.root for c in corpora), labels,
                  sorted(utterances, key=lambda u: u.id), [p for c in corpora for p in c.problems],
                  dict(sorted(dropped.items())), [w for c in corpora for w in c.warnings],
                  speaker_independent=all(c.speaker_independent for c in corpora))


def load_corpus(name: str, root, classes: list[str] | None = None, speaker_dependent: bool = False) -> Corpus:
    """Read a corpus: its usable utterances (sorted by id), what was left out, its folds.

    ``name`` is one of :data:`CORPORA`; ``root`` its directory (the CSV/JSONL file for ``manifest``).
    ``classes``: label subset, in this order, the others dropped (counted in ``Corpus.dropped``);
    None: the corpus's standard label set and order (IEMOCAP: neutral, happy, angry, sad; a
    manifest: its labels, sorted). ``speaker_dependent``: accept a manifest whose rows lack a
    speaker, each file then its own speaker: its folds are not speaker-independent, and every
    result made on them says "speaker-dependent" (``Corpus.protocol``). Raises CorpusError: unknown
    corpus or class, root missing or of the wrong kind, no audio found, or nothing usable left.
    """
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus '{name}' (known: {', '.join(CORPORA)})")
    adapter, root = CORPORA[name], Path(os.path.abspath(Path(root).expanduser()))
    want_file = name == "manifest"
    if not root.exists():
        raise CorpusError(f"{root}: no such {'file' if want_file else 'directory'}")
    if root.is_file() != want_file:
        raise CorpusError(f"{root}: not a {'file' if want_file else 'directory'} (expected {adapter.layout})")
    listing = adapter.read(root)
    if not listing.items and not listing.problems:
        raise CorpusError(f"{root}: no audio found (expected {adapter.layout})")
    if listing.no_speaker and not speaker_dependent:
        raise CorpusError(f"{root}: {listing.no_speaker} of {len(listing.items)} rows name no speaker, so its folds "
                          "would test on speakers seen in training; add a 'speaker' column, or set "
                          "data.speaker_dependent=true to accept each file as its own speaker")

    labels = list(adapter.labels or sorted({u.emotion for u in listing.items}))
    if classes is not None:
        unknown = [c for c in classes if c not in labels]
        if unknown:
            raise CorpusError(f"{name}: unknown class(es) {', '.join(unknown)} (valid: {', '.join(labels)})")
        if not classes or len(set(classes)) != len(classes):
            raise CorpusError(f"{name}: classes {list(classes)} must be a non-empty list without repeats")
        labels = list(classes)

    utterances, problems, seen = [], list(listing.problems), set()
    for item in listing.items:
        if item.emotion not in labels:
            listing.dropped[item.emotion] += 1
        elif item.id in seen:
            problems.append(Problem(item.path, f"duplicate id '{item.id}'"))
        else:
            seen.add(item.id)
            result = _with_duration(item)
            (utterances if isinstance(result, Utterance) else problems).append(result)
    corpus = Corpus(name, str(root), labels, sorted(utterances, key=lambda u: u.id),
                    sorted(problems, key=lambda p: (p.path, p.reason)),
                    dict(sorted(listing.dropped.items())), list(listing.warnings),
                    speaker_independent=not listing.no_speaker)
    if adapter.check:
        corpus.warnings += adapter.check(corpus)
    for warning in corpus.warnings:
        log.warning("%s: %s", name, warning)
    if not corpus.utterances:
        first = f"; first: {problems[0].path}: {problems[0].reason}" if problems else ""
        raise CorpusError(f"{root}: no usable utterances of {', '.join(labels)} ({len(problems)} problem(s){first})")
    return corpus


def validation_split(train: list[Utterance], fraction: float = 0.1,
                     seed: int = 0) -> tuple[list[Utterance], list[Utterance]]:
    """Hold out whole training speakers for validation (never a test speaker: only ``train`` is seen).

    ``round(fraction * speakers)`` speakers are taken (at least one, and at least one left to train on), spread
    over genders in proportion: each gender's speakers are shuffled by ``seed`` and interleaved by rank over
    their count, so 20 speakers (10 women, 10 men) with fraction 0.1 give one woman and one man; the same seed
    gives the same split. Returns (the remaining training utterances, the validation utterances), input order
    kept; raises CorpusError with fewer than two speakers to split.
    """
    genders = {u.speaker: u.gender for u in reversed(train)}  # the first utterance's gender
    if len(genders) < 2:
        raise CorpusError(f"validation_split needs at least 2 training speakers, got {len(genders)}")
    count = min(max(1, round(fraction * len(genders))), len(genders) - 1)
    rng = random.Random(seed)
    by_gender = {}
    for speaker in sorted(genders):
        by_gender.setdefault(genders[speaker], []).append(speaker)
    ranked = []
    for speakers in by_gender.values():
        rng.shuffle(speakers)
        tie = rng.random()  # which gender goes first when their ranks tie
        ranked += [((i + 0.5) / len(speakers), tie, s) for i, s in enumerate(speakers)]
    held = {s for _, _, s in sorted(ranked)[:count]}
    return [u for u in train if u.speaker not in held], [u for u in train if u.speaker in held]


def summarize(corpus: Corpus, crop: float = DataConfig.max_seconds) -> dict:
    """A JSON-ready overview: counts per class and gender, duration and its spread, what a training
    crop of ``crop`` seconds (``data.max_seconds``) cuts, folds, problems, drops, warnings."""
    classes = Counter(u.emotion for u in corpus.utterances)
    genders = Counter(u.gender or "unknown" for u in corpus.utterances)
    durations = [u.duration for u in corpus.utterances]
    total = sum(durations)
    return {
        "corpus": corpus.name, "root": corpus.root, "labels": list(corpus.labels),
        "utterances": len(corpus.utterances), "seconds": round(total, 3),
        "durations": dict(zip(("min", "p10", "median", "p90", "max"),
                              np.quantile(durations, [0.0, 0.1, 0.5, 0.9, 1.0]).round(3).tolist())),
        "crop": {"seconds": crop,
                 "utterances_cut": round(sum(d > crop for d in durations) / len(durations), 4),
                 "audio_cut": round(sum(max(d - crop, 0.0) for d in durations) / total, 4) if total else 0.0},
        "classes": {label: classes[label] for label in corpus.labels},
        "genders": {g: genders[g] for g in ("female", "male", "unknown") if g != "unknown" or genders[g]},
        "speakers": len(corpus.speakers()), "protocol": corpus.protocol,
        "folds": [{"fold": f.index, "test_speakers": f.test_speakers, "test_utterances": len(f.test)}
                  for f in corpus.folds()],
        "dropped": dict(corpus.dropped), "problems": [{"path": p.path, "reason": p.reason} for p in corpus.problems],
        "warnings": list(corpus.warnings),
    }
