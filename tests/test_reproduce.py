"""`gmptl reproduce`: systems share their common steps, results and pages are written, resume is free."""

import json
import logging
import shlex
from pathlib import Path

import numpy as np
import pytest

from gmptl.__main__ import get_parser, main
from gmptl.errors import ConfigError
from gmptl.reproduce import System, amend_commands, write_results
from synth_corpus import make_corpus

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_reproduce_shares_steps_and_writes_results(tmp_path, capsys):
    manifest = make_corpus(tmp_path / "corpus", speakers=6, per_class=4)
    out, results = tmp_path / "run", tmp_path / "results" / "ravdess"
    args = ["reproduce", "ravdess", "--root", str(manifest), "--config", str(REPO / "configs" / "tiny.yaml"),
            "--out", str(out), "--results", str(results),
            "--systems", "frozen-probe,finetune-ce,stage1-multitask,gmp-tl,gmps+ce-ft,gmps+hybrid-ft"]
    assert main(args) == 0

    steps = out / "steps" / "fold1"
    count = lambda step: len(list(steps.glob(f"{step}-*")))  # noqa: E731
    # stage 1: alpha 1 and 0.9 on 8... here 4 classes, and again on the 4-class subset (other data digest)
    assert count("stage1") == 4 and count("pseudo") == 2 and count("stage2") == 2
    assert count("stage3") == 3  # gmp-tl (= gmps+hybrid-ft), gmps+ce-ft, gmp-tl on the subset
    fold = lambda name: json.loads((out / name / "fold1" / "result.json").read_text())  # noqa: E731
    assert fold("stage1-multitask")["step_dirs"]["stage1"] == fold("gmp-tl")["step_dirs"]["stage1"]
    assert fold("gmps+ce-ft")["step_dirs"]["stage2"] == fold("gmp-tl")["step_dirs"]["stage2"]
    assert fold("gmps+ce-ft")["step_dirs"]["stage3"] != fold("gmp-tl")["step_dirs"]["stage3"]
    assert fold("gmps+hybrid-ft")["uar"] == fold("gmp-tl")["uar"]
    assert fold("finetune-ce")["step_dirs"]["stage1"] != fold("gmp-tl")["step_dirs"]["stage1"]

    summary = json.loads((results / "summary.json").read_text())
    assert {"corpus", "classes", "encoder", "protocol", "commit", "date", "machine", "systems"} <= set(summary)
    assert set(summary["systems"]) == {"frozen-probe", "finetune-ce", "stage1-multitask", "gmp-tl", "gmps+ce-ft",
                                       "gmps+hybrid-ft"}
    for name, entry in summary["systems"].items():
        assert [f["fold"] for f in entry["folds"]] == [1, 2]
        assert entry["uar_mean"] == pytest.approx(sum(f["uar"] for f in entry["folds"]) / 2)
        assert entry["wall_s"] > 0 and entry["command"].startswith("gmptl reproduce ravdess")
        rerun = get_parser().parse_args(shlex.split(entry["command"])[1:])  # resumes this run, same results
        assert (rerun.root, rerun.out, rerun.results) == (str(manifest), str(out), str(results))
    four = json.loads((results.with_name("ravdess4") / "summary.json").read_text())
    assert set(four["systems"]) == {"finetune-ce", "gmp-tl"} and four["classes"] == ["neutral", "happy", "sad", "angry"]
    paired = summary["paired"]
    assert paired["reference"] == "finetune-ce" and set(paired["systems"]) == set(summary["systems"]) - {"finetune-ce"}
    gmp = paired["systems"]["gmp-tl"]
    assert gmp["uar_diff"] == pytest.approx(summary["systems"]["gmp-tl"]["uar_mean"]
                                            - summary["systems"]["finetune-ce"]["uar_mean"])
    assert gmp["uar_ci"][0] <= gmp["uar_diff"] <= gmp["uar_ci"][1] and 0 < gmp["p_uar"] <= 1
    assert paired["systems"]["gmps+hybrid-ft"] == gmp  # the same model: the same comparison
    assert set(four["paired"]["systems"]) == {"gmp-tl"}
    page = (results / "README.md").read_text()
    assert "| gmp-tl | 1,2 |" in page and "Table 2" in page
    assert "### Against `finetune-ce`, paired over the same test speakers" in page
    assert f"| gmp-tl | 1,2 | {gmp['uar_diff']:+.2f} | [{gmp['uar_ci'][0]:+.2f}, {gmp['uar_ci'][1]:+.2f}] |" in page
    assert (results / "confusion_gmp-tl.png").stat().st_size > 0 and (results / "folds.png").stat().st_size > 0
    assert (results / "paired.png").stat().st_size > 0 and "![paired](paired.png)" in page

    # Resume: with every result present, two workers find nothing to do and the summary is unchanged.
    before = {p: p.stat().st_mtime for p in out.rglob("result.json")}
    assert main([*args, "--jobs", "2"]) == 0
    assert {p: p.stat().st_mtime for p in out.rglob("result.json")} == before
    again = json.loads((results / "summary.json").read_text())
    assert again["systems"]["gmp-tl"]["uar_mean"] == summary["systems"]["gmp-tl"]["uar_mean"]
    assert "gmp-tl" in capsys.readouterr().out


