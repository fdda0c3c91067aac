"""An HTTP service for a trained model: FastAPI on uvicorn.

``POST /v1/predict`` takes a multipart upload (field ``file``) or the raw audio as
the request body and answers what ``gmptl predict`` gives per file; ``POST
/v1/timeline?window=2&hop=0.5`` answers the windows ``gmptl predict --timeline`` gives;
``GET /v1/health`` and ``GET /v1/model`` describe the service; ``/docs`` is the OpenAPI
page. Uploads over the size limit answer 413, audio that cannot be used 422 with
the reason; bad input never reaches a 500. With a token, ``/v1/predict`` and
``/v1/model`` (and ``/metrics``) answer 401 without ``Authorization: Bearer <token>``
(health and docs stay open, for load balancers and readers). ``GET /metrics``: Prometheus
text (requests by path and status, latency, requests in flight, audio seconds scored).
"""

import hmac
import ipaddress
import socket
import tempfile
from pathlib import Path

from .audio import bytes_info, decode_bytes
from .errors import AudioError, GmptlError
from .inference import Prediction, Recognizer

DEFAULT_MAX_MB = 50.0
DEFAULT_MAX_AUDIO_S = 3600.0  # an hour: a 21-minute meeting fits
UPLOAD_ANSWERS = {401: {"description": "no or wrong bearer token (with --token)"},
                  413: {"description": "upload or audio over its limit"},
                  422: {"description": "audio that cannot be used"}}


def loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (127.0.0.0/8, ::1)."""
    try:
        return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback
                   for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def check_access(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to listen beyond loopback without a token, unless told to (``--insecure``)."""
    if not token and not insecure and not loopback(host):
        raise GmptlError(f"--host {host}: beyond loopback anyone who reaches the port can use the model; give "
                         "--token (or GMPTL_TOKEN), or --insecure to serve it open")


def bearer(token: str | None):
    """A FastAPI dependency: 401 unless the request carries ``Authorization: Bearer <token>`` (none: open)."""
    from fastapi import HTTPException, Request

    def authorized(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if token and not (scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    return authorized


async def read_audio(request, max_bytes: int, max_audio_seconds: float) -> tuple[bytes, str]:
    """The uploaded audio (a multipart field ``file`` or the raw body) and its name. 413 as soon as the body
    passes ``max_bytes``, or when its header says it lasts over ``max_audio_seconds`` (nothing decoded); 422
    for a malformed upload or a header that is not audio."""
    from fastapi import HTTPException, Request

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"upload of {int(declared)} bytes is over the limit of {max_bytes} bytes")
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > max_bytes:
            raise HTTPException(413, f"upload is over the limit of {max_bytes} bytes")
    data, name = bytes(received), "<body>"
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async def replay():
            return {"type": "http.request", "body": data, "more_body": False}

        try:
            form = await Request(request.scope, replay).form()
        except Exception as e:  # malformed multipart: the client's fault
            raise HTTPException(422, f"malformed multipart body ({e})") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "multipart upload without a 'file' field")
        data, name = await upload.read(), upload.filename or "<upload>"
    try:
        seconds = bytes_info(data, name).duration
    except AudioError as e:
        raise HTTPException(422, e.reason) from None
    if seconds > max_audio_seconds:
        raise HTTPException(413, f"{seconds:.0f} s of audio is over the limit of {max_audio_seconds:g} s "
                                 "(--max-audio-seconds)")
    return data, name


def create_app(recognizer: Recognizer, max_bytes: int = int(DEFAULT_MAX_MB * 1e6), token: str | None = None,
               max_audio_seconds: float = DEFAULT_MAX_AUDIO_S):
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool

    app = FastAPI(title="gmptl", version=recognizer.meta.get("gmptl_version", "0.1.0"),
                  description="Speech emotion recognition (GMP-TL). POST audio to /v1/predict.")

    metrics = Metrics()

    @app.middleware("http")
    async def measure(request: Request, call_next):
        with metrics.in_flight.track_inprogress(), metrics.latency.labels(request.url.path).time():
            response = await call_next(request)
        metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    authorized = bearer(token)

    @app.post("/v1/predict", response_model=Prediction, dependencies=[Depends(authorized)], responses=UPLOAD_ANSWERS)
    async def predict(request: Request):
        """Emotion of one recording: a multipart upload (field ``file``) or the raw body."""
        data, name = await read_audio(request, max_bytes, max_audio_seconds)
        try:
            wave = decode_bytes(data, name, recognizer.sample_rate)
        except AudioError as e:
            raise HTTPException(422, e.reason) from None
        result = (await run_in_threadpool(recognizer.predict_waves, [wave]))[0]
        metrics.audio.inc(result.duration)
        return {**result.to_dict(), "path": name}

    @app.post("/v1/timeline", dependencies=[Depends(authorized)], responses=UPLOAD_ANSWERS)
    async def timeline(request: Request, window: float = 2.0, hop: float = 0.5):
        """Emotion over time of one recording, window by window, as ``gmptl predict --timeline`` gives it."""
        data, name = await read_audio(request, max_bytes, max_audio_seconds)
        if not 0 < hop <= window:
            raise HTTPException(422, f"need 0 < hop <= window, got hop {hop} s and window {window} s")
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as f:  # streamed from a file, as predict does
            f.write(data)
            f.flush()
            try:
                windows = await run_in_threadpool(lambda: list(recognizer.timeline(f.name, window, hop)))
            except AudioError as e:
                raise HTTPException(422, e.reason) from None
        metrics.audio.inc(windows[-1].end if windows else 0.0)
        return {"path": name, "window": window, "hop": hop, "windows": [w.to_dict() for w in windows]}

    @app.get("/metrics", dependencies=[Depends(authorized)], include_in_schema=False)
    def prometheus():
        from fastapi import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/model", dependencies=[Depends(authorized)])
    def model():
        encoder = recognizer.meta.get("encoder")
        return {"labels": recognizer.labels, "sample_rate": recognizer.sample_rate, "gender": recognizer.has_gender,
                "encoder": encoder.get("name") if isinstance(encoder, dict) else encoder,
                "temperature": recognizer.temperature,  # divides the scores (1: uncalibrated)
                "metrics": recognizer.meta.get("metrics", {}), "max_upload_bytes": max_bytes,
                "max_audio_seconds": max_audio_seconds}

    return app


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("gmptl_requests", "HTTP requests answered", ["path", "status"], registry=self.registry)
        self.latency = Histogram("gmptl_request_seconds", "time to answer a request", ["path"], registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.in_flight = Gauge("gmptl_requests_in_flight", "requests received and not yet answered",
                               registry=self.registry)
        self.audio = Counter("gmptl_audio_seconds", "seconds of audio scored", registry=self.registry)


def serve(recognizer: Recognizer, host: str, port: int, max_bytes: int, token: str | None = None,
          insecure: bool = False, max_audio_seconds: float = DEFAULT_MAX_AUDIO_S) -> None:
    import uvicorn

    check_access(host, token, insecure)
    uvicorn.run(create_app(recognizer, max_bytes, token, max_audio_seconds), host=host, port=port, log_level="info")
