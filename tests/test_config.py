"""Configs load typed, fail loudly on unknown keys and wrong types, and take overrides."""

from pathlib import Path

import pytest

from gmptl.config import Config, load_config
from gmptl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers_values():
    c = load_config()
    assert (c.stage1.alpha, c.pseudo.layer, c.pseudo.scales) == (0.9, -3, [64, 512, 4096])
    assert (c.stage3.loss, c.stage3.scale, c.stage3.margin) == ("amsoftmax", 30.0, 0.2)
    assert (c.train.lr, c.train.batch_size, c.stage2.mask_prob, c.stage2.mask_span) == (1e-4, 64, 0.8, 10)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  corpus: emodb\n  classes: [neutral, angry]\ntrain:\n  lr: 3e-4\n  seed: 4\n")
    c = load_config(path, ["train.seed=7", "pseudo.scales=[8, 16]", "encoder.layer=null", "stage3.loss=ce"])
    assert isinstance(c, Config)
    assert c.data.corpus == "emodb" and c.data.classes == ["neutral", "angry"]
    assert c.train.lr == 3e-4 and c.train.seed == 7 and c.pseudo.scales == [8, 16]
    assert c.encoder.layer is None and c.stage3.loss == "ce"
    assert load_config(None, ["stage1.alpha=1"]).stage1.alpha == 1.0


@pytest.mark.parametrize("overrides,message", [
    (["train.lrr=1"], "unknown config key 'train.lrr'"),
    (["nope.x=1"], "unknown config key 'nope'"),
    (["train.seed=abc"], "train.seed: expected int"),
    (["train.seed=1.5"], "train.seed: expected int"),
    (["pseudo.scales=64"], "pseudo.scales: expected a list"),
    (["encoder.freeze_frontend=3"], "encoder.freeze_frontend: expected bool"),
    (["encoder.normalize=maybe"], "encoder.normalize must be auto, true or false, not 'maybe'"),
    (["encoder.normalize=1"], "encoder.normalize: expected str"),
    (["encoder.layerdrop=1.0"], "encoder.layerdrop must be in"),
    (["stage3.loss=hinge"], "stage3.loss must be"),
    (["train.micro_batch=10"], "multiple of train.micro_batch"),
    (["train.lr"], "expected key=value"),
])
def test_bad_values_fail_with_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, overrides)


def test_encoder_normalize_is_auto_true_or_false():
    assert load_config().encoder.normalize == "auto"
    assert load_config(None, ["encoder.normalize=false"]).encoder.normalize is False
    assert load_config(None, ["encoder.normalize=true"]).encoder.normalize is True


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_a_run_saved_before_new_options_still_resumes(tmp_path):
    import json

    from gmptl.config import load_config
    from gmptl.cv import claim_run_dir
    from gmptl.errors import ConfigError

    cfg = load_config(None, ["train.lr=3e-4"])
    old = cfg.to_dict()
    del old["train"]["checkpointing"]  # as written by a gmptl without that option
    (tmp_path / "config.json").write_text(json.dumps(old))
    claim_run_dir(cfg, tmp_path)  # same settings: resumes
    with pytest.raises(ConfigError, match="another config"):
        claim_run_dir(load_config(None, ["train.lr=1e-3"]), tmp_path)