def test_report_names_the_settings_its_runs_were_made_with(tmp_path, caplog):
    """Runs made under another setting (an older default of the config, say) are reported with the command
    that reproduces them: the written command resumes them, the plain one refuses them."""
    manifest = make_corpus(tmp_path / "corpus", speakers=6, per_class=2)
    out, results = tmp_path / "run", tmp_path / "results" / "ravdess"
    args = ["reproduce", "ravdess", "--root", str(manifest), "--config", str(REPO / "configs" / "tiny.yaml"),
            "--out", str(out), "--results", str(results), "--systems", "frozen-probe,finetune-ce", "--folds", "1"]
    assert main([*args, "--set", "train.average=2", "--set", "stage1.epochs=3", "--set", "stage1.alpha=0.5",
                 "--no-report"]) == 0
    assert main([*args, "--report-only"]) == 0
    summary = json.loads((results / "summary.json").read_text())
    assert summary["recorded_overrides"] == {  # finetune-ce fixes alpha = 1 whatever is set
        "frozen-probe": ["stage1.alpha=0.5", "stage1.epochs=3", "train.average=2"],
        "finetune-ce": ["stage1.epochs=3", "train.average=2"]}
    command = summary["systems"]["finetune-ce"]["command"]
    assert command.endswith("--set stage1.alpha=0.5 --set stage1.epochs=3 --set train.average=2")
    assert summary["systems"]["frozen-probe"]["command"] == command, "one command sets what every system needs"
    page = (results / "README.md").read_text()
    assert f"    {command}" in page and "finetune-ce: `stage1.epochs=3 train.average=2`" in page
    before = {p: p.stat().st_mtime for p in out.rglob("result.json")}
    assert main([*shlex.split(command)[1:], "--systems", "frozen-probe,finetune-ce"]) == 0, "it resumes: nothing to do"
    assert {p: p.stat().st_mtime for p in out.rglob("result.json")} == before
    with pytest.raises(SystemExit):
        main(args)  # today's config: another run, refused in this folder

    saved = out / "finetune-ce" / "config.json"  # a setting the system's own overrides fix: no --set reaches it
    saved.write_text(json.dumps({**(c := json.loads(saved.read_text())), "stage1": {**c["stage1"], "alpha": 0.5}}))
    with caplog.at_level(logging.WARNING, logger="gmptl.reproduce"):
        assert main([*args, "--report-only"]) == 0
    assert "finetune-ce: the config its runs were made with is not reached by --set options" in caplog.text


