"""An HTTP service for a trained model: FastAPI on uvicorn.

``POST /v1/predict`` takes a multipart upload (field ``file``) or the raw audio as
the request body and answers what ``gmptl predict`` gives per file; ``POST
/v1/timeline?window=2&hop=0.5`` answers the windows ``gmptl predict --timeline`` gives;
``GET /v1/health`` and ``GET /v1/model`` describe the service; ``/docs`` is the OpenAPI
page. Uploads over the size limit answer 413, audio that cannot be used 422 with
the reason; bad input never reaches a 500. With a token, ``/v1/predict`` and
``/v1/model`` (and ``/metrics``) answer 401 without ``Authorization: Bearer <token>``
(health and docs stay open, for load balancers and readers). ``GET /metrics``: Prometheus
text (requests by path and status, latency, requests in flight, audio queued and scored).

Memory stays bounded under any load: an upload is written to a temporary file as it arrives,
checked from its header, then decoded a block at a time and scored in pieces (30 s for
Whisper) by two scoring threads that batch the pieces of concurrent requests. Audio in
flight (admitted and not yet answered) is limited in seconds; beyond it a request answers 503
with ``Retry-After``.
"""

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import math
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import AudioInfo, audio_info
from .errors import AudioError, GmptlError
from .inference import Prediction, Recognizer

DEFAULT_MAX_MB = 50.0
DEFAULT_MAX_AUDIO_S = 3600.0     # an hour: a 21-minute meeting fits
RECEIVING = 4  # uploads read at once (the others wait unread)
GAP, LINGER = 0.01, 0.05  # seconds: how long the scorer waits for more requests to batch
DEFAULT_MAX_INFLIGHT_S = 7200.0  # five 21-minute recordings at once; queued audio waits on disk, not in memory
log = logging.getLogger(__name__)
UPLOAD_ANSWERS = {401: {"description": "no or wrong bearer token (with --token)"},
                  413: {"description": "upload or audio over its limit"},
                  422: {"description": "audio that cannot be used"},
                  503: {"description": "busy: too much audio in flight; retry after the Retry-After header's seconds"}}


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


class Busy(Exception):
    """Too much audio in flight to admit a request now; ``retry_after``: seconds to wait."""

    def __init__(self, in_flight: float, retry_after: int):
        super().__init__(f"{in_flight:.0f} s of audio in flight")
        self.in_flight, self.retry_after = in_flight, retry_after


@dataclass
class Job:
    """One admitted request: its pieces, decoded when the scorer needs them, and their scores so far."""

    pieces: Iterator[tuple[int, np.ndarray]]  # (first sample, samples)
    seconds: float                            # audio it costs, counted against the in-flight limit
    done: Future = field(default_factory=Future)
    ahead: deque = field(default_factory=deque)  # pieces decoded and not yet scored
    scored: list = field(default_factory=list)   # (first sample, samples, emotion (C,), gender (2,) or None)
    done_seconds: float = 0.0                    # audio scored so far
    scoring: int = 0                             # pieces taken by a scoring thread, not yet scored
    ended: bool = False
    error: Exception | None = None

    def peek(self, count: int, samples: int) -> None:
        """Decode pieces until ``count`` of them or ``samples`` of audio wait here (or the audio ends)."""
        while not self.ended and len(self.ahead) < count and sum(len(p) for _, p in self.ahead) < samples:
            try:
                self.ahead.append(next(self.pieces))
            except StopIteration:
                self.ended = True
            except AudioError as e:  # undecodable data, NaN, truncated, silence: found while decoding
                self.ended, self.error = True, e

    @property
    def waiting(self) -> bool:
        """Whether a scoring thread could take pieces from it now (decoded, or still to decode)."""
        return self.error is None and (bool(self.ahead) or not self.ended)

    @property
    def finished(self) -> bool:
        return self.error is not None or (self.ended and not self.ahead and not self.scoring)


