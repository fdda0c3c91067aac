"""`gmptl reproduce`: systems share their common steps, results and pages are written, resume is free."""

import json
import shlex
from pathlib import Path

import pytest

from gmptl.__main__ import get_parser, main
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
    from gmptl.utils import cpu_has_bf16

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
