"""Configs load typed, fail loudly on unknown keys and wrong types, and take overrides."""

import pytest

from gmptl.config import Config, load_config
from gmptl.errors import ConfigError


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


def test_step_digests_ignore_later_options_at_their_default(tmp_path):
    """A step directory made before ``pseudo.kmeans`` existed is found again at its default;
    ``fast`` makes new pseudo-label (and later) steps and leaves stage 1 shared."""
    import hashlib
    import json

    from gmptl.pipeline import step_dirs

    dirs = step_dirs(load_config(), tmp_path, shared=tmp_path, key="fold1")
    old = load_config().to_dict()
    del old["pseudo"]["kmeans"], old["data"]["valid_by_fold"], old["train"]["frozen_epochs"]
    del old["train"]["head_weight_decay"], old["train"]["select"], old["train"]["average"]  # before these options
    del old["train"]["crossfit"], old["train"]["frozen_head_lr"], old["stage2"]["frozen_epochs"]
    old["data"].pop("root"), old["train"].pop("device"), old["train"].pop("checkpointing")
    common = {"key": "fold1", **{s: old[s] for s in ("data", "encoder", "head", "train")}}
    before = {**common, "stage1": old["stage1"], "pseudo": old["pseudo"]}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    assert dirs["pseudo"].name == f"pseudo-{digest}"
    fast = step_dirs(load_config(None, ["pseudo.kmeans=fast"]), tmp_path, shared=tmp_path, key="fold1")
    assert fast["stage1"] == dirs["stage1"] and fast["pseudo"] != dirs["pseudo"] and fast["stage3"] != dirs["stage3"]
    by_fold = step_dirs(load_config(None, ["data.valid_by_fold=true"]), tmp_path, shared=tmp_path, key="fold1")
    assert by_fold["stage1"] != dirs["stage1"]  # other validation speakers: another stage 1
    lp_ft = step_dirs(load_config(None, ["train.frozen_epochs=2"]), tmp_path, shared=tmp_path, key="fold1")
    assert lp_ft["stage1"] != dirs["stage1"]
    lp_ft_fast = step_dirs(load_config(None, ["train.frozen_epochs=2", "train.frozen_head_lr=1e-3"]), tmp_path,
                           shared=tmp_path, key="fold1")
    assert lp_ft_fast["stage1"] not in (dirs["stage1"], lp_ft["stage1"])
    lp_ft_13 = step_dirs(load_config(None, ["train.frozen_epochs=2", "stage2.frozen_epochs=0"]), tmp_path,
                         shared=tmp_path, key="fold1")
    assert lp_ft_13["pseudo"] == lp_ft["pseudo"] and lp_ft_13["stage2"] != lp_ft["stage2"], \
        "LP-FT in stages 1 and 3 only shares stage 1 and the pseudo-labels with LP-FT in every stage"
    with pytest.raises(ConfigError, match="stage2.frozen_epochs must be >= 0"):
        load_config(None, ["stage2.frozen_epochs=-1"])
    crossfit = step_dirs(load_config(None, ["train.crossfit=true"]), tmp_path, shared=tmp_path, key="fold1")
    assert crossfit["stage1"] != dirs["stage1"], "a step made without the cross-fitted figures is not reused"
    averaged = step_dirs(load_config(None, ["train.average=3"]), tmp_path, shared=tmp_path, key="fold1")
    assert averaged["stage1"] != dirs["stage1"]
    by_loss = step_dirs(load_config(None, ["train.select=loss"]), tmp_path, shared=tmp_path, key="fold1")
    assert by_loss["stage1"] != dirs["stage1"]  # another epoch chosen: another stage 1
    with pytest.raises(ConfigError, match="pseudo.kmeans must be"):
        load_config(None, ["pseudo.kmeans=quick"])
