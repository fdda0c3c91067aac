"""`gmptl sweep`: every config on every fold, steps shared, the choice made by validation alone."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from gmptl.__main__ import get_parser, main
from gmptl.cv import compare_runs
from gmptl.errors import ConfigError
from gmptl.sweep import combinations, config_name, format_sweep, one_at_a_time, parse_grid, split_values, summarize
from synth_corpus import make_corpus

REPO = Path(__file__).resolve().parents[1]


def test_grid_parsing():
    assert split_values("0.1, 0.2,[64,512]") == ["0.1", "0.2", "[64,512]"]
    axes = parse_grid(["stage3.margin=0.1,0.2", "pseudo.scales=[4,8],[4,8,16]"])
    assert axes == [("stage3.margin", ["0.1", "0.2"]), ("pseudo.scales", ["[4,8]", "[4,8,16]"])]
    assert combinations(axes)[1] == ["stage3.margin=0.1", "pseudo.scales=[4,8,16]"]
    assert len(combinations(axes)) == 4
    assert one_at_a_time(axes) == [[], ["stage3.margin=0.1"], ["stage3.margin=0.2"], ["pseudo.scales=[4,8]"],
                                   ["pseudo.scales=[4,8,16]"]]
    assert [config_name(c) for c in one_at_a_time(axes)[:2]] == ["base", "stage3.margin=0.1"]
    for bad in (["stage3.margin"], ["stage3.margin="], ["stage3.margin=0.1,0.1"], ["a=1", "a=2"], []):
        with pytest.raises(ConfigError):
            parse_grid(bad)


def fake_result(path: Path, fold: int, valid: float, uar: float) -> None:
    path.mkdir(parents=True)
    stage3 = {"best_score": valid, "best_valid": {"valid_uar": valid}}
    (path / "result.json").write_text(json.dumps({"fold": fold, "war": uar + 1, "uar": uar,
                                                  "stages": {"stage1": {"best_score": 0.0}, "stage3": stage3}}))


def test_choice_reads_validation_not_test_and_needs_every_fold(tmp_path):
    configs = [["stage3.margin=0.1"], ["stage3.margin=0.2"], ["stage3.margin=0.3"]]
    # 0.1: best on test, worse on validation; 0.2: best on validation; 0.3: best validation, one fold missing
    for k, (v1, t1, v2, t2) in enumerate([(60, 90, 70, 50), (62, 88, 68, 52)], start=1):
        fake_result(tmp_path / "stage3.margin=0.1" / f"fold{k}", k, v1, t1)
        fake_result(tmp_path / "stage3.margin=0.2" / f"fold{k}", k, v2, t2)
    fake_result(tmp_path / "stage3.margin=0.3" / "fold1", 1, 99, 99)
    summary = summarize(tmp_path, configs, [1, 2], "cmd")
    assert summary["chosen"] == "stage3.margin=0.2"
    entry = summary["configs"]["stage3.margin=0.2"]
    assert entry["valid_uar_mean"] == pytest.approx(69.0) and entry["uar_mean"] == pytest.approx(51.0)
    assert not summary["configs"]["stage3.margin=0.3"]["complete"]
    assert json.loads((tmp_path / "sweep.json").read_text())["chosen"] == "stage3.margin=0.2"


@pytest.mark.slow
def test_sweep_over_a_stage3_setting_trains_the_earlier_stages_once(tmp_path, capsys):
    manifest = make_corpus(tmp_path / "corpus", speakers=4, per_class=3)
    out = tmp_path / "sweep"
    args = ["sweep", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"data.root={manifest}",
            "--grid", "stage3.margin=0.1,0.35", "--folds", "1", "--out", str(out)]
    assert main(args) == 0
    steps = out / "steps" / "fold1"
    assert [len(list(steps.glob(f"{s}-*"))) for s in ("stage1", "pseudo", "stage2", "stage3")] == [1, 1, 1, 2]
    summary = json.loads((out / "sweep.json").read_text())
    results = {n: json.loads((out / n / "fold1" / "result.json").read_text()) for n in summary["configs"]}
    assert set(results) == {"stage3.margin=0.1", "stage3.margin=0.35"}
    for name, r in results.items():
        row = summary["configs"][name]["folds"][0]
        assert row["uar"] == r["uar"] and row["valid_uar"] == r["stages"]["stage3"]["best_score"]
    best = max(results, key=lambda n: results[n]["stages"]["stage3"]["best_score"])
    assert summary["chosen"] == best
    printed = capsys.readouterr().out
    assert f"* chosen: {best}" in printed

    before = {p: p.stat().st_mtime for p in out.rglob("result.json")}  # resume: nothing to redo
    assert main(args) == 0
    assert {p: p.stat().st_mtime for p in out.rglob("result.json")} == before


@pytest.mark.slow
def test_one_at_a_time_runs_the_base_and_each_change_alone(tmp_path, capsys):
    manifest = make_corpus(tmp_path / "corpus", speakers=4, per_class=2)
    out = tmp_path / "ofat"
    args = ["sweep", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"data.root={manifest}",
            "--one-at-a-time", "--grid", "stage3.margin=0.35", "--grid", "stage2.mask_prob=0.3",
            "--folds", "1", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert list(summary["configs"]) == ["base", "stage3.margin=0.35", "stage2.mask_prob=0.3"]
    assert all(e["complete"] for e in summary["configs"].values())
    rerun = get_parser().parse_args(shlex.split(summary["command"])[1:])  # the recorded command resumes this run
    assert (rerun.one_at_a_time, rerun.folds, rerun.out, rerun.grid) == (True, "1", str(out), ["stage3.margin=0.35", "stage2.mask_prob=0.3"])
    steps = out / "steps" / "fold1"  # the margin reuses the base's stage 2; the mask probability its stage 1
    assert [len(list(steps.glob(f"{s}-*"))) for s in ("stage1", "pseudo", "stage2", "stage3")] == [1, 1, 2, 3]
    base = json.loads((out / "base" / "config.json").read_text())
    assert base["stage3"]["margin"] == 0.2 and base["stage2"]["mask_prob"] == 0.5
    assert "vs_base" not in summary["configs"]["base"]
    for name in ("stage3.margin=0.35", "stage2.mask_prob=0.3"):  # each change against the base, paired
        paired = compare_runs(out / name, out / "base")
        vs = summary["configs"][name]["vs_base"]
        assert vs["uar_diff"] == pytest.approx(paired["uar_diff"]) and vs["p_uar"] == paired["p_uar"]
        assert vs["uar_diff"] == pytest.approx(summary["configs"][name]["uar_mean"] - summary["configs"]["base"]["uar_mean"])
    assert "test UAR - base" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit:  # a value the base already has would only repeat the base
        main([*args[:-2], "--grid", "stage3.scale=30", "--out", str(tmp_path / "o")])
    assert exit.value.code == 2 and "stage3.scale=30 is what the base config has already" in capsys.readouterr().err


def test_sweep_rejects_an_unknown_setting_before_running(tmp_path, capsys):
    manifest = make_corpus(tmp_path / "corpus", speakers=4, per_class=2)
    with pytest.raises(SystemExit) as exit:
        main(["sweep", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"data.root={manifest}",
              "--grid", "stage3.bogus=1,2", "--out", str(tmp_path / "o")])
    assert exit.value.code == 2 and "bogus" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sigterm_to_the_parent_ends_its_workers(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    manifest = make_corpus(tmp_path / "corpus", speakers=4, per_class=2)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "gmptl", "sweep", "--config", str(REPO / "configs" / "tiny.yaml"),
           "--set", f"data.root={manifest}", "--set", "stage1.epochs=50", "--set", "train.patience=50",
           "--grid", "stage3.margin=0.3", "--folds", "1,2", "--jobs", "2", "--out", str(out)]
    parent = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def workers() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:  # a process that ended meanwhile
                continue
            if proc.name.isdigit() and int(proc.name) != parent.pid and str(out).encode() in args:
                found.append(int(proc.name))
        return found

    deadline = time.monotonic() + 60
    while len(workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers()) == 2 and parent.poll() is None, "two workers started"
    try:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 128 + signal.SIGTERM
        assert workers() == [], "no worker outlives the parent"
    finally:
        for pid in workers():
            os.kill(pid, signal.SIGKILL)


def test_replicate_seeds_choose_on_their_mean_and_need_every_seed(tmp_path):
    """--seeds: a config's figures are the means over its seeds' runs; one lucky seed does not choose it."""
    configs = [["stage3.margin=0.1"], ["stage3.margin=0.2"]]
    # (valid, test) per fold for seed 0 and seed 1: 0.1 has the best single seed, 0.2 the best mean
    runs = {"stage3.margin=0.1": [(80, 70), (80, 70)], "stage3.margin=0.1@seed1": [(50, 60), (50, 60)],
            "stage3.margin=0.2": [(70, 65), (70, 65)], "stage3.margin=0.2@seed1": [(70, 55), (68, 55)]}
    for run, rows in runs.items():
        for k, (v, t) in enumerate(rows, start=1):
            fake_result(tmp_path / run / f"fold{k}", k, v, t)
    summary = summarize(tmp_path, configs, [1, 2], "cmd", seeds=[0, 1])
    assert summary["chosen"] == "stage3.margin=0.2" and summary["seeds"] == [0, 1] and "2 seeds" in summary["rule"]
    entry = summary["configs"]["stage3.margin=0.2"]
    assert [f["valid_uar"] for f in entry["folds"]] == [70, 69] and entry["uar_mean"] == pytest.approx(60)
    assert [(r["seed"], r["run"], r["valid_uar_mean"]) for r in entry["seeds"]] == [
        (0, "stage3.margin=0.2", 70), (1, "stage3.margin=0.2@seed1", 69)]
    assert "seeds 0: valid 70.00 test 65.00, 1: valid 69.00 test 55.00" in format_sweep(summary)
    assert summarize(tmp_path, configs, [1, 2], "cmd")["chosen"] == "stage3.margin=0.1"  # one seed: the lucky one
    (tmp_path / "stage3.margin=0.2@seed1" / "fold2" / "result.json").unlink()  # a seed short of a fold
    summary = summarize(tmp_path, configs, [1, 2], "cmd", seeds=[0, 1])
    assert not summary["configs"]["stage3.margin=0.2"]["complete"] and summary["chosen"] == "stage3.margin=0.1"


@pytest.mark.slow
def test_seeds_run_replicates_and_pair_them_against_the_base(tmp_path, capsys):
    manifest = make_corpus(tmp_path / "corpus", speakers=4, per_class=2)
    out = tmp_path / "seeds"
    args = ["sweep", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"data.root={manifest}",
            "--set", "train.seed=3", "--one-at-a-time", "--grid", "stage3.margin=0.35", "--seeds", "2",
            "--folds", "1", "--out", str(out)]
    assert main(args) == 0
    runs = {"base": 3, "base@seed4": 4, "stage3.margin=0.35": 3, "stage3.margin=0.35@seed4": 4}
    for run, seed in runs.items():
        assert json.loads((out / run / "config.json").read_text())["train"]["seed"] == seed
        assert (out / run / "fold1" / "result.json").exists()
    assert len(list((out / "steps" / "fold1").glob("stage1-*"))) == 2  # one stage 1 per seed, shared by the configs
    summary = json.loads((out / "sweep.json").read_text())
    paired = compare_runs([out / "stage3.margin=0.35", out / "stage3.margin=0.35@seed4"], [out / "base", out / "base@seed4"])
    assert summary["configs"]["stage3.margin=0.35"]["vs_base"]["uar_diff"] == pytest.approx(paired["uar_diff"])
    base = [json.loads((out / r / "fold1" / "result.json").read_text())["uar"] for r in ("base", "base@seed4")]
    assert summary["configs"]["base"]["uar_mean"] == pytest.approx(np.mean(base))
    rerun = get_parser().parse_args(shlex.split(summary["command"])[1:])
    assert (rerun.seeds, rerun.out) == (2, str(out))
    assert "seeds 3: valid" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit:
        main([*args[:-2], "--grid", "train.seed=7", "--out", str(tmp_path / "o")])
    assert exit.value.code == 2 and "train.seed is already a grid axis" in capsys.readouterr().err
