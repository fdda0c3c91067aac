"""gmptl benchmarks: every figure a ratio (or a rate) measured side by side in one run.

    python bench/run.py --ravdess ../shared/data/ravdess [--only NAME,...] [--out bench/results.json]

Results are merged into ``--out`` as they arrive (an interrupted run keeps what
it measured; rerun with ``--only`` for the rest), each with the command, commit,
machine and date. See bench/README.md for what each figure means.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gmptl.audio import load_audio  # noqa: E402
from gmptl.corpora import load_corpus  # noqa: E402
from gmptl.provenance import provenance  # noqa: E402
from gmptl.data import AudioSet, bucket_batches, default_workers, padding_fraction  # noqa: E402
from gmptl.encoders import build_encoder  # noqa: E402
from gmptl.model import UtteranceClassifier  # noqa: E402
from gmptl.modeldir import save_model_dir  # noqa: E402
from gmptl.checkpoints import atomic_save  # noqa: E402
from gmptl.utils import cpu_has_bf16  # noqa: E402

LABELS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls (after the first, which warms caches)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def model_dir(encoder_spec: str, out: Path) -> Path:
    """A model directory around ``encoder_spec`` with a fresh head (speed does not depend on training)."""
    torch.manual_seed(0)
    model = UtteranceClassifier(build_encoder(encoder_spec), len(LABELS), -1, gender=False)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save(model.state_dict(), out / "weights.safetensors")
    return save_model_dir(out / "model", model, LABELS, out / "weights.safetensors", {"config": {}})


def clips(ravdess: Path, n: int, seconds: float = 4.0) -> list[np.ndarray]:
    """``n`` RAVDESS utterances cut or zero-padded to ``seconds``."""
    files = sorted(ravdess.glob("Actor_*/*.flac"))[:: max(1, 1440 // n)][:n]
    size = int(seconds * 16000)
    return [np.pad(w[:size], (0, max(0, size - len(w)))) for w in map(load_audio, files)]


def hf_pipeline(model, feature_extractor):
    from transformers import pipeline

    return pipeline("audio-classification", model=model, feature_extractor=feature_extractor, device=-1)


def bench_predict_vs_hf_whisper(args, work: Path) -> dict:
    """gmptl on 4 s clips vs transformers' audio-classification pipeline, the same Whisper tiny.en encoder."""
    import gmptl
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    rec = gmptl.load(model_dir("whisper-tiny.en", work / "whisper"))
    encoder = build_encoder("whisper-tiny.en").model
    config = WhisperConfig(**{**encoder.config.to_dict(), "num_labels": len(LABELS)})
    hf = WhisperForAudioClassification(config).eval()
    hf.encoder.load_state_dict(encoder.state_dict())
    pipe = hf_pipeline(hf, WhisperFeatureExtractor(feature_size=config.num_mel_bins))
    waves = clips(args.ravdess, args.clips)
    ours = timed(lambda: rec.predict_waves(waves, batch_size=16))
    theirs = timed(lambda: pipe([{"raw": w, "sampling_rate": 16000} for w in waves], batch_size=16))
    return {"clips": len(waves), "seconds_each": 4.0, "gmptl_s": round(ours, 3), "hf_pipeline_s": round(theirs, 3),
            "ratio": round(theirs / ours, 2), "target": ">= 5"}


def bench_predict_vs_hf_hubert(args, work: Path) -> dict:
    """The HuBERT-base architecture (random weights) in gmptl vs transformers' pipeline."""
    import gmptl
    from transformers import HubertConfig, HubertForSequenceClassification, Wav2Vec2FeatureExtractor

    from gmptl.export import export_onnx

    model = model_dir("random:hubert-base", work / "hubert")
    export_onnx(model, model / "model.onnx")
    hf = HubertForSequenceClassification(HubertConfig(num_labels=len(LABELS))).eval()
    pipe = hf_pipeline(hf, Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False))
    waves = clips(args.ravdess, args.clips)
    theirs = timed(lambda: pipe([{"raw": w, "sampling_rate": 16000} for w in waves], batch_size=16))
    out = {"clips": len(waves), "hf_pipeline_s": round(theirs, 3), "target": ">= 1.0",
           "note": "gmptl runs its BiLSTM + LinearP head, the pipeline a mean-pool + linear head"}
    for name, backend, precision in predict_backends():
        rec = gmptl.load(model, backend=backend, precision=precision)
        ours = timed(lambda: rec.predict_waves(waves, batch_size=16))
        out[f"{name}_backend"] = {"gmptl_s": round(ours, 3), "ratio": round(theirs / ours, 2)}
    out["ratio"] = max(out[f"{name}_backend"]["ratio"] for name, _, _ in predict_backends())
    return out


def predict_backends() -> list[tuple[str, str, str]]:
    """(name, backend, precision) of the inference benches; bf16 only where the CPU has it natively
    (gmptl refuses it elsewhere)."""
    rows = [("torch", "torch", "fp32"), ("torch_bf16", "torch", "bf16"), ("onnx", "onnx", "fp32")]
    return [r for r in rows if r[2] == "fp32" or cpu_has_bf16()]


