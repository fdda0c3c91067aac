"""Corpus adapters on generated corpora in the real layouts, folds, validation split, summary."""

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from fixtures_corpora import (SECONDS, make_cremad, make_emodb, make_iemocap, make_ravdess,
                              write_audio)

from gmptl import corpora
from gmptl.corpora import CORPORA, Utterance, load_corpus, summarize, validation_split
from gmptl.errors import CorpusError

REPO = Path(__file__).resolve().parents[1]


def by_id(corpus):
    return {u.id: u for u in corpus.utterances}


def reasons(corpus):
    return {p.path: p.reason for p in corpus.problems}


def test_all_corpora_are_registered():
    assert set(CORPORA) == {"iemocap", "ravdess", "emodb", "cremad", "manifest"}


# ----------------------------------------------------------------------------- IEMOCAP

def test_iemocap_four_classes_speakers_and_sessions(tmp_path):
    make_iemocap(tmp_path, sessions=(1, 2))
    (tmp_path / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M003.wav").unlink()  # an 'ang' turn
    with open(tmp_path / "Session2/dialog/EmoEvaluation/Ses02M_script01_1.txt", "a") as f:
        f.write("\n[40.0000 - 41.5000]\tSes02M_script01_1_F099\thapy\t[2.5000, 2.5000, 2.5000]\n")
    corpus = load_corpus("iemocap", tmp_path)

    assert corpus.labels == ["neutral", "happy", "angry", "sad"]
    assert [u.id for u in corpus.utterances] == sorted(u.id for u in corpus.utterances)
    s = summarize(corpus)
    # Per session: 2 dialogs x 2 speakers per code; hap and exc both count as happy; one 'ang' wav is gone.
    assert s["classes"] == {"neutral": 8, "happy": 16, "angry": 7, "sad": 8}
    assert s["dropped"] == {"fru": 8, "xxx": 8}
    assert s["genders"] == {"female": 20, "male": 19} and s["speakers"] == 4
    missing = str(tmp_path / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M003.wav")
    unknown = str(tmp_path / "Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F099.wav")
    assert reasons(corpus) == {missing: "missing file", unknown: "unknown label 'hapy'"}
    assert s["warnings"] == []  # only 2 sessions: no comparison with the standard counts

    u = by_id(corpus)
    assert u["Ses01F_impro01_F001"].emotion == u["Ses01F_impro01_F002"].emotion == "happy"  # hap, exc
    # The turn's letter is the speaker, whoever leads the dialog.
    m = u["Ses01F_impro01_M000"]
    assert (m.emotion, m.gender, m.speaker, m.group) == ("neutral", "male", "Ses01M", "Ses01")
    f = u["Ses02M_script01_1_F004"]
    assert (f.emotion, f.gender, f.speaker, f.group) == ("sad", "female", "Ses02F", "Ses02")
    assert f.path == str(tmp_path / "Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F004.wav")
    assert f.duration == pytest.approx(SECONDS)

    folds = corpus.folds()
    assert [(f.index, f.test_speakers) for f in folds] == [(1, ["Ses01F", "Ses01M"]), (2, ["Ses02F", "Ses02M"])]
    assert {u.group for u in folds[0].test} == {"Ses01"} and {u.group for u in folds[0].train} == {"Ses02"}
    assert len(folds[1].train) + len(folds[1].test) == 39


def test_iemocap_class_subset_and_order(tmp_path):
    make_iemocap(tmp_path, sessions=(3,))
    corpus = load_corpus("iemocap", tmp_path, classes=["sad", "neutral"])
    assert corpus.labels == ["sad", "neutral"]
    assert summarize(corpus)["classes"] == {"sad": 4, "neutral": 4}
    assert corpus.dropped == {"angry": 4, "fru": 4, "happy": 8, "xxx": 4}
    assert corpus.problems == []
    with pytest.raises(CorpusError, match="valid: neutral, happy, angry, sad"):
        load_corpus("iemocap", tmp_path, classes=["neutral", "frustrated"])


def test_iemocap_full_corpus_counts_are_checked(tmp_path, caplog, monkeypatch):
    make_iemocap(tmp_path, sessions=(1, 2, 3, 4, 5))
    with caplog.at_level(logging.WARNING, logger="gmptl.corpora"):
        corpus = load_corpus("iemocap", tmp_path)
    assert "differ from the standard neutral 1708, happy 1636, angry 1103, sad 1084 (5531 in all)" in caplog.text
    assert "neutral 20, happy 40, angry 20, sad 20 (100 in all)" in caplog.text
    s = summarize(corpus)
    assert len(s["warnings"]) == 1 and "5531" in s["warnings"][0]
    assert [f["test_speakers"] for f in s["folds"]] == [[f"Ses0{i}F", f"Ses0{i}M"] for i in range(1, 6)]
    assert all(f["test_utterances"] == 20 for f in s["folds"])

    # A corpus with the standard counts loads without a warning.
    monkeypatch.setattr(corpora, "IEMOCAP_STANDARD_COUNTS", {"neutral": 20, "happy": 40, "angry": 20, "sad": 20})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gmptl.corpora"):
        assert load_corpus("iemocap", tmp_path).warnings == []
    assert caplog.text == ""


# ----------------------------------------------------------------------------- RAVDESS

@pytest.mark.parametrize("suffix,rate", [(".wav", 48000), (".flac", 16000)])
def test_ravdess_both_layouts(tmp_path, suffix, rate):
    make_ravdess(tmp_path, suffix, rate)
    write_audio(tmp_path / "Actor_01" / f"03-02-03-01-01-01-01{suffix}", rate)  # song: another corpus
    bad = write_audio(tmp_path / "Actor_02" / f"03-01-03-01-01-01{suffix}", rate)  # a field short
    corpus = load_corpus("ravdess", tmp_path)
    s = summarize(corpus)

    assert s["labels"] == ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    assert s["utterances"] == 192 and set(s["classes"].values()) == {24}
    assert s["genders"] == {"female": 96, "male": 96} and s["speakers"] == 24
    assert s["seconds"] == pytest.approx(192 * SECONDS)
    assert s["dropped"] == {"song": 1}
    assert s["problems"] == [{"path": str(bad), "reason": "name does not match MM-VC-EE-II-SS-RR-AA"}]
    assert [f["test_speakers"] for f in s["folds"]] == [
        [f"Actor_{a:02d}" for a in range(4 * k - 3, 4 * k + 1)] for k in range(1, 7)]

    u = by_id(corpus)["03-01-05-01-01-01-07"]
    assert (u.emotion, u.gender, u.speaker, u.group) == ("angry", "male", "Actor_07", "2")
    assert by_id(corpus)["03-01-02-01-01-01-24"].gender == "female"
    fold = corpus.fold(6)
    assert {x.speaker for x in fold.test} == {"Actor_21", "Actor_22", "Actor_23", "Actor_24"}
    assert not {x.speaker for x in fold.train} & set(fold.test_speakers) and len(fold.train) == 160
    with pytest.raises(CorpusError, match="no fold 7"):
        corpus.fold(7)


def test_ravdess_four_classes(tmp_path):
    make_ravdess(tmp_path, actors=range(1, 9))
    corpus = load_corpus("ravdess", tmp_path, classes=["neutral", "happy", "sad", "angry"])
    assert summarize(corpus)["classes"] == {"neutral": 8, "happy": 8, "sad": 8, "angry": 8}
    assert corpus.dropped == {"calm": 8, "disgust": 8, "fearful": 8, "surprised": 8}
    assert len(corpus.folds()) == 2


@pytest.mark.data
def test_real_ravdess_copy(ravdess_root):
    """The shared 16 kHz FLAC copy (conftest finds it at ../shared/data/ravdess, or skips)."""
    s = summarize(load_corpus("ravdess", ravdess_root))
    assert s["utterances"] == 1440 and s["speakers"] == 24
    assert s["classes"] == {"neutral": 96, **{c: 192 for c in corpora.RAVDESS_LABELS[1:]}}
    assert s["genders"] == {"female": 720, "male": 720}
    assert [f["test_speakers"] for f in s["folds"]] == [
        [f"Actor_{a:02d}" for a in range(4 * k - 3, 4 * k + 1)] for k in range(1, 7)]
    assert all(f["test_utterances"] == 240 for f in s["folds"])
    assert s["problems"] == [] and s["dropped"] == {}
    assert s["seconds"] == pytest.approx(5329, abs=5)


# ----------------------------------------------------------------------------- EmoDB, CREMA-D

def test_emodb(tmp_path):
    make_emodb(tmp_path)
    write_audio(tmp_path / "wav" / "03a02Wb.wav")   # a second version of another text
    bad_letter = write_audio(tmp_path / "wav" / "03a01Xa.wav")
    bad_speaker = write_audio(tmp_path / "wav" / "07a01Wa.wav")
    corpus = load_corpus("emodb", tmp_path)
    s = summarize(corpus)

    assert s["labels"] == ["neutral", "happy", "sad", "angry", "fearful", "disgust", "bored"]
    assert s["classes"] == {"neutral": 10, "happy": 10, "sad": 10, "angry": 11, "fearful": 10,
                            "disgust": 10, "bored": 10}
    assert s["genders"] == {"female": 35, "male": 36}
    assert reasons(corpus) == {str(bad_letter): "unknown label 'X'", str(bad_speaker): "unknown speaker '07'"}
    # One man and one woman per fold, each gender's speakers paired in sorted order.
    assert [f["test_speakers"] for f in s["folds"]] == [["03", "08"], ["09", "10"], ["11", "13"],
                                                        ["12", "14"], ["15", "16"]]
    u = by_id(corpus)["03a02Wb"]
    assert (u.emotion, u.gender, u.speaker, u.group) == ("angry", "male", "03", "1")


def test_cremad_with_demographics(tmp_path):
    make_cremad(tmp_path)
    write_audio(tmp_path / "AudioWAV" / "1011_IEO_HAP_HI.wav")   # an actor the csv does not list
    (tmp_path / "AudioWAV" / "1010_MTI_SAD_XX.wav").write_bytes(b"")  # empty, like 1076_MTI_SAD_XX.wav
    corpus = load_corpus("cremad", tmp_path)
    s = summarize(corpus)

    assert s["labels"] == ["neutral", "happy", "sad", "angry", "fearful", "disgust"]
    assert s["classes"] == {"neutral": 10, "happy": 11, "sad": 10, "angry": 10, "fearful": 10, "disgust": 10}
    assert s["genders"] == {"female": 24, "male": 36, "unknown": 1}
    problems = reasons(corpus)
    assert problems[str(tmp_path / "VideoDemographics.csv")] == "no row for actor 1011: gender unknown"
    assert problems[str(tmp_path / "AudioWAV" / "1010_MTI_SAD_XX.wav")].startswith("unreadable: ")
    assert s["warnings"] == []
    u = by_id(corpus)["1004_DFA_NEU_XX"]
    assert (u.emotion, u.gender, u.speaker) == ("neutral", "female", "1004")

    # Speakers sorted within gender (women, men, unknown), dealt round-robin to 5 folds.
    folds = corpus.folds()
    # Women 1004 1006 1007 1010 -> folds 1-4; men 1001 1002 1003 1005 1008 1009 -> 5, 1-5; 1011 -> 1.
    assert [f.test_speakers for f in folds] == [["1002", "1004", "1011"], ["1003", "1006"], ["1005", "1007"],
                                                ["1008", "1010"], ["1001", "1009"]]
    for gender in ("female", "male"):
        per_fold = [len({u.speaker for u in f.test if u.gender == gender}) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1


def test_cremad_without_demographics(tmp_path, caplog):
    make_cremad(tmp_path, demographics=False)
    with caplog.at_level(logging.WARNING, logger="gmptl.corpora"):
        corpus = load_corpus("cremad", tmp_path, classes=["angry", "sad"])
    assert "VideoDemographics.csv not found" in caplog.text
    s = summarize(corpus)
    assert s["genders"] == {"female": 0, "male": 0, "unknown": 20}
    assert len(s["warnings"]) == 1 and corpus.problems == []
    assert [f["test_speakers"] for f in s["folds"]] == [[a, str(int(a) + 5)] for a in ("1001", "1002", "1003",
                                                                                     "1004", "1005")]
    assert sorted(corpus.dropped) == ["disgust", "fearful", "happy", "neutral"]


# ----------------------------------------------------------------------------- manifest

def test_manifest_csv(tmp_path, monkeypatch):
    for name in ("a/one.wav", "a/two.flac", "b/three.wav", "b/four.wav", "c/six.wav"):
        write_audio(tmp_path / "audio" / name)
    manifest = tmp_path / "audio" / "list.csv"
    manifest.write_text("path,emotion,gender,speaker\n"
                        "a/one.wav,happy,F,s1\n"
                        "a/two.flac,sad,woman,s1\n"
                        "b/three.wav,happy,m,s2\n"
                        "b/four.wav,angry,x,s3\n"
                        ",happy,F,s4\n"
                        "c/six.wav,,F,s4\n"
                        "c/missing.wav,sad,Male,s5\n")
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the manifest's folder, not the cwd
    corpus = load_corpus("manifest", "audio/list.csv")
    s = summarize(corpus)

    assert s["labels"] == ["angry", "happy", "sad"]  # sorted, as none were given
    assert s["classes"] == {"angry": 1, "happy": 2, "sad": 1}
    assert s["genders"] == {"female": 2, "male": 1, "unknown": 1}
    assert s["problems"] == [  # sorted by path; the gender problem keeps its file in the corpus
        {"path": str(tmp_path / "audio/b/four.wav"), "reason": "unknown gender 'x'"},
        {"path": str(tmp_path / "audio/c/missing.wav"), "reason": "missing file"},
        {"path": str(manifest), "reason": "line 6: no path"},
        {"path": str(manifest), "reason": "line 7: no emotion"}]
    u = by_id(corpus)["a/two"]
    assert (u.path, u.emotion, u.gender, u.speaker) == (str(tmp_path / "audio/a/two.flac"), "sad", "female", "s1")
    assert by_id(corpus)["b/four"].gender is None
    # s1 (woman), s2 and s5 (men), s3 (unknown) dealt to folds 1..4; s5's only file is missing.
    assert [(f.index, f.test_speakers) for f in corpus.folds()] == [(1, ["s1"]), (2, ["s2"]), (3, ["s3"])]
    assert corpus.fold(3).test[0].group == "4"


def test_manifest_jsonl_with_folds_and_ids(tmp_path):
    lines = [{"path": str(write_audio(tmp_path / f"x{i}.wav")), "emotion": e, "speaker": f"p{i % 3}",
              "fold": i % 3 * 5, "id": f"utt{i}"} for i, e in enumerate("aabbcc")]
    text = [json.dumps(x) for x in lines]
    text.insert(2, "{not json")
    (tmp_path / "m.jsonl").write_text("\n".join(text) + "\n\n")
    corpus = load_corpus("manifest", tmp_path / "m.jsonl", classes=["c", "a"])

    assert corpus.labels == ["c", "a"] and corpus.dropped == {"b": 2}
    assert [u.id for u in corpus.utterances] == ["utt0", "utt1", "utt4", "utt5"]
    assert corpus.problems[0].reason == "line 3: not a JSON object"
    # Groups are the given folds (JSON numbers, 0 included), in numeric order: 0, 5, then 10.
    assert [(f.index, f.test_speakers) for f in corpus.folds()] == [(1, ["p0"]), (2, ["p1"]), (3, ["p2"])]
    assert [f.test[0].group for f in corpus.folds()] == ["0", "5", "10"]


def test_manifest_without_speakers_or_folds(tmp_path):
    rows = [f"w{i}.wav,{'ab'[i % 2]}" for i in range(12)]
    for i in range(12):
        write_audio(tmp_path / f"w{i}.wav")
    (tmp_path / "m.csv").write_text("path,emotion\n" + "\n".join(rows) + "\n")
    # Each file its own speaker would make "speaker-independent" folds that are not: refused unless asked for.
    with pytest.raises(CorpusError, match=r"m.csv: 12 of 12 rows name no speaker.*data.speaker_dependent=true"):
        load_corpus("manifest", tmp_path / "m.csv")
    corpus = load_corpus("manifest", tmp_path / "m.csv", speaker_dependent=True)
    assert corpus.protocol == "speaker-dependent" and summarize(corpus)["protocol"] == "speaker-dependent"
    assert corpus.speakers() == sorted(f"w{i}" for i in range(12))  # each file its own speaker
    assert [len(f.test) for f in corpus.folds()] == [3, 3, 2, 2, 2]

    (tmp_path / "two.csv").write_text("path,emotion\nw0.wav,a\nw1.wav,b\n")
    assert len(load_corpus("manifest", tmp_path / "two.csv", speaker_dependent=True).folds()) == 2  # < 5 speakers
    (tmp_path / "some.csv").write_text("path,emotion,speaker\nw0.wav,a,s0\nw1.wav,b,\n")
    with pytest.raises(CorpusError, match="1 of 2 rows name no speaker"):
        load_corpus("manifest", tmp_path / "some.csv")
    (tmp_path / "all.csv").write_text("path,emotion,speaker\nw0.wav,a,s0\nw1.wav,b,s1\n")
    assert load_corpus("manifest", tmp_path / "all.csv", speaker_dependent=True).protocol == "speaker-independent"


@pytest.mark.parametrize("text,message", [
    ("path,emotion,speaker,fold\nw0.wav,a,s,1\nw1.wav,a,s,2\n", "speaker 's' is in folds 1 and 2"),
    ("path,emotion,fold\nw0.wav,a,1\nw1.wav,a,\n", "'fold' is given for 1 of 2 rows"),
    ("file,label\nw0.wav,a\n", "needs 'path' and 'emotion' columns"),
])
def test_bad_manifests(tmp_path, text, message):
    for name in ("w0.wav", "w1.wav"):
        write_audio(tmp_path / name)
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(CorpusError, match=message):
        load_corpus("manifest", tmp_path / "m.csv")


# ----------------------------------------------------------------------------- errors

def test_corpus_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    make_emodb(tmp_path / "emodb")
    cases = [
        (("ravdess", tmp_path / "nope"), "nope: no such directory"),
        (("ravdess", tmp_path / "notes.txt"), "notes.txt: not a directory"),
        (("ravdess", tmp_path / "empty"), r"empty: no audio found \(expected Actor_XX/"),
        (("iemocap", tmp_path / "empty"), r"no audio found \(expected SessionN/dialog/EmoEvaluation"),
        (("manifest", tmp_path / "empty"), "empty: not a file"),
        (("manifest", tmp_path / "notes.txt"), "must be a .csv or .jsonl file"),
        (("timit", tmp_path), "unknown corpus 'timit' \\(known: iemocap, ravdess, emodb, cremad, manifest\\)"),
        (("emodb", tmp_path / "emodb", ["angry", "calm"]), r"unknown class\(es\) calm \(valid: neutral, happy, "
                                                           "sad, angry, fearful, disgust, bored"),
        (("emodb", tmp_path / "emodb", ["angry", "angry"]), "without repeats"),
        (("emodb", tmp_path / "emodb", []), "non-empty"),
        (("ravdess", tmp_path / "emodb"), "no usable utterances .* first: .*03a01Aa.wav: name does not match"),
    ]
    for args, message in cases:
        with pytest.raises(CorpusError, match=message):
            load_corpus(*args)


def test_summary_is_json_ready(tmp_path):
    make_emodb(tmp_path)
    s = summarize(load_corpus("emodb", tmp_path))
    assert json.loads(json.dumps(s)) == s
    assert {"corpus", "root", "utterances", "seconds", "classes", "genders", "speakers", "folds", "problems",
            "labels"} <= set(s)
    assert s["corpus"] == "emodb" and s["root"] == str(tmp_path) and s["folds"][0] == {
        "fold": 1, "test_speakers": ["03", "08"], "test_utterances": 14}


def test_summary_durations_and_what_a_crop_cuts(tmp_path):
    lengths = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 5.0, "e": 9.0}
    for name, seconds in lengths.items():
        write_audio(tmp_path / f"{name}.wav", seconds=seconds)
    (tmp_path / "list.csv").write_text("path,emotion,speaker\n" + "".join(
        f"{name}.wav,happy,s{i}\n" for i, name in enumerate(lengths)))
    corpus = load_corpus("manifest", tmp_path / "list.csv")

    s = summarize(corpus, crop=4.0)
    assert s["seconds"] == 20.0
    assert s["durations"] == {"min": 1.0, "p10": 1.4, "median": 3.0, "p90": 7.4, "max": 9.0}
    assert s["crop"] == {"seconds": 4.0, "utterances_cut": 0.4, "audio_cut": 0.3}  # 2 of 5; (1 + 5) of 20 s
    assert summarize(corpus, crop=9.0)["crop"] == {"seconds": 9.0, "utterances_cut": 0.0, "audio_cut": 0.0}


# ----------------------------------------------------------------------------- validation split

def test_validation_split_holds_out_training_speakers(tmp_path):
    fold = load_corpus("ravdess", make_ravdess(tmp_path)).fold(1)
    rest, valid = validation_split(fold.train, 0.1, seed=0)
    speakers = {u.speaker for u in valid}
    assert len(speakers) == 2 and Counter(u.gender for u in valid) == {"female": 8, "male": 8}
    assert not speakers & set(fold.test_speakers) and not speakers & {u.speaker for u in rest}
    assert sorted(rest + valid, key=lambda u: u.id) == sorted(fold.train, key=lambda u: u.id)
    assert validation_split(fold.train, 0.1, seed=0) == (rest, valid)  # deterministic
    picks = {frozenset(u.speaker for u in validation_split(fold.train, 0.1, seed)[1]) for seed in range(5)}
    assert len(picks) > 1

    half = {u.speaker: u.gender for u in validation_split(fold.train, 0.5, seed=3)[1]}
    assert Counter(half.values()) == {"female": 5, "male": 5}


def test_validation_speakers_recur_across_folds_unless_seeded_by_fold(tmp_path):
    from gmptl.config import load_config
    from gmptl.pipeline import fold_split

    corpus = load_corpus("ravdess", make_ravdess(tmp_path))
    distinct = {}
    for by_fold in (False, True):
        cfg = load_config(REPO / "configs" / "ravdess_whisper_tiny.yaml", [f"data.valid_by_fold={by_fold}"])
        speakers = set()
        for fold in corpus.folds():
            rest, valid = fold_split(cfg, fold)
            held = {u.speaker for u in valid}
            assert len(held) == 2 and not held & set(fold.test_speakers) and not held & {u.speaker for u in rest}
            speakers |= held
        distinct[by_fold] = len(speakers)
    assert distinct[False] <= 4 < distinct[True]  # the real RAVDESS folds: 4 distinct actors with one seed


def utterances(genders: str) -> list[Utterance]:
    """Two utterances per speaker; one speaker per letter of ``genders`` (f, m, or ? for unknown)."""
    gender = {"f": "female", "m": "male", "?": None}
    return [Utterance(f"s{i:02d}-{k}", f"/x/s{i:02d}-{k}.wav", "a", gender[g], f"s{i:02d}", "1", 1.0)
            for i, g in enumerate(genders) for k in range(2)]


@pytest.mark.parametrize("genders,fraction,expected", [
    ("f" * 12 + "m" * 8, 0.25, {"female": 3, "male": 2}),   # in proportion
    ("f" * 3 + "m" * 3 + "?" * 3, 0.34, {"female": 1, "male": 1, None: 1}),
    ("fm", 0.1, None),                                      # at least one speaker...
    ("fm", 0.9, None),                                      # ...and one left to train on
    ("??????????", 0.2, {None: 2}),
])
def test_validation_split_sizes_and_genders(genders, fraction, expected):
    rest, valid = validation_split(utterances(genders), fraction, seed=1)
    held = {u.speaker: u.gender for u in valid}
    assert not set(held) & {u.speaker for u in rest}
    if expected is None:
        assert len(held) == 1 and rest
    else:
        assert Counter(held.values()) == expected


def test_validation_split_needs_two_speakers():
    with pytest.raises(CorpusError, match="at least 2 training speakers"):
        validation_split(utterances("f"))
