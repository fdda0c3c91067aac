"""The `gmptl` command: JSON outputs, one-line errors, the console script itself."""

import json
import os
import subprocess
import sys

import pytest

from gmptl.__main__ import main


def test_data_json_on_ravdess(ravdess_root, capsys):
    assert main(["data", "--corpus", "ravdess", "--root", str(ravdess_root), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["utterances"] == 1440 and s["speakers"] == 24
    assert s["classes"] == {"neutral": 96, **{c: 192 for c in
                            ("calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")}}
    assert s["genders"] == {"female": 720, "male": 720}
    assert [f["fold"] for f in s["folds"]] == [1, 2, 3, 4, 5, 6]
    assert all(len(f["test_speakers"]) == 4 and f["test_utterances"] == 240 for f in s["folds"])
    assert s["seconds"] == pytest.approx(5329, abs=5) and s["problems"] == []
    # RAVDESS clips last 2.9-5.3 s: the default 4 s crop shortens 18 % of them but only their tails.
    assert s["durations"]["min"] == pytest.approx(2.94, abs=0.01) and s["durations"]["max"] == pytest.approx(5.27, abs=0.01)
    assert s["crop"]["utterances_cut"] == pytest.approx(0.177, abs=0.001)
    assert s["crop"]["audio_cut"] == pytest.approx(0.012, abs=0.001)


def test_data_table_and_subset(ravdess_root, capsys):
    assert main(["data", "--corpus", "ravdess", "--root", str(ravdess_root),
                 "--classes", "neutral,happy,sad,angry"]) == 0
    out = capsys.readouterr().out
    assert "672 utterances" in out and "neutral 96, happy 192, sad 192, angry 192" in out
    assert "a 4 s training crop (data.max_seconds) shortens" in out


@pytest.mark.parametrize("argv,needle", [
    (["data", "--corpus", "ravdess", "--root", "/nonexistent/dir"], "/nonexistent/dir"),
    (["data", "--corpus", "nope", "--root", "."], "nope"),
    (["data", "--corpus", "ravdess", "--root", ".", "--crop", "0"], "--crop must be positive"),
])
def test_errors_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gmptl: error:") and needle in err[0]


def test_encoders_json(capsys):
    assert main(["encoders", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    builtin = next(r for r in rows if r["spec"] == "whisper-tiny.en")
    assert builtin["available"] is True and builtin["source"].endswith("model.bin")
    assert any(r["spec"] == "facebook/hubert-base-ls960" and "--local-dir" in r["note"] for r in rows)


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "gmptl", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("data", "encoders", "cv", "train"):
        assert command in done.stdout


def test_closed_pipe_ends_quietly():
    """`gmptl encoders | head -1`: the reader leaving is not a traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "gmptl", "encoders"], stdout=write, stderr=subprocess.PIPE,
                              text=True)
    finally:
        os.close(write)
    assert done.returncode == 1 and done.stderr == ""
