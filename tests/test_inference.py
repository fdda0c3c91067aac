"""Using a trained model: Python API, `gmptl predict` (table, CSV, JSONL, bad files), timelines."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import gmptl
from gmptl.__main__ import main
from gmptl.errors import ConfigError
from synth_corpus import make_corpus, voice

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"), speakers=4, per_class=3)
    out = tmp_path_factory.mktemp("train")
    assert main(["train", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "system=finetune",
                 "--set", "data.valid_fraction=0.25", "--out", str(out)]) == 0
    return out / "model"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("clips")
    paths = []
    for i, (emotion, rate) in enumerate([("happy", 16000), ("sad", 44100), ("angry", 8000)]):
        wave = voice(emotion, i % 2 == 0, 1.2, rng)
        path = root / "sub" / f"{i}.flac" if i == 2 else root / f"{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, wave if rate == 16000 else np.interp(np.arange(int(len(wave) * rate / 16000)) * 16000 / rate,
                                                              np.arange(len(wave)), wave), rate)
        paths.append(path)
    return paths


def test_api_predicts_typed_results(model_dir, clips):
    rec = gmptl.load(model_dir)
    assert rec.labels == ["angry", "happy", "neutral", "sad"]  # manifests sort their labels
    result = rec.predict_file(clips[0])
    assert result.label in rec.labels and result.path == str(clips[0])
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert result.label == max(result.probabilities, key=result.probabilities.get)
    assert result.gender in ("female", "male") and 0.5 <= result.gender_probability <= 1
    assert result.duration == pytest.approx(1.2, abs=0.01)
    wave, rate = sf.read(clips[1], dtype="float32")
    from_array = rec.predict(np.stack([wave, wave], 1), rate)  # stereo, 44.1 kHz
    assert from_array.probabilities == pytest.approx(rec.predict_file(clips[1]).probabilities, abs=1e-5)
    batch = rec.predict_waves([gmptl.audio.load_audio(p) for p in clips])
    for p, b in zip(clips, batch):
        assert b.probabilities == pytest.approx(rec.predict_file(p).probabilities, abs=1e-4)


def test_long_input_is_scored_in_pieces(model_dir):
    rec = gmptl.load(model_dir)
    rec.max_samples = 16000  # pretend the encoder takes 1 s at most
    rng = np.random.default_rng(1)
    a, b = voice("happy", True, 1.0, rng), voice("sad", False, 1.0, rng)
    joined = rec.predict_waves([np.concatenate([a, b])])[0]
    pa, pb = rec.predict_waves([a])[0], rec.predict_waves([b])[0]
    for label in rec.labels:  # duration-weighted mean of the pieces
        assert joined.probabilities[label] == pytest.approx((pa.probabilities[label] + pb.probabilities[label]) / 2,
                                                            abs=1e-5)


def test_predict_command_table_csv_jsonl(model_dir, clips, tmp_path, capsys):
    folder = clips[0].parent
    assert main(["predict", str(model_dir), str(folder)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 3 and all("female" in line or "male" in line for line in table)
    assert main(["predict", str(model_dir), str(folder / "*.wav"), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 2 and {"path", "label", "p_happy", "gender", "duration"} <= set(rows[0])
    assert main(["predict", str(model_dir), *map(str, clips), "--out", str(tmp_path / "p.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [x["path"] for x in lines] == [str(p) for p in clips]


def test_bf16_precision_predicts_close_to_fp32(model_dir, clips, native_bf16, capsys):
    waves = [gmptl.audio.load_audio(p) for p in clips]
    fp32 = gmptl.load(model_dir).predict_waves(waves)
    bf16 = gmptl.load(model_dir, precision="bf16").predict_waves(waves)
    for a, b in zip(fp32, bf16):
        assert sum(b.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert b.probabilities == pytest.approx(a.probabilities, abs=0.05)
        assert b.gender_probability == pytest.approx(a.gender_probability, abs=0.05)
    assert any(b.probabilities != a.probabilities for a, b in zip(fp32, bf16)), "bf16 did not take effect"
    assert main(["predict", str(model_dir), str(clips[0]), "--precision", "bf16"]) == 0
    assert str(clips[0]) in capsys.readouterr().out


def test_precision_options_are_checked(model_dir, clips, capsys, monkeypatch):
    with pytest.raises(ValueError, match="precision must be"):
        gmptl.load(model_dir, precision="fp16")
    with pytest.raises(SystemExit) as exit:
        main(["predict", str(model_dir), str(clips[0]), "--backend", "onnx", "--precision", "bf16"])
    assert exit.value.code != 0 and "--precision bf16 needs --backend torch" in capsys.readouterr().err
    monkeypatch.setattr("gmptl.utils.cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="this CPU has no native bf16"):
        gmptl.load(model_dir, precision="bf16")
    with pytest.raises(SystemExit) as exit:
        main(["predict", str(model_dir), str(clips[0]), "--precision", "bf16"])
    err = capsys.readouterr().err
    assert exit.value.code != 0
    assert "this CPU has no native bf16" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_files_are_reported_and_the_rest_predicted(model_dir, clips, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, np.float32), 16000)
    code = main(["predict", str(model_dir), str(clips[0]), str(bad), str(silent), str(tmp_path / "nothing*.wav")])
    out, err = capsys.readouterr()
    assert code == 1
    assert str(clips[0]) in out and len(out.strip().splitlines()) == 1
    assert f"{bad}: not audio" in err and f"{silent}: all-zero" in err and "nothing*.wav" in err
    assert "3 input(s) failed, 1 predicted" in err


def test_broken_links_are_reported_as_broken_links(model_dir, clips, tmp_path, capsys):
    """A dangling symbolic link is an error naming it, whether given by name, found in a directory or by a glob."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "gone.wav").symlink_to(tmp_path / "deleted.wav")
    (folder / "ok.wav").symlink_to(clips[0])
    named = tmp_path / "named.wav"
    named.symlink_to(tmp_path / "also-deleted.wav")
    for paths, broken in (([str(named)], [named]), ([str(folder)], [folder / "gone.wav"]),
                          ([str(folder / "*.wav")], [folder / "gone.wav"])):
        code = main(["predict", str(model_dir), *paths])
        out, err = capsys.readouterr()
        assert code == 1, paths
        for link in broken:
            assert f"{link}: broken symbolic link" in err and "no such file" not in err
        assert ("ok.wav" in out) == (paths != [str(named)])


