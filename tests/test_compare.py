"""`gmptl compare`: paired difference of two systems over the same test speakers, with its uncertainty."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from gmptl.__main__ import main
from gmptl.cv import compare_runs
from gmptl.errors import ConfigError
from gmptl.metrics import paired_difference, scores

LABELS = ["neutral", "happy", "sad", "angry"]


def corpus(rng, folds=6, speakers=4, per_speaker=24):
    """Labels, speaker and fold of every test utterance; fold 2 has no 'sad' at all."""
    y, spk, fold = [], [], []
    for f in range(1, folds + 1):
        for s in range(speakers):
            classes = [0, 1, 3] if f == 2 else [0, 1, 2, 3]
            y += list(rng.choice(classes, per_speaker))
            spk += [f"f{f}s{s}"] * per_speaker
            fold += [f] * per_speaker
    return np.array(y), np.array(spk), np.array(fold)


def noisy(rng, y, accuracy):
    """Predictions right with probability ``accuracy``, otherwise a random class."""
    return np.where(rng.random(len(y)) < accuracy, y, rng.integers(0, len(LABELS), len(y)))


def test_observed_difference_is_the_tables_mean_over_folds():
    rng = np.random.default_rng(0)
    y, spk, fold = corpus(rng)
    a, b = noisy(rng, y, 0.7), noisy(rng, y, 0.5)
    c = paired_difference(y, a, b, spk, fold, len(LABELS), rounds=200)
    per_fold = [(scores(y[fold == k], a[fold == k], LABELS), scores(y[fold == k], b[fold == k], LABELS))
                for k in range(1, 7)]
    assert c["uar_diff"] == pytest.approx(np.mean([sa["uar"] - sb["uar"] for sa, sb in per_fold]))
    assert c["war_diff"] == pytest.approx(np.mean([sa["war"] - sb["war"] for sa, sb in per_fold]))
    assert (c["speakers"], c["folds"], c["utterances"]) == (24, 6, len(y))


def test_identical_systems_differ_by_nothing():
    rng = np.random.default_rng(1)
    y, spk, fold = corpus(rng)
    a = noisy(rng, y, 0.6)
    c = paired_difference(y, a, a.copy(), spk, fold, len(LABELS), rounds=300)
    assert c["uar_diff"] == 0 and c["uar_ci"] == [0, 0] and c["p_uar"] == 1


def test_a_clear_winner_is_found_and_swapping_sides_mirrors_it():
    rng = np.random.default_rng(2)
    y, spk, fold = corpus(rng)
    a, b = noisy(rng, y, 0.9), noisy(rng, y, 0.4)
    ab = paired_difference(y, a, b, spk, fold, len(LABELS), rounds=2000, seed=3)
    ba = paired_difference(y, b, a, spk, fold, len(LABELS), rounds=2000, seed=3)
    assert ab["uar_ci"][0] > 20 and ab["p_uar"] < 0.001
    assert ba["uar_diff"] == pytest.approx(-ab["uar_diff"])
    assert ba["uar_ci"] == pytest.approx([-ab["uar_ci"][1], -ab["uar_ci"][0]])
    assert ba["p_uar"] == ab["p_uar"]


def test_equal_systems_are_called_different_about_as_often_as_the_level_says():
    """Two systems of the same accuracy: p < 0.05 in roughly 5 % of corpora, and the 95 % interval
    holds 0 in roughly 95 %, while speakers differ a lot in how hard they are."""
    rng = np.random.default_rng(4)
    rejected, covered, trials = 0, 0, 120
    for _ in range(trials):
        y, spk, fold = corpus(rng, per_speaker=12)
        skill = {s: rng.uniform(0.3, 0.9) for s in np.unique(spk)}  # speakers differ a lot
        acc = np.array([skill[s] for s in spk])
        a, b = (np.where(rng.random(len(y)) < acc, y, rng.integers(0, 4, len(y))) for _ in range(2))
        c = paired_difference(y, a, b, spk, fold, len(LABELS), rounds=400, seed=int(rng.integers(1 << 30)))
        rejected += c["p_uar"] < 0.05
        covered += c["uar_ci"][0] <= 0 <= c["uar_ci"][1]
    assert rejected / trials <= 0.12
    assert covered / trials >= 0.85


def test_a_speaker_in_two_folds_is_refused():
    y, spk, fold = np.array([0, 1]), np.array(["x", "x"]), np.array([1, 2])
    with pytest.raises(ValueError, match="more than one fold"):
        paired_difference(y, y, y, spk, fold, 2)


def write_run(run: Path, preds: dict[int, list[tuple[str, str, str, str]]]) -> None:
    """A run directory: ``fold{k}/result.json`` and ``predictions.jsonl`` of (id, speaker, true, predicted)."""
    for k, rows in preds.items():
        d = run / f"fold{k}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"fold": k, "labels": LABELS}))
        (d / "predictions.jsonl").write_text("".join(
            json.dumps({"id": i, "speaker": s, "emotion": t, "predicted": p}) + "\n" for i, s, t, p in rows))


def fold_rows(k, right):
    """8 utterances of 2 speakers in fold ``k``; the first ``right`` are predicted right, the others 'sad'."""
    rows = []
    for j in range(8):
        true = LABELS[j % 4] if LABELS[j % 4] != "sad" else "angry"
        rows.append((f"{k}-{j}", f"spk{k}{j // 4}", true, true if j < right else "sad"))
    return rows


def test_compare_runs_and_cli(tmp_path, capsys):
    write_run(tmp_path / "a", {1: fold_rows(1, 8), 2: fold_rows(2, 6), 3: fold_rows(3, 7)})
    write_run(tmp_path / "b", {1: fold_rows(1, 4), 2: fold_rows(2, 4), 4: fold_rows(4, 8)})
    c = compare_runs(tmp_path / "a", tmp_path / "b", rounds=200)
    assert [f["fold"] for f in c["per_fold"]] == [1, 2]  # only the folds both finished
    assert c["per_fold"][0]["uar_a"] == 100 and c["per_fold"][0]["uar_b"] < 100
    assert c["uar_diff"] == pytest.approx(np.mean([f["uar_a"] - f["uar_b"] for f in c["per_fold"]]))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--rounds", "100"]) == 0
    out = capsys.readouterr().out
    assert "UAR A - B: +" in out and "95 % CI" in out and "2 fold(s), 4 test speakers, 16 utterances" in out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--rounds", "100", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["uar_diff"] == pytest.approx(c["uar_diff"])
    assert record["command"].startswith("gmptl compare ") and {"commit", "machine", "date"} <= set(record)


def test_compare_refuses_runs_that_cannot_be_paired(tmp_path):
    write_run(tmp_path / "a", {1: fold_rows(1, 8)})
    write_run(tmp_path / "b", {2: fold_rows(2, 8)})
    with pytest.raises(ConfigError, match="share no finished fold"):
        compare_runs(tmp_path / "a", tmp_path / "b")
    write_run(tmp_path / "c", {1: fold_rows(1, 8)[:-1]})
    with pytest.raises(ConfigError, match="fold 1: .* different utterances"):
        compare_runs(tmp_path / "a", tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no finished fold"):
        compare_runs(tmp_path / "empty", tmp_path / "a")
    (tmp_path / "a" / "fold1" / "predictions.jsonl").write_text('{"id": "x", "speaker": "s", "emotion": "joy", '
                                                                '"predicted": "sad"}\n')
    with pytest.raises(ConfigError, match="fold1/predictions.jsonl: line 1: label not among"):
        compare_runs(tmp_path / "a", tmp_path / "c")
    with pytest.raises(ConfigError, match="--rounds 0"):
        compare_runs(tmp_path / "c", tmp_path / "c", rounds=0)


def test_replicate_runs_are_averaged_hit_for_hit():
    """(R, N) predictions: a side's WAR and UAR are the means over its runs, and a run given twice
    changes nothing, interval and p-value included."""
    rng = np.random.default_rng(5)
    y, spk, fold = corpus(rng)
    a1, a2, b = noisy(rng, y, 0.7), noisy(rng, y, 0.55), noisy(rng, y, 0.6)
    both = paired_difference(y, [a1, a2], b, spk, fold, len(LABELS), rounds=300, seed=1)
    each = [paired_difference(y, a, b, spk, fold, len(LABELS), rounds=300, seed=1) for a in (a1, a2)]
    assert both["uar_diff"] == pytest.approx(np.mean([c["uar_diff"] for c in each]))
    assert both["war_diff"] == pytest.approx(np.mean([c["war_diff"] for c in each]))
    once = paired_difference(y, a1, b, spk, fold, len(LABELS), rounds=300, seed=1)
    twice = paired_difference(y, [a1, a1], [b, b, b], spk, fold, len(LABELS), rounds=300, seed=1)
    assert twice == once
    with pytest.raises(ValueError, match="predictions for 10"):
        paired_difference(y, [a1[:10]], b, spk, fold, len(LABELS))


def test_replicates_narrow_the_interval_of_two_equal_systems():
    """Reruns that guess differently on the hard utterances: one run per side leaves a wide interval
    around a difference that is pure rerun noise, the mean of 8 runs per side a narrower one."""
    rng = np.random.default_rng(6)
    y, spk, fold = corpus(rng)
    runs = [noisy(rng, y, 0.6) for _ in range(16)]
    one = paired_difference(y, runs[0], runs[8], spk, fold, len(LABELS), rounds=1000, seed=2)
    many = paired_difference(y, runs[:8], runs[8:], spk, fold, len(LABELS), rounds=1000, seed=2)
    width = lambda c: c["uar_ci"][1] - c["uar_ci"][0]  # noqa: E731
    assert width(many) < 0.6 * width(one)
    assert many["uar_ci"][0] < 0 < many["uar_ci"][1]


def test_compare_replicates_cli_and_record(tmp_path, capsys):
    write_run(tmp_path / "a1", {1: fold_rows(1, 8), 2: fold_rows(2, 6), 3: fold_rows(3, 8)})
    write_run(tmp_path / "a2", {1: fold_rows(1, 6), 2: fold_rows(2, 8)})
    write_run(tmp_path / "b", {1: fold_rows(1, 4), 2: fold_rows(2, 4), 3: fold_rows(3, 4)})
    c = compare_runs([tmp_path / "a1", tmp_path / "a2"], [tmp_path / "b"], rounds=200)
    assert [f["fold"] for f in c["per_fold"]] == [1, 2]  # the folds every run finished
    single = [compare_runs(tmp_path / a, tmp_path / "b", rounds=200)["per_fold"][:2] for a in ("a1", "a2")]
    uar_a = np.array([[f["uar_a"] for f in s] for s in single])  # (run, fold) on folds 1-2
    assert [f["uar_a"] for f in c["per_fold"]] == pytest.approx(uar_a.mean(0).tolist())
    assert [r["uar"] for r in c["runs_a"]] == pytest.approx(uar_a.mean(1).tolist())
    assert c["uar_diff"] == pytest.approx(uar_a.mean() - np.mean([f["uar_b"] for f in single[0]]))
    args = [str(tmp_path / "a1"), str(tmp_path / "a2"), "--vs", str(tmp_path / "b"), "--rounds", "200"]
    assert main(["compare", *args]) == 0
    out = capsys.readouterr().out
    assert "A = mean of 2 runs:" in out and "B = " in out and "2 fold(s)" in out
    assert main(["compare", *args, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["uar_diff"] == pytest.approx(c["uar_diff"]) and len(record["runs_a"]) == 2
    assert shlex.split(record["command"])[2:] == [*args, "--json"]  # reruns the same comparison
    with pytest.raises(SystemExit) as e:
        main(["compare", str(tmp_path / "a1"), str(tmp_path / "a2"), str(tmp_path / "b")])
    assert e.value.code == 2
    assert "give two (A B), or A... --vs B..." in capsys.readouterr().err
    with pytest.raises(ConfigError, match="a1: the same run directory given twice"):
        compare_runs([tmp_path / "a1"], [tmp_path / "b", tmp_path / "x" / ".." / "a1"])