class Scorer:
    """Every admitted request's audio scored by ``threads`` threads, in batches that mix requests (micro-batching).

    Two threads keep the cores busy while the event loop answers one batch's requests and reads the next ones
    (with one, at concurrency 16, the scorer idled between batches: 0.80 of batch prediction's throughput; with
    two and batches of 8, 0.92 and 0.96 in two runs; bench ``service_vs_batch``). Each batch takes the shortest of the pieces waiting
    in all requests, at most ``batch_size`` pieces and ``batch_seconds`` of padded audio: concurrent short clips
    are scored together, as ``gmptl predict`` batches files, and long recordings advance beside them a few pieces
    at a time, so memory holds a few pieces per request whatever their length. Admission counts seconds of audio
    in flight (queued or being scored): beyond ``max_seconds`` a request is refused with ``Busy``, unless nothing
    else is in flight (any recording the upload limits let through can be served).
    """

    def __init__(self, recognizer: Recognizer, max_seconds: float, batch_size: int = 8,
                 batch_seconds: float = 120.0, threads: int = 2):
        self.recognizer, self.max_seconds, self.batch_size = recognizer, max_seconds, batch_size
        self.batch_samples = int(batch_seconds * recognizer.sample_rate)
        self.jobs: list[Job] = []
        self.in_flight = 0.0  # seconds of audio admitted and not yet answered
        self.rate = 0.0       # audio seconds scored per second, a running average
        self.cond = threading.Condition()  # guards jobs and in_flight
        self.picking = threading.Lock()    # one thread at a time decodes and takes pieces
        self.threads = [threading.Thread(target=self._run, name=f"gmptl-scorer-{i}", daemon=True)
                        for i in range(threads)]

    def submit(self, pieces: Iterator[tuple[int, np.ndarray]], seconds: float) -> Future:
        """Queue a request's pieces; its future gets the ``scored`` list, or the ``AudioError`` met."""
        with self.cond:
            if self.in_flight and self.in_flight + seconds > self.max_seconds:
                raise Busy(self.in_flight, self.retry_after(self.in_flight + seconds - self.max_seconds))
            job = Job(pieces, seconds)
            self.jobs.append(job)
            self.in_flight += seconds
            if not self.threads[0].is_alive():
                for thread in self.threads:
                    thread.start()
            self.cond.notify()
        return job.done

    def retry_after(self, excess: float) -> int:
        """Seconds (1 to 600) until requests holding ``excess`` seconds of the limit have been answered, if the
        requests in flight share the scorer equally at its recent rate (10 before a rate is known)."""
        if not self.rate:
            return 10
        jobs = sorted(self.jobs, key=lambda job: job.seconds - job.done_seconds)
        left = [max(job.seconds - job.done_seconds, 0.0) for job in jobs]
        freed = elapsed = 0.0
        for k, job in enumerate(jobs):  # job k finishes when the k shorter ones and its share of the rest are done
            elapsed = sum(left[:k + 1]) + (len(jobs) - k - 1) * left[k]
            freed += job.seconds
            if freed >= excess:
                break
        return int(min(600, max(1, math.ceil(elapsed / self.rate))))

    def _batch(self, jobs: list[Job]) -> list[tuple[Job, int, np.ndarray]]:
        """The next batch: the shortest waiting pieces that fit ``batch_size`` and ``batch_samples`` padded."""
        for job in jobs:
            job.peek(self.batch_size, self.batch_samples)
        waiting = sorted(((job, start, piece) for job in jobs for start, piece in job.ahead if job.error is None),
                         key=lambda item: len(item[2]))
        batch = []
        for item in waiting:
            if batch and (len(batch) == self.batch_size or (len(batch) + 1) * len(item[2]) > self.batch_samples):
                break
            batch.append(item)
        for job, start, piece in batch:
            _take(job.ahead, start)
        return batch

    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: any(job.waiting for job in self.jobs))
                # Requests that arrive together are scored together: short of a full batch, wait while they keep
                # coming (GAP apart at most, LINGER in all).
                deadline = time.monotonic() + LINGER
                while len(self.jobs) < self.batch_size and time.monotonic() < deadline:
                    waiting = len(self.jobs)
                    self.cond.wait(GAP)
                    if len(self.jobs) == waiting:
                        break
                jobs = list(self.jobs)
            with self.picking:
                batch = self._batch(jobs)
                for job, _, _ in batch:
                    job.scoring += 1
            log.debug("batch of %d pieces from %d requests", len(batch), len({id(job) for job, _, _ in batch}))
            if batch:
                self._score(batch)
            self._finish(jobs)

    def _score(self, batch: list[tuple[Job, int, np.ndarray]]) -> None:
        begin = time.perf_counter()
        try:
            emotion, gender = self.recognizer.probabilities([piece for _, _, piece in batch])
        except Exception as e:  # a model failure fails its requests, not the service
            emotion = gender = None
            for job, _, _ in batch:
                job.error = e
        audio = sum(len(p) for _, _, p in batch) / self.recognizer.sample_rate
        with self.picking:
            for i, (job, start, piece) in enumerate(batch):
                job.scoring -= 1
                if emotion is not None:
                    job.scored.append((start, len(piece), emotion[i], None if gender is None else gender[i]))
                    job.done_seconds += len(piece) / self.recognizer.sample_rate
        # Each thread's batches share the cores with the others': the scorer's rate is theirs together.
        rate = audio / max(time.perf_counter() - begin, 1e-6) * len(self.threads)
        self.rate = rate if not self.rate else 0.8 * self.rate + 0.2 * rate

    def _finish(self, jobs: list[Job]) -> None:
        """Answer the requests among ``jobs`` that are done (once each), and wake the other threads."""
        with self.cond:
            done = [job for job in jobs if job.finished and job in self.jobs]
            for job in done:
                self.jobs.remove(job)
                self.in_flight -= job.seconds
            self.cond.notify_all()
        for job in done:
            if job.error is not None:
                job.done.set_exception(job.error)
            else:
                job.done.set_result(sorted(job.scored, key=lambda s: s[0]))