def test_timeline_streams_windows_and_plots(model_dir, tmp_path, capsys):
    rng = np.random.default_rng(2)
    path = tmp_path / "long.wav"
    sf.write(path, np.concatenate([voice(e, True, 4.0, rng) for e in ("happy", "sad", "angry")]), 16000)
    rec = gmptl.load(model_dir)
    windows = list(rec.timeline(path, window=2.0, hop=0.5, batch_size=4))
    starts = [w.start for w in windows]
    assert starts == pytest.approx(list(np.arange(0, 10.01, 0.5)))  # 12 s: windows at 0 .. 10 s
    assert windows[-1].end == pytest.approx(12.0)
    for w in windows[:3]:  # a window equals predicting that excerpt alone
        excerpt = gmptl.audio.load_audio(path)[int(w.start * 16000):int(w.end * 16000)]
        assert w.probabilities == pytest.approx(rec.predict_waves([excerpt])[0].probabilities, abs=1e-4)
    assert main(["predict", str(model_dir), str(path), "--timeline", "--out", str(tmp_path / "t.jsonl"),
                 "--plot", str(tmp_path / "t.png")]) == 0
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == len(windows)
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        next(rec.timeline(path, window=1.0, hop=2.0))

    import matplotlib.image

    (tmp_path / "acted.csv").write_text("start,end,label\n0,4,happy\n4,8,sad\n8,12,angry\n")
    assert main(["predict", str(model_dir), str(path), "--timeline", "--out", str(tmp_path / "m.jsonl"),
                 "--plot", str(tmp_path / "m.png"), "--marks", str(tmp_path / "acted.csv")]) == 0
    plain, marked = (matplotlib.image.imread(tmp_path / n) for n in ("t.png", "m.png"))
    assert plain.shape == marked.shape and np.abs(plain - marked).mean() > 0.01, "the acted segments are shaded"
    (tmp_path / "bad.csv").write_text("from,to\n0,4\n")
    with pytest.raises(SystemExit):
        main(["predict", str(model_dir), str(path), "--timeline", "--plot", str(tmp_path / "x.png"),
              "--marks", str(tmp_path / "bad.csv")])
    assert "--marks" in capsys.readouterr().err