def test_step_keys_follow_what_each_step_depends_on(tmp_path, monkeypatch):
    """A step's key moves with its own settings, those of the steps before it and their code versions,
    and with nothing that only says how it runs; a directory of another key is refused, never taken up."""
    from gmptl import pipeline

    keys = lambda *sets: pipeline.step_keys(load_config(None, list(sets)), "ravdess/1")  # noqa: E731
    base = keys()
    changed = lambda other: [s for s in pipeline.STEPS if other[s] != base[s]]  # noqa: E731
    assert len(set(base.values())) == 4
    for sets, steps in [(["train.device=cpu", "train.checkpointing=true", "data.root=/elsewhere"], []),
                        (["stage3.margin=0.35"], ["stage3"]),
                        (["stage2.mask_prob=0.5"], ["stage2", "stage3"]),
                        (["pseudo.kmeans=fast"], ["pseudo", "stage2", "stage3"]),
                        (["stage1.epochs=3"], list(pipeline.STEPS)),
                        (["train.average=3"], list(pipeline.STEPS)),
                        (["probe.groups=3"], [])]:
        assert changed(keys(*sets)) == steps, sets
    assert changed(pipeline.step_keys(load_config(), "ravdess/2")) == list(pipeline.STEPS), "another fold"
    monkeypatch.setitem(pipeline.VERSIONS, "pseudo", pipeline.VERSIONS["pseudo"] + 1)
    assert changed(keys()) == ["pseudo", "stage2", "stage3"], "new pseudo-label code: it and what follows recomputed"
    monkeypatch.undo()

    cfg = load_config()
    dirs = pipeline.step_dirs(cfg, tmp_path / "run")
    pipeline.claim_steps(cfg, dirs, "ravdess/1")
    pipeline.claim_steps(cfg, dirs, "ravdess/1")  # the same steps: resumed
    with pytest.raises(ConfigError, match="stage3: made by another version of the stage3 step"):
        pipeline.claim_steps(load_config(None, ["stage3.margin=0.35"]), dirs, "ravdess/1")
    old = tmp_path / "old" / "stage1"
    old.mkdir(parents=True)
    (old / "last.json").write_text("{}")  # a step of a gmptl before step keys
    with pytest.raises(ConfigError, match="before step keys"):
        pipeline.claim_steps(cfg, {"stage1": old}, "ravdess/1")
    shared = pipeline.step_dirs(cfg, tmp_path, shared=tmp_path / "steps", key="ravdess/1")
    assert {s: d.name for s, d in shared.items()} == {s: f"{s}-{k}" for s, k in base.items()}


def test_every_option_is_documented_once_and_listed(capsys):
    """``gmptl config --list`` shows every option of the dataclasses with its default and the comment beside
    its field; docs/options.md is that list, so the two cannot drift apart."""
    import dataclasses

    from gmptl.__main__ import main
    from gmptl.config import option_docs, options_table

    defaults = Config().to_dict()
    expected = [(f"{section}.{k}", v) for section, values in defaults.items() if isinstance(values, dict)
                for k, v in values.items()]
    expected.insert(0, ("system", defaults["system"]))
    rows = option_docs()
    assert [(r["key"], r["default"]) for r in rows] == expected
    assert all(r["doc"] for r in rows), [r["key"] for r in rows if not r["doc"]]
    assert next(r for r in rows if r["key"] == "train.seed")["doc"].startswith("initial weights")
    assert next(r for r in rows if r["key"] == "train.average")["doc"].endswith("1: the best epoch; ours"), \
        "a comment continued on the lines below its field is read whole"
    assert len(dataclasses.fields(Config)) == 1 + sum(isinstance(v, dict) for v in defaults.values())
    assert main(["config", "--list"]) == 0
    assert capsys.readouterr().out == options_table()
    table = (REPO / "docs" / "options.md").read_text()
    assert options_table(markdown=True) in table, "docs/options.md: paste `gmptl config --list --markdown`"


def test_demo_config_runs_every_stage_of_gmp_tl():
    """`make demo` is cut to its time budget (configs/demo.yaml), but still shows all of GMP-TL."""
    c = load_config(REPO / "configs" / "demo.yaml")
    assert c.system == "gmp-tl" and len(c.pseudo.scales) == 3
    assert min(c.stage1.epochs, c.stage2.epochs, c.stage3.epochs) >= 1


def test_matmul_rate_is_a_positive_figure():
    from gmptl.provenance import matmul_gflops

    assert matmul_gflops(n=64, repeat=2) > 0
