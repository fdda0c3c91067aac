"""`gmptl serve` over real HTTP on loopback, the server started by the test."""

import contextlib
import io
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from test_export import make_model_dir

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model_dir, *options: str):
    """``gmptl serve MODEL_DIR`` on a free loopback port: (its URL, its process) once its health check answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gmptl", "serve", str(model_dir), "--port", str(port), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not start: {proc.stdout.read1().decode()[-2000:]}")
                time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir = make_model_dir(tmp_path_factory.mktemp("m"), "random:hubert-tiny", "linear", gender=True)
    with serving(model_dir, "--max-upload-mb", "0.2") as (url, _):
        yield url


def wav_bytes(seconds=1.0, rate=16000, fmt="WAV", seed=0) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32),
             rate, format=fmt)
    return buf.getvalue()


def test_health_model_and_docs(server):
    assert httpx.get(f"{server}/v1/health").json() == {"status": "ok"}
    info = httpx.get(f"{server}/v1/model").json()
    assert info["labels"] == ["neutral", "happy", "sad", "angry"] and info["gender"] is True
    assert info["max_upload_bytes"] == 200000
    assert httpx.get(f"{server}/docs").status_code == 200
    assert "/v1/predict" in httpx.get(f"{server}/openapi.json").json()["paths"]


def test_multipart_and_raw_body_give_the_same_prediction(server):
    data = wav_bytes(fmt="FLAC", rate=22050)
    a = httpx.post(f"{server}/v1/predict", files={"file": ("clip.flac", data, "audio/flac")})
    b = httpx.post(f"{server}/v1/predict", content=data, headers={"content-type": "audio/flac"})
    assert a.status_code == b.status_code == 200
    a, b = a.json(), b.json()
    assert a["path"] == "clip.flac" and b["path"] == "<body>"
    assert a["label"] == b["label"] and a["probabilities"] == pytest.approx(b["probabilities"])
    assert sum(a["probabilities"].values()) == pytest.approx(1, abs=1e-4) and a["gender"] in ("female", "male")
    assert a["duration"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("body,reason", [
    (b"", "empty file"),
    (b"definitely not audio", "not audio"),
    (wav_bytes(seconds=0.01), "too short"),
])
def test_bad_audio_is_422_with_the_reason(server, body, reason):
    r = httpx.post(f"{server}/v1/predict", content=body)
    assert r.status_code == 422 and reason in r.json()["detail"]


def test_silence_and_bad_multipart_are_422(server):
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000, np.float32), 16000, format="WAV")
    r = httpx.post(f"{server}/v1/predict", files={"file": ("s.wav", buf.getvalue())})
    assert r.status_code == 422 and "all-zero" in r.json()["detail"]
    r = httpx.post(f"{server}/v1/predict", files={"other": ("s.wav", wav_bytes())})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    r = httpx.post(f"{server}/v1/predict", content=b"--x\r\nbroken",
                   headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 422


def test_uploads_over_the_limit_are_413(server):
    big = wav_bytes(seconds=10)  # 320 kB > 0.2 MB
    assert httpx.post(f"{server}/v1/predict", content=big).status_code == 413
    assert httpx.post(f"{server}/v1/predict", files={"file": ("big.wav", big)}).status_code == 413

    def chunks():  # no content-length: the limit holds on the streamed bytes too
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]
    assert httpx.post(f"{server}/v1/predict", content=chunks()).status_code == 413
    assert httpx.get(f"{server}/v1/health").status_code == 200, "the server is still up"


def test_a_token_guards_prediction_and_the_model_not_health(tmp_path):
    from fastapi.testclient import TestClient

    import gmptl
    from gmptl.service import create_app

    model_dir = make_model_dir(tmp_path, "random:hubert-tiny", "linear", gender=True)
    client = TestClient(create_app(gmptl.load(model_dir), token="s3cret"))
    body = wav_bytes()
    assert client.post("/v1/predict", content=body).status_code == 401
    wrong = client.post("/v1/predict", content=body, headers={"Authorization": "Bearer s3cre"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/model").status_code == 401
    assert client.get("/metrics").status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert client.post("/v1/predict", content=body, headers=good).json()["label"] in ("neutral", "happy", "sad", "angry")
    assert client.get("/v1/model", headers=good).status_code == 200
    assert client.get("/v1/health").status_code == 200, "load balancers need no token"
    assert TestClient(create_app(gmptl.load(model_dir))).post("/v1/predict", content=body).status_code == 200


def test_serving_beyond_loopback_needs_a_token_or_insecure(capsys):
    from gmptl.__main__ import main
    from gmptl.errors import GmptlError
    from gmptl.service import check_access, loopback

    assert loopback("127.0.0.1") and loopback("localhost") and loopback("::1") and not loopback("0.0.0.0")
    with pytest.raises(GmptlError, match="--token"):
        check_access("0.0.0.0", None, False)
    check_access("0.0.0.0", "t", False)
    check_access("0.0.0.0", None, True)
    check_access("127.0.0.1", None, False)
    with pytest.raises(SystemExit):  # refused before the model is even read (there is none here)
        main(["serve", "no-such-model", "--host", "0.0.0.0"])
    assert "beyond loopback" in capsys.readouterr().err


def test_metrics_count_requests_by_status_latency_and_audio(tmp_path):
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    import gmptl
    from gmptl.service import create_app

    client = TestClient(create_app(gmptl.load(make_model_dir(tmp_path, "random:hubert-tiny", "linear", gender=True))))
    assert client.post("/v1/predict", content=wav_bytes(seconds=1.5)).status_code == 200
    assert client.post("/v1/predict", content=wav_bytes(seconds=0.5)).status_code == 200
    assert client.post("/v1/predict", content=b"not audio").status_code == 422
    text = client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text.text) for s in family.samples}
    assert samples[("gmptl_requests_total", (("path", "/v1/predict"), ("status", "200")))] == 2
    assert samples[("gmptl_requests_total", (("path", "/v1/predict"), ("status", "422")))] == 1
    assert samples[("gmptl_request_seconds_count", (("path", "/v1/predict"),))] == 3
    assert samples[("gmptl_audio_seconds_total", ())] == pytest.approx(2.0)
    assert samples[("gmptl_requests_in_flight", ())] == 1, "the /metrics request itself"


def test_timeline_over_http_answers_the_windows_predict_gives(tmp_path):
    from fastapi.testclient import TestClient

    import gmptl
    from gmptl.service import create_app

    model_dir = make_model_dir(tmp_path, "random:hubert-tiny", "linear", gender=True)
    recording = tmp_path / "long.flac"
    recording.write_bytes(wav_bytes(seconds=7.3, fmt="FLAC", seed=3))
    expected = [w.to_dict() for w in gmptl.load(model_dir).timeline(recording, 2.0, 1.0)]
    client = TestClient(create_app(gmptl.load(model_dir)))
    got = client.post("/v1/timeline?window=2&hop=1", files={"file": ("long.flac", recording.read_bytes())}).json()
    assert got["path"] == "long.flac" and len(got["windows"]) == len(expected) == 7
    for a, b in zip(got["windows"], expected):
        assert (a["start"], a["end"], a["label"]) == (b["start"], b["end"], b["label"])
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    assert client.post("/v1/timeline?window=1&hop=2", content=recording.read_bytes()).status_code == 422
    assert client.post("/v1/timeline", content=b"not audio").status_code == 422


def test_recordings_over_the_audio_limit_are_413_before_decoding(tmp_path):
    from fastapi.testclient import TestClient

    import gmptl
    from gmptl.service import DEFAULT_MAX_AUDIO_S, create_app

    assert DEFAULT_MAX_AUDIO_S >= 21 * 60, "the defaults serve a 21-minute recording"
    client = TestClient(create_app(gmptl.load(make_model_dir(tmp_path, "random:hubert-tiny", "linear", gender=True)),
                                   max_audio_seconds=2.0))
    long = client.post("/v1/predict", content=wav_bytes(seconds=3.0))
    assert long.status_code == 413 and "3 s of audio is over the limit of 2 s" in long.json()["detail"]
    assert client.post("/v1/timeline", content=wav_bytes(seconds=3.0)).status_code == 413
    assert client.post("/v1/predict", content=wav_bytes(seconds=1.0)).status_code == 200
    assert client.get("/v1/model").json()["max_audio_seconds"] == 2.0