def _take(ahead: deque, start: int) -> None:
    """Remove the piece that starts at sample ``start`` from a job's waiting pieces."""
    for i, (s, _) in enumerate(ahead):
        if s == start:
            del ahead[i]
            return


class _TooLarge(Exception):
    pass


async def spool(request, max_bytes: int, max_audio_seconds: float) -> tuple[Path, str, AudioInfo]:
    """The uploaded audio (a multipart field ``file`` or the raw body) written to a temporary file as it
    arrives, its name and its checked header. 413 as soon as the body passes ``max_bytes`` or when the header
    says it lasts over ``max_audio_seconds`` (nothing decoded); 422 for a malformed upload or a header that
    is not audio. The caller removes the file."""
    from fastapi import HTTPException, Request
    from fastapi.concurrency import run_in_threadpool

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"upload of {int(declared)} bytes is over the limit of {max_bytes} bytes")
    received = 0

    async def receive():  # the body as it arrives, counted
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > max_bytes:
            raise _TooLarge
        return message

    f = tempfile.NamedTemporaryFile(prefix="gmptl-upload-", delete=False)
    path, name = Path(f.name), "<body>"
    try:
        with f:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                try:  # file parts are spooled to disk by the parser, then copied to ours
                    form = await Request(request.scope, receive).form(max_files=1)
                except _TooLarge:
                    raise
                except Exception as e:  # malformed multipart: the client's fault
                    raise HTTPException(422, f"malformed multipart body ({getattr(e, 'detail', e)})") from None
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise HTTPException(422, "multipart upload without a 'file' field")
                name = upload.filename or "<upload>"
                await run_in_threadpool(shutil.copyfileobj, upload.file, f, 1 << 20)
                await form.close()
            else:
                while (message := await receive())["type"] == "http.request":
                    f.write(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        try:
            info = audio_info(path)
        except AudioError as e:
            raise HTTPException(422, e.reason) from None
        if info.duration > max_audio_seconds:
            raise HTTPException(413, f"{info.duration:.0f} s of audio is over the limit of {max_audio_seconds:g} s "
                                     "(--max-audio-seconds)")
        return path, name, info
    except _TooLarge:
        path.unlink(missing_ok=True)
        raise HTTPException(413, f"upload is over the limit of {max_bytes} bytes") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextlib.asynccontextmanager
async def uploaded(request, max_bytes: int, max_audio_seconds: float, receiving: asyncio.Semaphore):
    """``spool``'s (path, name, header) of an upload, its file removed afterwards. Only as many uploads as
    ``receiving`` allows are read at once; the others wait, unread (TCP holds them back), so a burst of large
    uploads cannot keep the event loop from answering health checks, nor fill the disk."""
    async with receiving:
        path, name, info = await spool(request, max_bytes, max_audio_seconds)
    try:
        yield path, name, info
    finally:
        path.unlink(missing_ok=True)


async def scored(scorer: Scorer, pieces, seconds: float) -> list:
    """The ``scored`` list of a request's pieces; 503 with Retry-After when busy, 422 for audio found bad."""
    from fastapi import HTTPException

    try:
        done = scorer.submit(pieces, seconds)
    except Busy as e:
        raise HTTPException(503, f"busy: {e.in_flight:.0f} s of audio in flight, the limit is "
                                 f"{scorer.max_seconds:g} s (--max-inflight-seconds); retry in {e.retry_after} s",
                            headers={"Retry-After": str(e.retry_after)}) from None
    try:
        return await asyncio.wrap_future(done)
    except AudioError as e:
        raise HTTPException(422, e.reason) from None


def create_app(recognizer: Recognizer, max_bytes: int = int(DEFAULT_MAX_MB * 1e6), token: str | None = None,
               max_audio_seconds: float = DEFAULT_MAX_AUDIO_S, max_inflight_seconds: float = DEFAULT_MAX_INFLIGHT_S):
    from fastapi import Depends, FastAPI, HTTPException, Request

    app = FastAPI(title="gmptl", version=recognizer.meta.get("gmptl_version", "0.1.0"),
                  description="Speech emotion recognition (GMP-TL). POST audio to /v1/predict.")
    scorer = Scorer(recognizer, max_inflight_seconds)
    metrics = Metrics(scorer)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        with metrics.in_flight.track_inprogress(), metrics.latency.labels(request.url.path).time():
            response = await call_next(request)
        metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    receiving = asyncio.Semaphore(RECEIVING)

    def upload(request: Request):
        return uploaded(request, max_bytes, max_audio_seconds, receiving)

    authorized = bearer(token)
    piece = recognizer.max_samples

    @app.post("/v1/predict", response_model=Prediction, dependencies=[Depends(authorized)], responses=UPLOAD_ANSWERS)
    async def predict(request: Request):
        """Emotion of one recording: a multipart upload (field ``file``) or the raw body."""
        async with upload(request) as (path, name, info):
            pieces = await scored(scorer, recognizer.windows(path, piece, piece), info.duration)
        if not pieces:
            raise HTTPException(422, "too short: under 400 samples (one encoder frame)")
        _, lengths, emotion, gender = zip(*pieces)
        samples = round(info.frames * recognizer.sample_rate / info.sample_rate)  # as decoded (and resampled)
        result = recognizer.pooled(np.stack(emotion), None if gender[0] is None else np.stack(gender), lengths,
                                   samples)
        metrics.audio.inc(result.duration)
        return {**result.to_dict(), "path": name}

    @app.post("/v1/timeline", dependencies=[Depends(authorized)], responses=UPLOAD_ANSWERS)
    async def timeline(request: Request, window: float = 2.0, hop: float = 0.5):
        """Emotion over time of one recording, window by window, as ``gmptl predict --timeline`` gives it."""
        if not 0 < hop <= window or window * recognizer.sample_rate > piece:
            raise HTTPException(422, f"need 0 < hop <= window <= {piece / recognizer.sample_rate:g} s, got hop "
                                     f"{hop} s and window {window} s")
        async with upload(request) as (path, name, info):
            size, step = int(window * recognizer.sample_rate), int(hop * recognizer.sample_rate)
            pieces = await scored(scorer, recognizer.windows(path, size, step), info.duration * window / hop)
        windows = [recognizer.window(start, n, p) for start, n, p, _ in pieces]
        metrics.audio.inc(windows[-1].end if windows else 0.0)
        return {"path": name, "window": window, "hop": hop, "windows": [w.to_dict() for w in windows]}

    @app.get("/metrics", dependencies=[Depends(authorized)], include_in_schema=False)
    def prometheus():
        from fastapi import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/health")
    async def health():  # on the event loop itself: it answers however busy the thread pool is
        return {"status": "ok"}

    @app.get("/v1/model", dependencies=[Depends(authorized)])
    def model():
        encoder = recognizer.meta.get("encoder")
        return {"labels": recognizer.labels, "sample_rate": recognizer.sample_rate, "gender": recognizer.has_gender,
                "encoder": encoder.get("name") if isinstance(encoder, dict) else encoder,
                "temperature": recognizer.temperature,  # divides the scores (1: uncalibrated)
                "metrics": recognizer.meta.get("metrics", {}), "max_upload_bytes": max_bytes,
                "max_audio_seconds": max_audio_seconds, "max_inflight_seconds": max_inflight_seconds}

    return app


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, scorer: Scorer):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("gmptl_requests", "HTTP requests answered", ["path", "status"], registry=self.registry)
        self.latency = Histogram("gmptl_request_seconds", "time to answer a request", ["path"], registry=self.registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.in_flight = Gauge("gmptl_requests_in_flight", "requests received and not yet answered",
                               registry=self.registry)
        self.audio = Counter("gmptl_audio_seconds", "seconds of audio scored", registry=self.registry)
        Gauge("gmptl_queue_requests", "requests admitted for scoring and not yet scored",
              registry=self.registry).set_function(lambda: len(scorer.jobs))
        Gauge("gmptl_queue_audio_seconds", "seconds of audio admitted and not yet scored (the in-flight limit's "
              "measure)", registry=self.registry).set_function(lambda: scorer.in_flight)


def serve(recognizer: Recognizer, host: str, port: int, max_bytes: int, token: str | None = None,
          insecure: bool = False, max_audio_seconds: float = DEFAULT_MAX_AUDIO_S,
          max_inflight_seconds: float = DEFAULT_MAX_INFLIGHT_S) -> None:
    import uvicorn

    check_access(host, token, insecure)
    uvicorn.run(create_app(recognizer, max_bytes, token, max_audio_seconds, max_inflight_seconds), host=host,
                port=port, log_level="info")
