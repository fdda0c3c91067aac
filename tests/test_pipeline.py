"""`gmptl cv` end to end on a generated corpus with a tiny random encoder, and resume after kill -9."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gmptl.__main__ import main
from gmptl.pipeline import chosen_valid_uar
from synth_corpus import make_corpus

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert main(["cv", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "stage2.epochs=6",
                 "--out", str(out)]) == 0
    return out


def test_cv_writes_every_artifact(reference_run, capsys):
    out = reference_run
    assert json.loads((out / "config.json").read_text())["stage2"]["epochs"] == 6
    for k in (1, 2):
        fold = out / f"fold{k}"
        for stage in ("stage1", "stage2", "stage3"):
            done = json.loads((fold / stage / "done.json").read_text())
            assert (fold / stage / "best.safetensors").stat().st_size > 0
            assert not (fold / stage / "last.safetensors").exists(), "optimizer state removed once done"
            log = [json.loads(line) for line in (fold / stage / "log.jsonl").read_text().splitlines()]
            assert [r["epoch"] for r in log] == list(range(1, done["epochs"] + 1))
        pseudo = fold / "pseudo"
        report = json.loads((pseudo / "report.json").read_text())
        lengths = np.load(pseudo / "train.lengths.npy")
        feats = np.load(pseudo / "train.features.npy", mmap_mode="r")
        assert feats.dtype == np.float16 and feats.shape == (lengths.sum(), 32)
        for scale in (4, 8, 16):
            centroids = np.load(pseudo / f"km{scale}.centroids.npy")
            labels = np.load(pseudo / f"train.km{scale}.labels.npy")
            assert centroids.shape == (scale, 32) and labels.shape == (lengths.sum(),)
            entry = report["scales"][str(scale)]
            assert 1 <= entry["clusters_used"] <= scale and 0 <= entry["emotion"]["nmi"] <= 1
            assert len(np.load(pseudo / f"valid.km{scale}.labels.npy")) == np.load(pseudo / "valid.lengths.npy").sum()
        # The step's wall time covers the feature dump and every scale's fit, not the last scale's alone.
        assert report["wall_s"] >= report["dump_s"] + sum(e["fit_s"] for e in report["scales"].values()) - 0.1
        ids = set((pseudo / "train.ids.txt").read_text().split()) | set((pseudo / "valid.ids.txt").read_text().split())
        result = json.loads((fold / "result.json").read_text())
        assert not ids & {json.loads(line)["id"] for line in (fold / "predictions.jsonl").read_text().splitlines()}, \
            "k-means never sees a test utterance"
        assert not set(result["valid_speakers"]) & set(result["test_speakers"])
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_metrics_equal_scikit_learn(reference_run):
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    summary = json.loads((reference_run / "summary.json").read_text())
    labels = summary["labels"]
    per_fold = []
    for k in (1, 2):
        rows = [json.loads(line) for line in (reference_run / f"fold{k}" / "predictions.jsonl").read_text().splitlines()]
        y = [labels.index(r["emotion"]) for r in rows]
        p = [labels.index(r["predicted"]) for r in rows]
        assert p == [int(np.argmax(r["scores"])) for r in rows]
        present = sorted(set(y))
        per_fold.append((100 * accuracy_score(y, p), 100 * recall_score(y, p, labels=present, average="macro"),
                         100 * f1_score(y, p, labels=present, average="macro")))
    war, uar, f1 = np.array(per_fold).T
    assert summary["war_mean"] == pytest.approx(war.mean()) and summary["war_std"] == pytest.approx(war.std(ddof=1))
    assert summary["uar_mean"] == pytest.approx(uar.mean()) and summary["f1_mean"] == pytest.approx(f1.mean())
    assert summary["commit"] is None or len(summary["commit"]) == 40


def test_resume_after_kill_gives_identical_results(corpus, reference_run, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gmptl", "cv", "--config", str(CONFIG), "--set", f"data.root={corpus}",
           "--set", "stage2.epochs=6", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "fold1" / "stage2" / "last.json"
    deadline = time.monotonic() + 900  # a guard, not a timing: a loaded machine may take minutes to get there
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (out / "fold1" / "stage2" / "done.json").exists(), "killed mid stage 2"
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    ours, reference = (json.loads((d / "summary.json").read_text()) for d in (out, reference_run))
    for key in ("war_mean", "uar_mean", "f1_mean", "confusion"):
        assert ours[key] == reference[key], key
    for k in (1, 2):
        a, b = ((d / f"fold{k}" / "predictions.jsonl").read_text() for d in (out, reference_run))
        assert a == b, f"fold {k} predictions differ after resume"


def test_bad_folds_and_config_fail_in_one_line(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["cv", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--folds", "7", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--folds" in err[0] and "not [7]" in err[0]
    with pytest.raises(SystemExit):
        main(["cv", "--config", str(CONFIG), "--set", "train.lrr=1", "--out", str(tmp_path)])
    assert "unknown config key 'train.lrr'" in capsys.readouterr().err


def test_fold_model_directory_reproduces_the_test_predictions(reference_run, corpus):
    from gmptl.corpora import load_corpus
    from gmptl.data import AudioSet
    from gmptl.modeldir import load_centroids, load_model_dir
    from gmptl.pipeline import predict

    model, meta = load_model_dir(reference_run / "fold1" / "model")
    assert meta["labels"] == json.loads((reference_run / "summary.json").read_text())["labels"]
    assert meta["head"]["classifier"] == "amsoftmax" and meta["pseudo_labels"]["scales"] == [4, 8, 16]
    assert {k: v.shape[0] for k, v in load_centroids(reference_run / "fold1" / "model").items()} == \
        {"km4": 4, "km8": 8, "km16": 16}
    rows = [json.loads(line) for line in (reference_run / "fold1" / "predictions.jsonl").read_text().splitlines()]
    by_id = {u.id: u for u in load_corpus("manifest", corpus).utterances}
    data = AudioSet([by_id[r["id"]] for r in rows], meta["labels"])
    got = predict(model, data, max_seconds=2.0)
    assert np.allclose(got, np.array([r["scores"] for r in rows]), atol=1e-4)


def test_train_command_writes_a_loadable_model(corpus, tmp_path, capsys):
    from gmptl.modeldir import load_model_dir

    out = tmp_path / "train"
    assert main(["train", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "system=finetune",
                 "--set", "stage1.alpha=1.0", "--out", str(out)]) == 0
    assert f"model: {out / 'model'}" in capsys.readouterr().out
    model, meta = load_model_dir(out / "model")
    assert model.gender is None and meta["head"]["classifier"] == "linear" and meta["centroids"] == []
    result = json.loads((out / "result.json").read_text())
    assert "uar" not in result and result["valid_speakers"], "all speakers train, some validate, none test"
    with pytest.raises(Exception, match="not a gmptl model directory"):
        load_model_dir(tmp_path)


def test_bf16_on_the_cpu_trains_every_stage(corpus, tmp_path, native_bf16):
    from gmptl.modeldir import load_model_dir

    out = tmp_path / "bf16"
    assert main(["train", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "train.device=cpu",
                 "--set", "train.precision=bf16", "--out", str(out)]) == 0
    for stage in ("stage1", "stage2", "stage3"):
        log = [json.loads(line) for line in (out / stage / "log.jsonl").read_text().splitlines()]
        assert log and all(math.isfinite(r["train_loss"]) for r in log), stage
    model, _ = load_model_dir(out / "model")
    scores = model(torch.randn(1, 16000), torch.tensor([16000]))["emotion"]
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_select_by_validation_loss_picks_the_epoch_of_least_loss(corpus, tmp_path):
    picked = {}
    for select, best_of in (("uar", lambda log: max(log, key=lambda r: r["valid_uar"])),
                            ("loss", lambda log: min(log, key=lambda r: r["valid_loss"]))):
        out = tmp_path / select
        assert main(["train", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "system=finetune",
                     "--set", "stage1.epochs=4", "--set", "train.patience=4", "--set", f"train.select={select}",
                     "--out", str(out)]) == 0
        log = [json.loads(line) for line in (out / "stage1" / "log.jsonl").read_text().splitlines()]
        assert len(log) == 4 and all(r["valid_loss"] > 0 for r in log)
        chosen = best_of(log)  # the first best epoch: a tie is no gain
        result = json.loads((out / "result.json").read_text())
        assert result["stages"]["stage1"]["best_epoch"] == chosen["epoch"], select
        picked[select] = chosen["epoch"]
        assert chosen_valid_uar(result["stages"]) == chosen["valid_uar"], "the chosen epoch's UAR, whatever chose it"
    assert picked["uar"] != picked["loss"], "on this corpus the two figures pick different epochs"
    with pytest.raises(SystemExit):
        main(["train", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "train.select=war",
              "--out", str(tmp_path / "bad")])


def test_frozen_epochs_start_every_stage(corpus, tmp_path):
    out = tmp_path / "lp-ft"
    assert main(["train", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "train.frozen_epochs=1",
                 "--out", str(out)]) == 0
    frozen = {stage: [json.loads(line)["encoder_frozen"] for line in (out / stage / "log.jsonl").read_text().splitlines()]
              for stage in ("stage1", "stage2", "stage3")}
    assert frozen == {"stage1": [True, False], "stage2": [True, False], "stage3": [True, False]}


def test_checkpoint_averaging_through_every_stage(corpus, tmp_path):
    from gmptl.modeldir import load_model_dir

    out = tmp_path / "avg"
    assert main(["train", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "train.average=2",
                 "--set", "stage1.epochs=3", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    for stage in ("stage1", "stage2", "stage3"):
        s = result["stages"][stage]
        log = [json.loads(line) for line in (out / stage / "log.jsonl").read_text().splitlines()]
        ranked = sorted(log, key=lambda r: (-r["valid_score"], r["epoch"]))
        assert s["average"]["epochs"] == [r["epoch"] for r in ranked[:2]], stage
        assert [p.name for p in (out / stage / "top").iterdir()] == [f"epoch{s['best_epoch']}.safetensors"]
    averaged = result["stages"]["stage3"]["average"]["valid"]["valid_uar"]
    assert chosen_valid_uar(result["stages"]) == averaged, "the system is chosen by its averaged weights' score"
    model, meta = load_model_dir(out / "model")
    assert meta["metrics"]["valid_uar"] == averaged


def test_frozen_probe_baseline(corpus, tmp_path):
    out = tmp_path / "probe"
    assert main(["cv", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "system=probe",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["system"] == "probe" and len(summary["folds"]) == 2
    for k in (1, 2):
        result = json.loads((out / f"fold{k}" / "result.json").read_text())
        per_layer = result["probe"]["valid_uar_per_layer"]
        assert len(per_layer) == 3 and result["probe"]["layer"] == int(np.argmax(per_layer))
    # a linear probe separates the generated classes' pitch and loudness well above chance (25 %)
    assert summary["uar_mean"] > 40


def test_frozen_probe_chosen_by_cross_validation_over_training_speakers(corpus, tmp_path):
    out = tmp_path / "probe-cv"
    assert main(["cv", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "system=probe",
                 "--set", "probe.select=speaker-cv", "--set", "probe.groups=2", "--set", "probe.c=[0.01,1.0]",
                 "--folds", "1", "--out", str(out)]) == 0
    result = json.loads((out / "fold1" / "result.json").read_text())
    found = result["probe"]
    assert found["select"] == "speaker-cv" and len(found["valid_uar"]) == 3 * 2  # layers x C values
    best = max(found["valid_uar"], key=found["valid_uar"].get)
    assert best == f"{found['layer']},{found['c']}"
    assert found["valid_uar_per_layer"][found["layer"]] == pytest.approx(found["valid_uar"][best], abs=0.01)
    assert result["uar"] > 40


def test_speaker_groups_cover_every_speaker_once():
    from gmptl.baselines import speaker_groups

    groups = speaker_groups([f"Actor_{i:02d}" for i in range(5, 25)] * 3, 5)
    assert len(groups) == 5 and all(len(g) == 4 for g in groups)
    assert set().union(*groups) == {f"Actor_{i:02d}" for i in range(5, 25)}
    assert sum(len(g) for g in groups) == 20
    assert len(speaker_groups(["a", "b"], 5)) == 2


def test_manifest_without_speakers_is_refused_or_labelled_speaker_dependent(corpus, tmp_path, capsys):
    """Folds of files without speakers are not speaker-independent: refused, or said so wherever results go."""
    rows = corpus.read_text().splitlines()
    header = rows[0].split(",")
    keep = [i for i, name in enumerate(header) if name not in ("speaker", "fold")]
    bare = corpus.with_name("no_speakers.csv")
    bare.write_text("".join(",".join(row.split(",")[i] for i in keep) + "\n" for row in rows))
    with pytest.raises(SystemExit):
        main(["cv", "--config", str(CONFIG), "--set", f"data.root={bare}", "--out", str(tmp_path / "refused")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_speakers.csv" in err[0] and "name no speaker" in err[0]

    out = tmp_path / "dependent"
    assert main(["cv", "--config", str(CONFIG), "--set", f"data.root={bare}", "--set", "data.speaker_dependent=true",
                 "--set", "system=finetune", "--set", "stage1.epochs=1", "--folds", "1", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["protocol"] == "speaker-dependent"
    assert json.loads((out / "fold1" / "result.json").read_text())["protocol"] == "speaker-dependent"
    assert json.loads((out / "fold1" / "model" / "config.json").read_text())["protocol"] == "speaker-dependent"
