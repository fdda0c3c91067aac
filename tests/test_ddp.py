"""torchrun with 2 gloo processes on the CPU gives the metrics of 1 process with the same effective batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synth_corpus import make_corpus

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(args: list[str], nproc: int) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(29500 + os.getpid() % 1000)] if nproc > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*launcher, "-m", "gmptl", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_gloo_ranks_match_one_process(tmp_path):
    manifest = make_corpus(tmp_path / "corpus", speakers=4, per_class=4)
    common = ["cv", "--config", "configs/tiny.yaml", "--set", f"data.root={manifest}", "--set", "data.valid_fraction=0.25",
              "--folds", "1"]
    run([*common, "--out", str(tmp_path / "one")], 1)
    run([*common, "--out", str(tmp_path / "two")], 2)
    one, two = (json.loads((tmp_path / d / "fold1" / "result.json").read_text()) for d in ("one", "two"))
    assert two["war"] == one["war"] and two["uar"] == one["uar"]
    # Tolerance: gradients summed across ranks in another order than accumulated in one process.
    for stage in ("stage1", "stage2", "stage3"):
        logs = [[json.loads(line) for line in (tmp_path / d / "fold1" / stage / "log.jsonl").read_text().splitlines()]
                for d in ("one", "two")]
        assert [r["epoch"] for r in logs[0]] == [r["epoch"] for r in logs[1]]
        for a, b in zip(*logs):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4), stage
            assert b["valid_score"] == pytest.approx(a["valid_score"], rel=1e-4, abs=1e-4), stage
    report = [json.loads((tmp_path / d / "fold1" / "pseudo" / "report.json").read_text()) for d in ("one", "two")]
    assert report[0]["frames"] == report[1]["frames"]
    assert [s["clusters_used"] for s in report[0]["scales"].values()] == \
        [s["clusters_used"] for s in report[1]["scales"].values()]
    # rank 0 wrote, and only once
    assert len(list((tmp_path / "two" / "fold1" / "stage1").glob("*.tmp"))) == 0
