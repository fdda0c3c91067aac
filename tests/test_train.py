"""The training loop's options on a tiny random encoder: LP-FT's frozen first epochs, the heads' weight decay, bf16."""

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch

from gmptl.config import load_config
from gmptl.corpora import load_corpus
from gmptl.data import AudioSet
from gmptl.errors import ConfigError
from gmptl.pipeline import classifier, new_encoder, stage1_loss
from gmptl.train import Stage, fit, make_optimizer, training_batches
from gmptl.utils import autocast
from synth_corpus import make_corpus

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def train_set(tmp_path_factory) -> AudioSet:
    corpus = load_corpus("manifest", str(make_corpus(tmp_path_factory.mktemp("corpus"), speakers=4, per_class=2)))
    return AudioSet(corpus.fold(1).train, corpus.labels, "train")


def run(train_set, out: Path, overrides: list[str]):
    """Stage 1 of the tiny config; validation always improves, so the last epoch's weights are kept."""
    cfg = load_config(CONFIG, ["train.device=cpu", "train.patience=5", *overrides])
    torch.manual_seed(0)
    model = classifier(cfg, new_encoder(cfg), len(train_set.labels), gender=True, kind="linear")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    counter = itertools.count()
    summary = fit(Stage("stage1", model, stage1_loss(0.9), lambda m: {"score": float(next(counter))},
                        cfg.stage1.epochs), training_batches(train_set, cfg.train, 1.0), cfg.train, out)
    moved = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
    return model, summary, moved


def test_frozen_epochs_train_the_heads_first_then_the_encoder(train_set, tmp_path):
    model, summary, moved = run(train_set, tmp_path / "a", ["train.frozen_epochs=1", "stage1.epochs=1"])
    assert [r["encoder_frozen"] for r in summary["history"]] == [True]
    assert moved and "encoder" not in moved, "the encoder moved while frozen"
    frontend = {id(p) for p in model.encoder.frontend_parameters()}
    assert frontend and all(p.requires_grad != (id(p) in frontend) for p in model.encoder.parameters()), \
        "after the stage the encoder trains again and the front-end stays frozen"

    _, summary, moved = run(train_set, tmp_path / "b", ["train.frozen_epochs=1", "stage1.epochs=2"])
    assert [r["encoder_frozen"] for r in summary["history"]] == [True, False]
    assert "encoder" in moved
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["encoder_frozen"] for r in log] == [True, False]

    _, summary, moved = run(train_set, tmp_path / "c", ["stage1.epochs=1"])  # the default: no frozen epoch
    assert [r["encoder_frozen"] for r in summary["history"]] == [False] and "encoder" in moved


def test_frozen_epochs_must_not_be_negative():
    with pytest.raises(ConfigError, match="train.frozen_epochs must be >= 0"):
        load_config(None, ["train.frozen_epochs=-1"])


def test_head_weight_decay_shrinks_the_heads_only():
    cfg = load_config(CONFIG, ["train.head_weight_decay=0.5", "train.lr=0.1"])
    torch.manual_seed(0)
    model = classifier(cfg, new_encoder(cfg), 4, gender=True, kind="linear")
    start = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    opt = make_optimizer(model, cfg.train)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()  # no gradient: only the decay moves weights, by the factor 1 - lr * decay
    for name, p in model.named_parameters():
        if p.requires_grad:
            expected = start[name] * (1 - 0.1 * 0.5) if not name.startswith("encoder.") else start[name]
            assert torch.allclose(p, expected), name
    with pytest.raises(ConfigError, match="train.head_weight_decay must be >= 0"):
        load_config(None, ["train.head_weight_decay=-0.1"])


def test_bf16_autocast_runs_on_the_cpu(train_set, tmp_path, native_bf16):
    cfg = load_config(CONFIG, ["train.device=cpu", "stage3.loss=amsoftmax"])
    torch.manual_seed(0)
    model = classifier(cfg, new_encoder(cfg), 4, gender=True, kind="amsoftmax")
    waves, lengths = torch.randn(2, 16000), torch.tensor([16000, 12000])
    with autocast(torch.device("cpu"), "bf16"):
        out = model(waves, lengths)
    assert out["pooled"].dtype == torch.bfloat16, "the encoder and head ran in bf16"
    assert out["emotion"].dtype == torch.float32, "the AM-Softmax cosines stay in fp32"
    with autocast(torch.device("cpu"), "fp32"):
        assert model(waves, lengths)["pooled"].dtype == torch.float32

    _, fp32, _ = run(train_set, tmp_path / "fp32", ["stage1.epochs=1"])
    _, bf16, moved = run(train_set, tmp_path / "bf16", ["stage1.epochs=1", "train.precision=bf16"])
    a, b = fp32["history"][0]["train_loss"], bf16["history"][0]["train_loss"]
    assert a != b and abs(a - b) < 0.05 * a, (a, b)
    assert "encoder" in moved