def test_tail_shorter_than_a_window_is_covered(model_dir, tmp_path):
    path = tmp_path / "odd.wav"
    sf.write(path, voice("neutral", False, 3.3, np.random.default_rng(3)), 16000)
    windows = list(gmptl.load(model_dir).timeline(path, window=2.0, hop=1.0))
    assert [w.start for w in windows] == [0.0, 1.0, 2.0]
    assert windows[-1].end == pytest.approx(3.3, abs=1e-3)


@pytest.fixture(scope="module")
def gmptl_model(tmp_path_factory) -> tuple[Path, Path]:
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"), speakers=4, per_class=3)
    out = tmp_path_factory.mktemp("train_gmptl")
    assert main(["train", "--config", str(CONFIG), "--set", f"data.root={corpus}", "--set", "data.valid_fraction=0.25",
                 "--out", str(out)]) == 0
    return out, corpus.parent


def test_pseudo_track_labels_frames_as_training_did(gmptl_model):
    """The model's stage-1 encoder + centroids give a training utterance the labels k-means gave it."""
    out, corpus = gmptl_model
    assert (out / "model" / "pseudo_encoder.safetensors").is_file()
    rec = gmptl.load(out / "model")
    pseudo = out / "pseudo"
    ids = (pseudo / "train.ids.txt").read_text().split()
    lengths = np.load(pseudo / "train.lengths.npy")
    first = 0
    for i, utt in enumerate(ids[:3]):
        path = next(corpus.glob(f"{utt}.*"))
        (piece,) = list(rec.pseudo_track(path, chunk=30.0))
        for k in (4, 8, 16):
            trained = np.load(pseudo / f"train.km{k}.labels.npy")[first:first + lengths[i]]
            assert len(piece.labels[k]) == lengths[i]
            # the dump was float16, the track float32: only near-ties may differ
            assert (piece.labels[k] == trained).mean() >= 0.9
        first += lengths[i]


def test_timeline_track_csv_and_plot(gmptl_model, tmp_path):
    out, corpus = gmptl_model
    rng = np.random.default_rng(1)
    recording = tmp_path / "long.wav"
    sf.write(recording, np.concatenate([voice(e, True, 2.0, rng) for e in ("happy", "sad", "angry")]), 16000)
    track, plot = tmp_path / "track.csv", tmp_path / "t.png"
    assert main(["predict", str(out / "model"), str(recording), "--timeline", "--window", "1", "--hop", "0.5",
                 "--track", str(track), "--plot", str(plot)]) == 0
    rows = list(csv.DictReader(track.open()))
    assert list(rows[0]) == ["time", "km4", "km8", "km16"]
    assert len(rows) == pytest.approx(6.0 * 50, abs=2)
    assert all(0 <= int(r["km16"]) < 16 for r in rows)
    assert float(rows[-1]["time"]) == pytest.approx(6.0 - 0.02, abs=0.05)
    assert plot.stat().st_size > 0


def test_track_needs_a_gmptl_model(model_dir, clips, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["predict", str(model_dir), str(clips[0]), "--timeline", "--track", "x.csv"])
    assert exit.value.code == 2 and "no pseudo-label encoder" in capsys.readouterr().err