def test_amended_page_has_the_commands_a_report_from_its_runs_would_write(tmp_path):
    """A results page whose run folders are gone, its runs' settings found another way: amending it gives the
    commands and settings the report would have written from the runs, and keeps its numbers."""
    labels, rng = ["neutral", "angry"], np.random.default_rng(0)

    def fold(k):
        c = rng.integers(1, 9, (2, 2))
        recall = {label: 100 * c[i, i] / c[i].sum() for i, label in enumerate(labels)}
        return {"fold": k, "war": 100 * np.trace(c) / c.sum(), "uar": np.mean(list(recall.values())), "f1": 50.0,
                "n": int(c.sum()), "recall": recall, "confusion": c.tolist()}

    plan = [System("finetune-ce", "main"), System("gmp-tl", "main"), System("layer-1", "table3")]
    results = {s.key: [fold(1), fold(2)] for s in plan}
    command = "gmptl reproduce ravdess --root /r --set train.micro_batch=64"
    recorded = {"finetune-ce": ["train.average=1"], "gmp-tl": ["stage2.epochs=3", "train.average=1"],
                "layer-1": ["train.average=1"]}
    sets = {**recorded, "layer-1": ["stage2.epochs=3", "train.average=1"]}
    args = ("ravdess", plan, results)
    written = write_results(*args, tmp_path / "written", False, command, "enc", labels, recorded=recorded, sets=sets)
    plain = write_results(*args, tmp_path / "amended", False, command, "enc", labels)
    assert "recorded_overrides" not in plain and plain["systems"]["gmp-tl"]["command"] == command
    note = {"date": "2026-12-01", "commit": "0123456789abcdef", "command": "python check.py", "why": "runs gone"}
    amended = amend_commands(tmp_path / "amended", command, recorded, sets, note)

    assert {n: e["command"] for n, e in amended["systems"].items()} == {
        "finetune-ce": command + " --set train.average=1",
        "gmp-tl": command + " --set stage2.epochs=3 --set train.average=1 --systems gmp-tl",
        "layer-1": command + " --set stage2.epochs=3 --set train.average=1 --systems layer-1"}
    assert {n: e["command"] for n, e in written["systems"].items()} == {
        n: e["command"] for n, e in amended["systems"].items()}
    assert amended["recorded_overrides"] == written["recorded_overrides"] and amended["amended"] == note
    assert json.loads((tmp_path / "amended" / "summary.json").read_text()) == amended
    for name, entry in plain["systems"].items():
        assert {k: v for k, v in entry.items() if k != "command"} == {
            k: v for k, v in amended["systems"][name].items() if k != "command"}
    page = lambda d: [line for line in (tmp_path / d / "README.md").read_text().splitlines()  # noqa: E731
                      if not line.startswith("- Written ")]
    settings = lambda d: [line for line in page(d) if line.startswith("- Settings: ")]  # noqa: E731
    assert settings("amended") == settings("written") == [
        "- Settings: these runs were made with options other than the recipe's config has now (finetune-ce: "
        "`train.average=1`; gmp-tl: `stage2.epochs=3 train.average=1`; layer-1: `train.average=1`); the commands "
        "below set them."]
    line = "- Commands amended 2026-12-01 at commit 0123456789 by `python check.py`: runs gone."
    assert line in page("amended") and [x for x in page("amended") if x != line] == page("written")
    for done in ("amended", "written"):
        with pytest.raises(ConfigError, match="it already names the settings of its runs"):
            amend_commands(tmp_path / done, command, recorded, sets, note)
    write_results(*args, tmp_path / "other", False, command, "enc", labels)
    with pytest.raises(ConfigError, match="of finetune-ce, gmp-tl, layer-1 do not start with"):
        amend_commands(tmp_path / "other", "gmptl reproduce ravdess --root /elsewhere", {}, {}, note)
    same = {n: ["train.average=1"] for n in recorded}  # one setting for every system: said once
    amend_commands(tmp_path / "other", command, same, same, note)
    assert settings("other") == ["- Settings: these runs were made with options other than the recipe's config has "
                                 "now (every system: `train.average=1`); the commands below set them."]


def test_reproduce_rejects_unknown_systems(tmp_path):
    manifest = make_corpus(tmp_path / "corpus", speakers=4, per_class=2)
    with pytest.raises(SystemExit):
        main(["reproduce", "ravdess", "--root", str(manifest), "--config", str(REPO / "configs" / "tiny.yaml"),
              "--out", str(tmp_path / "o"), "--systems", "gmp-tl,bogus"])