def test_bf16_on_a_cpu_without_native_bf16_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    from gmptl.__main__ import main

    monkeypatch.setattr("gmptl.utils.cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="this CPU has no native bf16"):
        with autocast(torch.device("cpu"), "bf16"):
            pass
    with autocast(torch.device("cpu"), "fp32"):
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float32
    bf16 = ["--config", str(CONFIG), "--set", "data.root=/nonexistent", "--set", "train.precision=bf16"]
    for command in (["train", *bf16, "--out"], ["sweep", *bf16, "--grid", "stage3.margin=0.3", "--out"]):
        out = tmp_path / command[0]
        with pytest.raises(SystemExit) as exit:
            main([*command, str(out)])
        err = capsys.readouterr().err
        assert exit.value.code != 0 and err.startswith("gmptl: error: precision bf16: this CPU has no native bf16")
        assert not out.exists(), f"{command[0]}: refused before the run directory was made"


def fit_scored(train_set, out: Path, overrides: list[str], scores: list, snapshots: dict | None = None):
    """Stage 1 of the tiny config whose validation scores are ``scores`` in turn (a number, or what
    ``evaluate`` returns whole); ``snapshots`` collects the weights each scoring saw (epoch order,
    then the averaged weights)."""
    cfg = load_config(CONFIG, ["train.device=cpu", "train.patience=10", *overrides])
    torch.manual_seed(0)
    model = classifier(cfg, new_encoder(cfg), len(train_set.labels), gender=True, kind="linear")
    scores = iter(scores)

    def evaluate(m):
        if snapshots is not None:
            snapshots[len(snapshots) + 1] = {k: v.clone() for k, v in m.state_dict().items()}
        score = next(scores)
        if score is None:
            raise KeyboardInterrupt("killed")
        return score if isinstance(score, dict) else {"score": score, "uar": 100 * score}

    return model, fit(Stage("stage1", model, stage1_loss(0.9), evaluate, cfg.stage1.epochs),
                      training_batches(train_set, cfg.train, 1.0), cfg.train, out)


def test_average_hands_on_the_mean_of_the_k_best_epochs_weights(train_set, tmp_path):
    from safetensors.torch import load_file

    seen = {}
    model, summary = fit_scored(train_set, tmp_path / "avg", ["stage1.epochs=5", "train.average=3"],
                                [0.1, 0.5, 0.3, 0.4, 0.2, 0.45], seen)
    assert summary["best_epoch"] == 2 and summary["average"]["epochs"] == [2, 4, 3]
    assert summary["average"]["valid"] == {"valid_score": 0.45, "valid_uar": 45.0}, "the mean is scored too"
    final = model.state_dict()
    assert all(torch.equal(seen[6][k], v) for k, v in final.items()), "the averaged weights were scored"
    for name, value in final.items():
        if value.is_floating_point():
            mean = (seen[2][name] + seen[4][name] + seen[3][name]) / 3
            assert torch.allclose(value, mean, atol=1e-6), name
    moved = [k for k, v in final.items() if v.is_floating_point() and not torch.equal(v, seen[2][k])]
    assert any(k.startswith("encoder.") for k in moved), "the mean differs from the best epoch's weights"
    stored = load_file(str(tmp_path / "avg" / "best.safetensors"))
    assert all(torch.equal(stored[k], v) for k, v in final.items()), "best.safetensors holds what is handed on"
    assert sorted(p.name for p in (tmp_path / "avg" / "top").iterdir()) == ["epoch2.safetensors"]
    best = load_file(str(tmp_path / "avg" / "top" / "epoch2.safetensors"))
    assert all(torch.equal(best[k], seen[2][k]) for k in best), "the best epoch's own weights are kept"

    again = fit_scored(train_set, tmp_path / "avg", ["stage1.epochs=5", "train.average=3"], [])[0]  # done: loaded
    assert all(torch.equal(again.state_dict()[k], v) for k, v in final.items())

    plain, summary = fit_scored(train_set, tmp_path / "one", ["stage1.epochs=5"], [0.1, 0.5, 0.3, 0.4, 0.2])
    assert "average" not in summary and not (tmp_path / "one" / "top").exists()
    assert all(torch.equal(plain.state_dict()[k], seen[2][k]) for k in seen[2]), "average 1: the best epoch"
    with pytest.raises(ConfigError, match="train.average must be >= 1"):
        load_config(None, ["train.average=0"])


def test_average_resumes_after_a_kill_with_the_same_weights(train_set, tmp_path):
    scores = [0.1, 0.5, 0.3, 0.4, 0.2, 0.45]
    whole, summary = fit_scored(train_set, tmp_path / "whole", ["stage1.epochs=5", "train.average=3"], scores)
    with pytest.raises(KeyboardInterrupt):  # killed while scoring epoch 4: epochs 1-3 are on disk
        fit_scored(train_set, tmp_path / "cut", ["stage1.epochs=5", "train.average=3"], [*scores[:3], None])
    assert sorted(p.name for p in (tmp_path / "cut" / "top").iterdir()) == [f"epoch{e}.safetensors" for e in (1, 2, 3)]
    resumed, again = fit_scored(train_set, tmp_path / "cut", ["stage1.epochs=5", "train.average=3"], scores[3:])
    assert again["average"] == summary["average"]
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in whole.state_dict().items())

    # Killed after epoch 4's last.json, before epoch 1 (out of the 3 best from then on) was unlinked:
    # the resumed run's end leaves the best epoch's weights alone all the same.
    with pytest.raises(KeyboardInterrupt):
        fit_scored(train_set, tmp_path / "late", ["stage1.epochs=5", "train.average=3"], [*scores[:4], None])
    top = tmp_path / "late" / "top"
    shutil.copy(top / "epoch2.safetensors", top / "epoch1.safetensors")
    (top / "epoch2.safetensors.123.tmp").write_bytes(b"another process's save in flight")
    fit_scored(train_set, tmp_path / "late", ["stage1.epochs=5", "train.average=3"], scores[4:])
    assert sorted(p.name for p in top.iterdir()) == ["epoch2.safetensors", "epoch2.safetensors.123.tmp"]