def bench_realtime_x(args, work: Path) -> dict:
    """gmptl predict throughput, decoding included: seconds of audio per second of wall time."""
    import gmptl
    from gmptl.export import export_onnx

    model = model_dir("whisper-tiny.en", work / "whisper")
    export_onnx(model, model / "model.onnx")
    files = sorted(args.ravdess.glob("Actor_*/*.flac"))[:: max(1, 1440 // (4 * args.clips))]
    out = {"files": len(files), "threads": torch.get_num_threads(), "target": ">= 100"}
    for name, backend, precision in predict_backends():
        rec = gmptl.load(model, backend=backend, precision=precision)

        def run():
            waves = [load_audio(f) for f in files]
            rec.predict_waves(waves, batch_size=16)
            return sum(len(w) for w in waves) / 16000

        audio = run()
        seconds = timed(run)
        out[f"{name}_backend"] = {"audio_s": round(audio, 1), "wall_s": round(seconds, 2),
                                  "realtime_x": round(audio / seconds, 1)}
    out["realtime_x"] = max(out[f"{name}_backend"]["realtime_x"] for name, _, _ in predict_backends())
    return out


def ravdess_frames(args, work: Path) -> np.ndarray:
    """Layer -3 of the pretrained Whisper tiny.en for every RAVDESS utterance (float16 memmap, cached)."""
    from gmptl.pseudo_labels import dump_features

    path = work / "frames" / "train.features.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        corpus = load_corpus("ravdess", args.ravdess)
        data = AudioSet(corpus.utterances, corpus.labels, "ravdess")
        dump_features(build_encoder("whisper-tiny.en"), data, -3, path.parent, "train")
    return np.load(path, mmap_mode="r")


def bench_kmeans_vs_sklearn(args, work: Path) -> dict:
    """faiss k-means as gmptl runs it, both schedules (``pseudo.kmeans``: full, fast), vs scikit-learn
    MiniBatchKMeans on the same real frames. Either side's inertia moves by a few tenths of a percent
    with the seed, so the fast schedule and sklearn run with seeds 0..n-1: ``speed`` = sklearn's total
    time / gmptl's, ``inertia`` = gmptl's mean / sklearn's mean, each on all frames. The top-level
    figures are the fast schedule's; ``full`` (the default, 5x slower) runs once, seed 0."""
    from sklearn.cluster import MiniBatchKMeans

    from gmptl.pseudo_labels import assign, fit_kmeans, schedule

    frames = np.ascontiguousarray(ravdess_frames(args, work), dtype=np.float32)
    out = {"frames": int(len(frames)), "dims": int(frames.shape[1]), "seeds": args.kmeans_seeds}

    def timed_fit(fit):
        start = time.perf_counter()
        centroids = fit()
        return time.perf_counter() - start, assign(frames, centroids.astype(np.float32))[1]

    for k in args.scales:
        sk = [timed_fit(lambda: MiniBatchKMeans(k, random_state=seed, n_init=1, batch_size=4096).fit(frames)
                        .cluster_centers_) for seed in range(args.kmeans_seeds)]
        fast = [timed_fit(lambda: fit_kmeans(frames, k, len(frames), seed=seed, backend="faiss",
                                             **schedule("fast", k, 25, len(frames))))
                for seed in range(args.kmeans_seeds)]
        full_s, full_inertia = timed_fit(lambda: fit_kmeans(frames, k, len(frames), seed=0, backend="faiss",
                                                            **schedule("full", k, 25, len(frames))))
        sk_s, sk_inertia = sum(t for t, _ in sk), np.mean([i for _, i in sk])
        out[str(k)] = {"speed": round(sk_s / sum(t for t, _ in fast), 2),
                       "inertia": round(float(np.mean([i for _, i in fast]) / sk_inertia), 4),
                       "inertia_each": [round(float(i / sk_inertia), 4) for _, i in fast],
                       "sklearn_inertia_each": [round(float(i / sk_inertia), 4) for _, i in sk],
                       "fast_s": round(sum(t for t, _ in fast), 1), "sklearn_s": round(sk_s, 1),
                       "full": {"speed": round(sk_s / len(sk) / full_s, 2),
                                "inertia": round(float(full_inertia / sk_inertia), 4), "faiss_s": round(full_s, 1)}}
        print(f"  k={k}: {out[str(k)]}", flush=True)
    out["target"] = "speed >= 2 and inertia <= 1.0 at every k"
    return out


def train_steps(args, data: AudioSet, groups: list[np.ndarray], stage: str, steps: int) -> float:
    """Training throughput (audio seconds per second) of ``steps`` optimizer steps of one stage."""
    from gmptl import losses
    from gmptl.data import make_batch
    from gmptl.masking import span_mask
    from gmptl.model import MaskedPredictor

    torch.manual_seed(0)
    encoder = build_encoder("whisper-tiny.en")
    encoder.freeze_frontend(True)
    if stage == "stage2":
        model = MaskedPredictor(encoder, [64, 512, 4096])
    else:
        model = UtteranceClassifier(encoder, len(LABELS), -1, gender=stage == "stage1",
                                    classifier="amsoftmax" if stage == "stage3" else "linear")
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rng = np.random.default_rng(0)
    audio, start = 0.0, time.perf_counter()
    for idx in groups[:steps]:
        batch = make_batch(data, idx, 4 * 16000, rng)
        if stage == "stage2":
            frames = encoder.frame_lengths(batch.lengths)
            mask = span_mask(frames, 0.8, 10, rng=rng)
            targets = [torch.randint(0, k, mask.shape) for k in (64, 512, 4096)]
            logits, _ = model(batch.waves, batch.lengths, mask)
            loss = losses.masked_prediction_loss(logits, targets, mask, mask | True, 0.0)
        else:
            out = model(batch.waves, batch.lengths)
            loss = (losses.multitask_loss(out["emotion"], out["gender"], batch.emotion, batch.gender, 0.9)
                    if stage == "stage1" else losses.am_softmax_loss(out["emotion"], batch.emotion, 30, 0.2))
        loss.backward()
        opt.step()
        opt.zero_grad()
        audio += float(batch.lengths.sum()) / 16000
    return audio / (time.perf_counter() - start)


def ravdess_set(args, n: int) -> AudioSet:
    corpus = load_corpus("ravdess", args.ravdess)
    return AudioSet(corpus.utterances[:: max(1, len(corpus.utterances) // n)][:n], corpus.labels, "bench")


def bench_padding_fraction(args, work: Path) -> dict:
    """Padded share of training batches: length buckets vs random batches, and training throughput of each."""
    data = ravdess_set(args, 1440)
    crop = np.minimum(data.lengths, 4 * 16000)
    rng = np.random.default_rng(0)
    buckets = bucket_batches(crop, 16, rng)
    shuffled = rng.permutation(len(crop))
    random_groups = [shuffled[i:i + 16] for i in range(0, len(shuffled), 16)]
    steps = args.train_steps
    return {"micro_batch": 16, "bucketed": round(padding_fraction(crop, buckets), 4),
            "random": round(padding_fraction(crop, random_groups), 4), "target": "bucketed <= 0.10",
            "train_audio_s_per_s": {"bucketed": round(train_steps(args, data, buckets, "stage1", steps), 1),
                                    "random": round(train_steps(args, data, random_groups, "stage1", steps), 1)}}


def bench_train_audio_s_per_s(args, work: Path) -> dict:
    """Training throughput of each stage on this machine (Whisper tiny.en, micro-batches of 16, 4 s crops)."""
    data = ravdess_set(args, 16 * args.train_steps)
    groups = bucket_batches(np.minimum(data.lengths, 4 * 16000), 16, np.random.default_rng(0))
    return {stage: round(train_steps(args, data, groups, stage, args.train_steps), 1)
            for stage in ("stage1", "stage2", "stage3")}


def bench_long_audio(args, work: Path) -> dict:
    """An hour-long recording through `gmptl predict --timeline`: peak memory and seconds per audio hour."""
    path = work / "hour.flac"
    if not path.exists():
        pieces = [load_audio(f) for f in sorted(args.ravdess.glob("Actor_0[12]/*.flac"))]
        with sf.SoundFile(path, "w", 16000, 1, format="FLAC") as f:  # written block by block
            written, i = 0, 0
            while written < 3600 * 16000:
                w = pieces[i % len(pieces)][: 3600 * 16000 - written]
                f.write(w)
                written, i = written + len(w), i + 1
    model = model_dir("whisper-tiny.en", work / "whisper")
    # The command runs in a fresh process that reports its own peak resident memory: VmHWM, since
    # Linux's ru_maxrss of a forked-then-exec'd child starts from the (large) parent's peak.
    peak = ("import sys; from gmptl.__main__ import main; code = main(sys.argv[1:]); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print('PEAK_KB', hwm, file=sys.stderr)")
    cmd = [sys.executable, "-c", peak, "predict", str(model), str(path), "--timeline", "--window", "2",
           "--hop", "1", "--out", str(work / "hour.csv")]
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    peak_kb = int(done.stderr.split("PEAK_KB")[-1].split()[0])
    return {"audio_h": 1.0, "window_s": 2, "hop_s": 1, "s_per_audio_h": round(seconds, 1),
            "peak_rss_gb": round(peak_kb / 2**20, 3), "target": "peak_rss_gb <= 1.5"}


SCALE_PROBE = """
import json, sys, threading, time
import numpy as np
from gmptl.pseudo_labels import assign, fit_kmeans, schedule

def status(key):
    return int([l for l in open("/proc/self/status") if l.startswith(key)][0].split()[1])

peak = [0]
def watch():
    while True:
        peak[0] = max(peak[0], status("RssAnon:"))
        time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
feats = np.load(sys.argv[1], mmap_mode="r")
k = int(sys.argv[2])
start = time.perf_counter()
c = fit_kmeans(feats, k, len(feats), seed=0, backend="faiss", **schedule("fast", k, 25, len(feats)))
fit_s = time.perf_counter() - start
labels, _ = assign(feats, c)
assign_s = time.perf_counter() - start - fit_s
time.sleep(0.1)
print(json.dumps({"peak_anon_kb": peak[0], "vmhwm_kb": status("VmHWM:"), "fit_s": fit_s, "assign_s": assign_s,
                  "clusters_used": int(len(np.unique(labels)))}))
"""


def bench_kmeans_at_scale(args, work: Path) -> dict:
    """Pseudo-labels for a corpus of IEMOCAP's size: 1.25M frames x 768 (HuBERT-base) in a float16
    memmap (synthetic: a mixture of 512 Gaussians), fast k-means (k = 512) and streamed assignment
    in a fresh process. ``peak_anon_gb`` is the process's own memory at its peak (sampled every
    50 ms); ``vmhwm_gb`` also counts the dump's pages mapped from the page cache, which the kernel
    reclaims at will."""
    frames, dims, k = 1_250_000, 768, 512
    path = work / "scale" / "train.features.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((k, dims)).astype(np.float32) * 2
        mm = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float16, shape=(frames, dims))
        for s in range(0, frames, 50_000):
            n = min(50_000, frames - s)
            mm[s:s + n] = centres[rng.integers(0, k, n)] + rng.standard_normal((n, dims), dtype=np.float32)
        mm.flush()
        del mm
        path.with_suffix(".tmp.npy").replace(path)
    done = subprocess.run([sys.executable, "-c", SCALE_PROBE, str(path), str(k)], check=True, capture_output=True,
                          text=True, cwd=REPO)
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    gb = lambda kb: round(kb / 2**20, 2)  # noqa: E731
    return {"frames": frames, "dims": dims, "k": k, "dump_gb": round(frames * dims * 2 / 2**30, 2),
            "float32_gb": round(frames * dims * 4 / 2**30, 2), "peak_anon_gb": gb(probe["peak_anon_kb"]),
            "vmhwm_gb": gb(probe["vmhwm_kb"]), "fit_s": round(probe["fit_s"], 1),
            "assign_s": round(probe["assign_s"], 1), "clusters_used": probe["clusters_used"],
            "target": "the frames never in memory at once: peak_anon_gb well under float32_gb"}


def bench_ddp_gloo_matches(args, work: Path) -> dict:
    """2 gloo processes vs 1 on a generated corpus: the test in tests/test_ddp.py."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_ddp.py"], cwd=REPO,
                          capture_output=True, text=True)
    return {"matches": done.returncode == 0, "detail": done.stdout.strip().splitlines()[-1]}


def bench_bilstm_pool(args, work: Path) -> dict:
    """The BiLSTM + mean pooling head before and after pooling the backward outputs in reversed
    order (no gather back to time order): inference on (16, 200, 384), Whisper tiny.en's frames."""
    from gmptl.encoders.base import valid_mask
    from gmptl.heads import BiLSTMPool, reverse_index

    def before(pool, frames, lengths):  # the implementation up to commit e1c58fe..f0fe38c
        valid = valid_mask(lengths, frames.shape[1])
        frames = frames * valid[..., None].to(frames.dtype)
        reverse = reverse_index(lengths, frames.shape[1])[..., None]
        forward, _ = pool.lstm_fwd(frames)
        backward, _ = pool.lstm_bwd(frames.gather(1, reverse.expand_as(frames)))
        backward = backward.gather(1, reverse.expand_as(backward))
        out = torch.cat([forward, backward], -1) * valid[..., None].to(frames.dtype)
        return out.sum(1) / lengths.clamp(min=1)[:, None].to(out.dtype)

    torch.manual_seed(0)
    pool = BiLSTMPool(384, 256).eval()
    frames, lengths = torch.randn(16, 200, 384), torch.randint(150, 201, (16,))
    with torch.no_grad():
        diff = float((before(pool, frames, lengths) - pool(frames, lengths)).abs().max())
        old = timed(lambda: [before(pool, frames, lengths) for _ in range(10)], repeat=3)
        new = timed(lambda: [pool(frames, lengths) for _ in range(10)], repeat=3)
    return {"before_s": round(old, 3), "after_s": round(new, 3), "speedup": round(old / new, 3), "max_abs_diff": diff}


def bench_cuda_paths(args, work: Path) -> dict:
    """One stage-1 training step (encoder + BiLSTM head, multi-task loss) on the GPU: fp32 vs bf16 autocast,
    gradient checkpointing off vs on, front end frozen vs trained; step time, peak memory, gradient agreement."""
    if not torch.cuda.is_available():
        raise SystemExit("bench: cuda_paths needs a CUDA device")
    return training_step_variants(args, torch.device("cuda"), ("whisper-tiny.en", "random:hubert-base"),
                                  [("fp32", "fp32", False, True), ("fp32+ckpt", "fp32", True, True),
                                   ("bf16", "bf16", False, True), ("bf16+ckpt", "bf16", True, True),
                                   ("bf16+frontend", "bf16", False, False)], args.cuda_batch)


def bench_kmeans_rerun(args, work: Path) -> dict:
    """The torch k-means of ``pseudo.backend=torch`` run twice on the GPU from one start, on the real frames:
    with its cluster sums added in a fixed order (``cluster_sums``, what gmptl runs) and with plain
    ``index_add_`` (atomics, what it ran until NOTES item 20 saw two runs drift apart). Per scale: whether the
    two runs' centroids are bitwise equal, and how many frames the two runs label differently."""
    if not torch.cuda.is_available():
        raise SystemExit("bench: kmeans_rerun needs a CUDA device")
    frames = np.ascontiguousarray(ravdess_frames(args, work), dtype=np.float32)
    out = {"frames": int(len(frames)), "iterations": 25}
    for k in args.scales:
        out[str(k)] = kmeans_twice(frames, k, "cuda")
        print(f"  k={k}: {out[str(k)]}", flush=True)
    out["target"] = "fixed_order identical at every k"
    return out


def kmeans_twice(frames: np.ndarray, k: int, device: str, iterations: int = 25) -> dict:
    """Two torch k-means runs from one start, with each way of summing the clusters: are they the same?"""
    import gmptl.pseudo_labels as pl

    def atomic(x, idx, k):
        return torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, idx, x)

    fixed, start, out = pl.cluster_sums, pl.seed_centroids(frames, k, 0, device), {}
    for name, sums in (("fixed_order", fixed), ("index_add", atomic)):
        pl.cluster_sums = sums
        try:
            a, b = (pl.torch_kmeans(frames, k, iterations, start, device) for _ in range(2))
        finally:
            pl.cluster_sums = fixed
        la, lb = pl.assign(frames, a, device=device)[0], pl.assign(frames, b, device=device)[0]
        out[name] = {"identical": bool(np.array_equal(a, b)), "max_abs_diff": float(np.abs(a - b).max()),
                     "frames_labelled_differently": int((la != lb).sum())}
    return out


def bench_cpu_bf16(args, work: Path) -> dict:
    """The same stage-1 step on this CPU, Whisper tiny.en, 16 clips (train.micro_batch's default): fp32 vs bf16
    autocast, at one thread (as each `--jobs` worker runs) and at all cores."""
    if not cpu_has_bf16():
        raise SystemExit("bench: cpu_bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX)")
    variants = [("fp32", "fp32", False, True), ("bf16", "bf16", False, True)]
    threads = torch.get_num_threads()
    out = {}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        out[f"threads_{n}"] = training_step_variants(args, torch.device("cpu"), ("whisper-tiny.en",), variants, 16)
    torch.set_num_threads(threads)
    return out


def training_step_variants(args, dev: torch.device, specs, variants, batch: int) -> dict:
    """Per encoder spec, per (name, precision, checkpointing, frozen front end): step time, peak GPU memory,
    and gradients against the first variant's (max relative difference, cosine)."""
    from gmptl.losses import multitask_loss
    from gmptl.utils import autocast

    waves = torch.from_numpy(np.stack(clips(args.ravdess, batch))).to(dev)
    lengths = torch.full((batch,), waves.shape[1], device=dev)
    gen = torch.Generator().manual_seed(0)
    emotion = torch.randint(0, len(LABELS), (batch,), generator=gen).to(dev)
    gender = torch.randint(0, 2, (batch,), generator=gen).to(dev)
    out = {"batch": batch, "clip_s": waves.shape[1] / 16000}
    for spec in specs:
        torch.manual_seed(0)
        model = UtteranceClassifier(build_encoder(spec), len(LABELS), -1, gender=True).to(dev).train()
        for m in model.modules():  # dropout off: every variant must see the same network
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
            if isinstance(getattr(m, "dropout", None), float):
                m.dropout = 0.0

        def step(model, precision: str) -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            with autocast(dev, precision):
                o = model(waves, lengths)
                loss = multitask_loss(o["emotion"].float(), o["gender"].float(), emotion, gender, 0.9)
            loss.backward()
            return torch.cat([p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None])

        rows, grads = {}, {}
        for name, precision, ckpt, frozen in variants:
            model.encoder.checkpointing = ckpt
            model.encoder.freeze_frontend(frozen)
            step(model, precision)
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for _ in range(args.cuda_steps):
                g = step(model, precision)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - start) / args.cuda_steps * 1000
            peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
            rows[name] = {"step_ms": round(ms, 1), "peak_gb": None if peak is None else round(peak, 2),
                          "audio_s_per_s": round(batch * out["clip_s"] / ms * 1000)}
            grads[name] = g
        first, ref = variants[0][0], grads[variants[0][0]]
        agree = {f"{name}_vs_{first}": {"max_rel": float((grads[name] - ref).abs().max() / ref.abs().max()),
                                        "cosine": float(torch.nn.functional.cosine_similarity(grads[name], ref, 0))}
                 for name, *_ in variants[1:] if not name.endswith("frontend")}  # more parameters: not comparable
        out[spec] = {"steps": rows, "gradients": agree,
                     "bf16_speedup": round(rows["fp32"]["step_ms"] / rows["bf16"]["step_ms"], 2)}
        if "bf16+ckpt" in rows and dev.type == "cuda":
            out[spec]["ckpt_memory_ratio"] = round(rows["bf16+ckpt"]["peak_gb"] / rows["bf16"]["peak_gb"], 2)
        del model
    return out


def tree_pss_kb(pid: int) -> int:
    """Proportional set size of a process and its descendants (DataLoader workers share pages with it)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(next(l for l in open(f"/proc/{p}/smaps_rollup") if l.startswith("Pss:")).split()[1])
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except (OSError, StopIteration):
            continue
    return total


def bench_train_memory(args, work: Path) -> dict:
    """One epoch of stage 1 (tiny random encoder, ``gmptl train --fold 1``, configs/tiny.yaml's 1 s crops) on
    a generated corpus of 20 hours: peak memory of the process and its workers with the default data settings (decoded on
    demand) beside every split held in memory, as gmptl did before (``data.cache_mb`` very large)."""
    root = work / "train_memory"
    manifest = root / "manifest.csv"
    clips, seconds = 10_300, 7.0  # 20.0 h
    if not manifest.exists():
        root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        bank = [(0.1 * rng.standard_normal(int(seconds * 16000)) * np.linspace(0.2, 1, int(seconds * 16000)))
                .astype(np.float32) for _ in range(64)]
        rows = ["path,emotion,gender,speaker,fold"]
        for i in range(clips):
            s = i % 20
            sf.write(root / f"{i}.wav", bank[i % 64], 16000, subtype="PCM_16")
            rows.append(f"{i}.wav,{('neutral', 'happy', 'sad', 'angry')[i % 4]},{'fm'[s % 2]},spk{s},{s % 5 + 1}")
        (root / "manifest.tmp").write_text("\n".join(rows) + "\n")
        (root / "manifest.tmp").replace(manifest)
    out = {"audio_h": round(clips * seconds / 3600, 2)}
    for name, extra in (("on_demand", []), ("in_memory", ["--set", "data.cache_mb=1000000"])):
        cmd = [sys.executable, "-m", "gmptl", "train", "--config", str(REPO / "configs" / "tiny.yaml"), "--fold", "1",
               "--set", f"data.root={manifest}", "--set", "system=finetune", "--set", "stage1.epochs=1",
               *extra,
               "--out", str(work / f"train_memory_{name}")]
        shutil.rmtree(work / f"train_memory_{name}", ignore_errors=True)
        start, peak = time.perf_counter(), 0
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            peak = max(peak, tree_pss_kb(proc.pid))
            time.sleep(1.0)  # reading smaps costs CPU: once a second
        if proc.returncode:
            raise RuntimeError(f"{name}: {proc.stderr.read()[-2000:]}")
        out[name] = {"peak_gb": round(peak / 2**20, 3), "wall_s": round(time.perf_counter() - start, 1)}
    out.update(ratio=round(out["in_memory"]["peak_gb"] / out["on_demand"]["peak_gb"], 2),
               target="on_demand peak_gb <= 1.5 (peak PSS of the process and its DataLoader workers)")
    return out


THROUGHPUT = """
import json, sys, torch
from pathlib import Path
from gmptl.config import load_config
from gmptl.corpora import load_corpus
from gmptl.data import AudioSet
from gmptl.pipeline import classifier, new_encoder, stage1_loss
from gmptl.train import Stage, fit, training_batches
ravdess, config, work, mode = sys.argv[1:5]
corpus = load_corpus("ravdess", ravdess)
utts = [u for u in corpus.utterances if u.speaker in ("Actor_01", "Actor_02")]
cfg = load_config(config, ["stage1.epochs=2", "train.patience=5"])
data = AudioSet(utts, corpus.labels, mode, **({} if mode == "baseline" else {"cache_mb": 0 if mode == "on_demand" else 512}))
torch.manual_seed(0)
model = classifier(cfg, new_encoder(cfg), len(corpus.labels), gender=True, kind="linear")
summary = fit(Stage("stage1", model, stage1_loss(0.9), lambda m: {"score": 0.0}, 2),
              training_batches(data, cfg.train, 4.0), cfg.train, Path(work))
print(json.dumps([r["train_audio_s_per_s"] for r in summary["history"]]))
"""


def bench_train_throughput(args, work: Path) -> dict:
    """RAVDESS training throughput through ``train.fit`` (Whisper tiny.en, stage 1, 4 s crops, 2 actors, two
    epochs, the second's figure; the median of 3 interleaved rounds), each in a fresh process: the code before DataLoader workers (``--baseline``,
    checked out in a worktree), today's default (a corpus this size held in memory), and decoded on demand by
    ``train.workers`` DataLoader workers."""
    baseline = work / f"gmptl-{args.baseline}"
    if not baseline.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=REPO, check=True,
                       capture_output=True)
    runs = {"baseline": [], "in_memory": [], "on_demand": []}
    for _ in range(3):  # interleaved rounds: a machine that slows down slows every mode alike
        for mode, tree in (("baseline", baseline), ("in_memory", REPO), ("on_demand", REPO)):
            shutil.rmtree(work / f"throughput_{mode}", ignore_errors=True)
            done = subprocess.run([sys.executable, "-c", THROUGHPUT, str(args.ravdess), str(REPO / "configs" /
                                   "ravdess_whisper_tiny.yaml"), str(work / f"throughput_{mode}"), mode],
                                  cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{mode}: {done.stderr[-2000:]}")
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1])[-1])
    out = {"baseline_commit": args.baseline, "rounds": runs, **{m: float(np.median(v)) for m, v in runs.items()}}
    out.update(ratio=round(out["in_memory"] / out["baseline"], 2), on_demand_ratio=round(out["on_demand"] /
               out["baseline"], 2), workers=default_workers(),
               target="in_memory (the default for a corpus this size) / baseline >= 1 within run-to-run noise")
    return out


HEALTH_WATCH = """
import sys, time, httpx
begin = time.perf_counter()
while True:
    start = time.perf_counter()
    try:
        ok = httpx.get(sys.argv[1] + "/v1/health", timeout=30).status_code == 200
    except httpx.TransportError:
        ok = False
    print(round(start - begin, 2), time.perf_counter() - start if ok else -1.0, flush=True)
    time.sleep(0.25)
"""


def start_server(model: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """``gmptl serve MODEL`` on a free loopback port, once its health check answers."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gmptl", "serve", str(model), "--port", str(port), *options],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gmptl serve did not start: {proc.stderr.read()[-2000:]}")


def peak_rss_gb(pid: int) -> float:
    """A live process's peak resident memory (VmHWM)."""
    return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")).split()[1]) / 2**20


def bench_service_vs_batch(args, work: Path) -> dict:
    """Audio seconds per second of ``gmptl serve`` at concurrency 16 over real HTTP on loopback (raw WAV
    bodies) against ``gmptl predict``'s loop (``Recognizer.predict_files``) on the same RAVDESS files, each in
    a process of its own with the model loaded before the clock starts; 3 interleaved rounds, medians."""
    import httpx

    model = model_dir("whisper-tiny.en", work / "whisper")
    files = sorted(args.ravdess.glob("Actor_*/*.flac"))[:: max(1, 1440 // (2 * args.clips))]
    bodies = [f.read_bytes() for f in files]
    audio = sum(sf.info(f).duration for f in files)
    batch_code = ("import sys, time, gmptl; rec = gmptl.load(sys.argv[1]); files = sys.argv[2:]; "
                  "start = time.perf_counter(); out = list(rec.predict_files(files)); "
                  "print(time.perf_counter() - start); print(*[p.label for p in out])")
    runs, labels = {"batch": [], "service": []}, {}
    for _ in range(3):  # interleaved: a machine that slows down slows both alike
        done = subprocess.run([sys.executable, "-c", batch_code, str(model), *map(str, files)], cwd=REPO,
                              check=True, capture_output=True, text=True).stdout.splitlines()
        runs["batch"].append(audio / float(done[0]))
        labels["batch"] = done[1].split()
        proc, url = start_server(model)
        try:
            with httpx.Client(timeout=300) as client, ThreadPoolExecutor(16) as pool:
                client.post(f"{url}/v1/predict", content=bodies[0])  # warm
                start = time.perf_counter()
                answers = list(pool.map(lambda b: client.post(f"{url}/v1/predict", content=b), bodies))
                runs["service"].append(audio / (time.perf_counter() - start))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if bad := [a.status_code for a in answers if a.status_code != 200]:
            raise RuntimeError(f"service answered {bad}")
        labels["service"] = [a.json()["label"] for a in answers]
    out = {"files": len(files), "audio_s": round(audio, 1), "concurrency": 16, "rounds": runs,
           **{f"{k}_audio_s_per_s": round(float(np.median(v)), 1) for k, v in runs.items()},
           "same_labels": labels["batch"] == labels["service"]}
    out.update(ratio=round(out["service_audio_s_per_s"] / out["batch_audio_s_per_s"], 2),
               target="service / batch >= 0.9")
    return out


def long_wav(args, path: Path, minutes: float) -> Path:
    """A 16-bit mono 16 kHz WAV of RAVDESS speech, ``minutes`` long, written block by block."""
    if not path.exists():
        pieces = [load_audio(f) for f in sorted(args.ravdess.glob("Actor_0[34]/*.flac"))]
        total, written, i = int(minutes * 60 * 16000), 0, 0
        with sf.SoundFile(path.with_suffix(".tmp"), "w", 16000, 1, format="WAV", subtype="PCM_16") as f:
            while written < total:
                w = pieces[i % len(pieces)][: total - written]
                f.write(w)
                written, i = written + len(w), i + 1
        path.with_suffix(".tmp").replace(path)
    return path


def bench_service_overload(args, work: Path) -> dict:
    """64 concurrent uploads of a 40 MB WAV (21 minutes of speech) to ``gmptl serve`` with its default limits
    (Whisper tiny.en): every answer's status, how many got their full result, the server's peak resident
    memory and the slowest ``/v1/health`` (polled every 0.25 s by a process of its own) throughout."""
    import httpx

    model = model_dir("whisper-tiny.en", work / "whisper")
    wav = long_wav(args, work / "meeting.wav", 21.0)
    body, seconds = wav.read_bytes(), sf.info(wav).duration
    proc, url = start_server(model)
    watcher = subprocess.Popen([sys.executable, "-c", HEALTH_WATCH, url], stdout=subprocess.PIPE, text=True)
    start = time.perf_counter()

    def post(_):
        try:
            r = httpx.post(f"{url}/v1/predict", content=body, timeout=3600)
            return r.status_code, r.headers.get("retry-after"), r.json().get("duration"), time.perf_counter() - start
        except httpx.HTTPError as e:  # a dropped request: the benchmark fails on it
            return f"dropped ({type(e).__name__})", None, None, time.perf_counter() - start

    try:
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(post, range(64)))
        peak = peak_rss_gb(proc.pid)
    finally:
        watcher.terminate()
        proc.terminate()
        proc.wait(timeout=30)
    checks = [tuple(map(float, line.split())) for line in watcher.communicate(timeout=30)[0].splitlines()]
    health = [h for _, h in checks]
    codes = [a[0] for a in answers]
    full = [a for a in answers if a[0] == 200 and abs(a[2] - seconds) < 0.01]
    return {"uploads": 64, "upload_mb": round(len(body) / 1e6, 1), "audio_s": round(seconds, 1),
            "answers": {str(c): codes.count(c) for c in sorted(set(codes), key=str)}, "full_results": len(full),
            "slowest_200_s": round(max(a[3] for a in full), 1) if full else None,
            "retry_after_s": sorted({int(a[1]) for a in answers if a[1]}),
            "peak_rss_gb": round(peak, 3), "health_checks": len(health),
            "health_max_s": round(max(health), 3) if health else None, "health_failed": sum(h < 0 for h in health),
            "health_p99_s": round(float(np.percentile(health, 99)), 3) if health else None,
            "health_over_1s_at_s": [t for t, h in checks if h > 1.0],
            "defaults": {"max_upload_mb": 50, "max_audio_seconds": 3600, "max_inflight_seconds": 7200},
            "target": "all answered 200/503/413, >= 4 full results, peak_rss_gb <= 2.5, health_max_s <= 1"}


BENCHES = {name[len("bench_"):]: fn for name, fn in globals().items() if name.startswith("bench_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ravdess", type=Path, default=REPO.parent / "shared" / "data" / "ravdess")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    parser.add_argument("--clips", type=int, default=64, help="clips for the predict benchmarks")
    parser.add_argument("--train-steps", type=int, default=8, help="micro-batches per training measurement")
    parser.add_argument("--kmeans-seeds", type=int, default=3, help="seeds per side in kmeans_vs_sklearn")
    parser.add_argument("--cuda-batch", type=int, default=32, help="clips of 4 s per step in cuda_paths")
    parser.add_argument("--cuda-steps", type=int, default=5, help="timed steps per variant in cuda_paths, cpu_bf16")
    parser.add_argument("--baseline", default="becd5a6", help="commit before DataLoader workers (train_throughput)")
    parser.add_argument("--scales", type=lambda s: [int(k) for k in s.split(",")], default=[64, 512, 4096])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gmptl.provenance import code_version
    code_version()  # pinned now: the results record the code the run started with
    if not args.ravdess.is_dir():
        sys.exit(f"bench: {args.ravdess}: no RAVDESS directory (--ravdess DIR)")
    gpu_only = set() if torch.cuda.is_available() else {"cuda_paths", "kmeans_rerun"}  # measured where a GPU is lent
    names = args.only.split(",") if args.only else [n for n in BENCHES if n not in gpu_only]
    if bad := [n for n in names if n not in BENCHES]:
        sys.exit(f"bench: unknown {', '.join(bad)} (known: {', '.join(BENCHES)})")
    work = args.work or Path(tempfile.mkdtemp(prefix="gmptl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in names:
        print(f"{name} ...", flush=True)
        start = time.perf_counter()
        figure = BENCHES[name](args, work)
        figure.update(wall_s=round(time.perf_counter() - start, 1),
                      command=" ".join(["python", "bench/run.py", *sys.argv[1:]]), **provenance())
        results[name] = figure
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(args.out)
        print(f"{name}: {json.dumps({k: v for k, v in figure.items() if k not in ('command', 'python')})}", flush=True)


if __name__ == "__main__":
    main()