def test_ablation_on_fewer_folds_gets_the_reference_on_the_same_folds():
    """Table 3 run on fold 1 only is printed beside gmp-tl's fold-1 figures, not its 6-fold mean."""
    from gmptl.reproduce import format_tables

    def entry(table, folds):
        uar = [f[1] for f in folds]
        return {"table": table, "folds": [{"fold": k, "war": u + 1, "uar": u, "f1": u} for k, u in folds],
                "war_mean": sum(uar) / len(uar) + 1, "war_std": 0.0, "uar_mean": sum(uar) / len(uar),
                "uar_std": 0.0, "wall_s": 60.0}

    summary = {"systems": {"gmp-tl": entry("main", [(1, 50.0), (2, 70.0), (3, 90.0)]),
                           "layer-1": entry("table3", [(1, 40.0)]), "layer-2": entry("table3", [(1, 45.0), (2, 65.0)]),
                           "gmps+ce-ft": entry("table2", [(1, 10.0), (2, 20.0), (3, 30.0)])}}
    text = format_tables(summary)
    table3 = text[text.index("### Table 3"):]
    assert "| gmp-tl (layer -3), same folds | 1,2 | 61.00 ± 14.14 | 60.00 ± 14.14 | |" in table3
    assert "same folds" not in text[:text.index("### Table 3")], "Table 2 covers all of gmp-tl's folds"
    assert "run-to-run variation" not in text, "no layer-3 row: nothing to say"


def test_table3_row_of_the_default_layer_is_tied_to_gmp_tl():
    from gmptl.reproduce import format_tables

    def entry(table):
        return {"table": table, "folds": [{"fold": 1, "war": 60.0, "uar": 60.0, "f1": 60.0}], "war_mean": 60.0,
                "war_std": 0.0, "uar_mean": 60.0, "uar_std": 0.0, "wall_s": 60.0}

    systems = {"gmp-tl": entry("main"), "layer-1": entry("table3"), "layer-2": entry("table3")}
    text = format_tables({"pseudo_layer": -2, "systems": systems})
    assert "`layer-2` is `gmp-tl`'s own configuration (it clusters layer -2): the same steps" in text
    rerun = {**systems, "layer-2": {**entry("table3"), "folds": [{"fold": 1, "war": 61.0, "uar": 61.5, "f1": 60.0}]}}
    assert "(it clusters layer -2), run again: the gap" in format_tables({"pseudo_layer": -2, "systems": rerun})
    assert "layer-1` is" not in text
    assert "own configuration" not in format_tables({"pseudo_layer": -3, "systems": systems})


def test_the_probe_runs_in_fp32_whatever_the_fine_tuned_systems_use(tmp_path, capsys):
    """bf16 is for the fine-tuned systems: the probe's folder holds fp32 (what it runs), so a machine without
    bf16 can make it for a bf16 run; a system that would autocast is refused there before any work."""
    from gmptl.reproduce import RECIPES, system_config, systems
    from gmptl.train import cpu_has_bf16

    every = {s.key: s for s in systems(2)}
    config = lambda name: system_config(REPO / "configs" / "tiny.yaml", every[name], ["train.precision=bf16"],  # noqa: E731
                                        RECIPES["ravdess"]["subset"])
    assert config("frozen-probe").train.precision == "fp32" and config("gmp-tl").train.precision == "bf16"
    if cpu_has_bf16():
        pytest.skip("this CPU runs bf16: nothing is refused")
    manifest = make_corpus(tmp_path / "corpus", speakers=4, per_class=2)
    args = ["reproduce", "ravdess", "--root", str(manifest), "--config", str(REPO / "configs" / "tiny.yaml"),
            "--set", "train.precision=bf16", "--folds", "1", "--results", str(tmp_path / "results" / "ravdess")]
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "refused"), "--systems", "frozen-probe,finetune-ce"])
    assert "no native bf16" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists(), "refused before any work"
    assert main([*args, "--out", str(tmp_path / "run"), "--systems", "frozen-probe"]) == 0
    saved = json.loads((tmp_path / "run" / "frozen-probe" / "config.json").read_text())
    assert saved["train"]["precision"] == "fp32" and (tmp_path / "run" / "frozen-probe" / "fold1" / "result.json").exists()
