"""Multi-scale frame pseudo-labels (GMPs): dump a layer -> k-means per scale -> assign.

As in fairseq's ``simple_kmeans``, the steps are joined only by files, so each can be rerun alone.
Layout of a pseudo-label directory::

    {split}.ids.txt            utterance ids, one per line, in dump order
    {split}.lengths.npy        (U,) int64 frames per utterance
    {split}.features.npy       (N, D) float16 memmap, the frames of all utterances concatenated
    km{K}.centroids.npy        (K, D) float32, fitted on the 'train' split only
    {split}.km{K}.labels.npy   (N,) int32 nearest centroid of every frame
    report.json                per scale: inertia, clusters used, NMI / purity against emotion and gender

``split`` is ``train`` (the frames k-means is fitted on: training speakers minus the validation speakers)
or ``valid`` (labelled with the train centroids, for stage 2's validation loss). Test speakers never appear here.
"""

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import dist
from .data import AudioSet, epoch_batches
from .errors import ConfigError
from .utils import atomic_json

log = logging.getLogger(__name__)


@torch.no_grad()
def dump_features(encoder, data: AudioSet, layer: int, out_dir: Path, split: str, batch_size: int = 16,
                  max_seconds: float = 30.0) -> np.ndarray:
    """Write layer ``layer`` of ``encoder`` for every utterance of ``data``; returns the lengths.

    Frames go straight from each batch into a float16 memmap, so no more than one batch is ever in memory.
    Under torchrun the batches are dealt out to the ranks, which write their own rows of the one file.
    """
    encoder.eval()
    device = next(encoder.parameters()).device
    max_samples = int(max_seconds * encoder.sample_rate)
    frames = encoder.frame_lengths(torch.from_numpy(np.minimum(data.lengths, max_samples))).numpy()
    offsets = np.concatenate([[0], np.cumsum(frames)])
    path = out_dir / f"{split}.features.npy"
    tmp = path.with_suffix(".tmp.npy")
    if dist.is_main():  # rank 0 creates the file, then every rank opens it
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                  shape=(int(offsets[-1]), encoder.hidden_size)).flush()
    dist.barrier()
    feats = np.load(tmp, mmap_mode="r+")
    with tqdm(total=len(data), desc=f"dumping {split} layer {layer}", unit="utt", leave=False, disable=None) as bar:
        for b, batch in enumerate(epoch_batches(data, batch_size, max_seconds, rng=None)):
            if b % dist.world() != dist.rank():
                continue
            out = encoder(batch.waves.to(device), batch.lengths.to(device))
            hidden = out.hidden_states[layer].float().cpu()  # (B, T, D)
            for row, i in enumerate(batch.index.tolist()):
                n = int(frames[i])
                feats[offsets[i]:offsets[i] + n] = hidden[row, :n].numpy()
            bar.update(len(batch.index))
    feats.flush()
    del feats
    dist.barrier()
    if dist.is_main():
        tmp.replace(path)
        np.save(out_dir / f"{split}.lengths.npy", frames.astype(np.int64))
        (out_dir / f"{split}.ids.txt").write_text("".join(u.id + "\n" for u in data.utterances))
    return frames


def kmeans_backend(name: str = "auto") -> str:
    """``auto``: faiss when it is installed, else the torch implementation."""
    if name != "auto":
        return name
    try:
        import faiss  # noqa: F401
        return "faiss"
    except ImportError:
        return "torch"


def kmeans_plus_plus(data: torch.Tensor, k: int, g: torch.Generator, trials: int = 1) -> torch.Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii 2007): each next centre drawn with probability
    proportional to its squared distance to the nearest centre so far.

    With ``trials`` > 1, greedy k-means++ (as scikit-learn does with 2 + ln k): each step draws that
    many candidates and keeps the one that lowers the potential most.
    """
    sq = (data * data).sum(1)
    c = torch.empty(k, data.shape[1], device=data.device)
    first = torch.randint(len(data), (1,), generator=g, device=data.device)
    c[0] = data[first[0]]
    closest = torch.addmv(sq + sq[first], data, c[0], alpha=-2).clamp_(min=0)
    for i in range(1, k):
        cand = torch.multinomial(closest + 1e-12, trials, replacement=True, generator=g)
        # (n, D) @ (D, trials): reads the data once in its own layout (2x faster than (trials, D) @ (D, n))
        dist = torch.addmm(sq[:, None] + sq[None, cand], data, data[cand].t(), alpha=-2).t().clamp_(min=0)
        dist = torch.minimum(closest[None], dist)  # (trials, n)
        best = int(dist.sum(1).argmin())
        c[i], closest = data[cand[best]], dist[best]
    return c


def greedy_trials(k: int) -> int:
    return 2 + int(np.log(k))


def seed_centroids(x: np.ndarray, k: int, seed: int, device, trials: int = 1) -> np.ndarray:
    data = torch.from_numpy(x).to(device)
    return kmeans_plus_plus(data, k, torch.Generator(device=data.device).manual_seed(seed), trials).cpu().numpy()


def schedule(name: str, k: int, iterations: int, frames: int) -> dict:
    """:func:`fit_kmeans` settings of a named schedule for ``frames`` frames.

    ``full`` (the default): ``iterations`` Lloyd passes over all the frames from k random frames. ``fast``:
    about four passes' worth of work: a greedy k-means++ start (k <= 1024; above, its cost outgrows the rest),
    10 passes over an eighth of the frames (at least 32 per centroid; 6 passes above k = 1024), then two
    passes over all of them. ``bench/run.py kmeans_vs_sklearn`` measures both against scikit-learn.
    """
    if name == "full":
        return {"iterations": iterations}
    if name == "fast":
        small = k <= 1024
        return {"iterations": 10 if small else 6, "sample": max(frames // 8, 32 * k), "refine": 2,
                "init": "kmeans++" if small else "random"}
    raise ValueError(f"unknown k-means schedule {name!r} (full or fast)")


def fit_kmeans(features: np.ndarray, k: int, max_frames: int, iterations: int, seed: int,
               backend: str = "auto", device: torch.device | str = "cpu", init: str = "random",
               sample: int = 0, refine: int = 0) -> np.ndarray:
    """k-means on at most ``max_frames`` frames drawn at random (seeded); (K, D) centroids.

    ``backend`` is ``faiss`` (the default where installed) or ``torch`` (Lloyd's algorithm on ``device``,
    for GPUs where faiss has no GPU build). ``init`` is ``random`` (faiss: k distinct frames; torch: plain
    k-means++ on all frames) or ``kmeans++`` (greedy, on max(10k, 20 k) of the frames).

    ``sample`` > 0 runs the ``iterations`` on a seeded subsample of that many frames, and ``refine`` adds
    passes over all of them after (see :func:`schedule`).
    """
    backend = kmeans_backend(backend)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(features), size=max_frames, replace=False)) if max_frames < len(features) else None
    n = len(features) if rows is None else len(rows)
    if n < k:
        raise ValueError(f"{n} frames cannot make {k} clusters")
    if 0 < sample < n:  # only the sample is read into memory; the closing passes stream
        pick = np.sort(rng.choice(n, size=sample, replace=False))
        part = features[pick if rows is None else rows[pick]]
    else:
        part = features if rows is None else features[rows]
    part = np.ascontiguousarray(part, dtype=np.float32)  # no copy when it already is
    start = None
    if init == "kmeans++":
        seeds = part[np.sort(rng.choice(len(part), size=min(len(part), max(10_000, 20 * k)), replace=False))]
        start = seed_centroids(seeds, k, seed, device, greedy_trials(k))
    if backend == "torch":
        c = torch_kmeans(part, k, iterations, seed_centroids(part, k, seed, device) if start is None else start, device)
    else:
        import faiss

        # faiss subsamples again past max_points_per_centroid; ours is already the sample.
        gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0  # a faiss GPU build uses the GPU
        km = faiss.Kmeans(part.shape[1], k, niter=iterations, seed=seed, verbose=False, gpu=gpu,
                          max_points_per_centroid=max(len(part) // k + 1, 256), min_points_per_centroid=1)
        km.train(part, init_centroids=start)  # None: k random frames
        c = km.centroids.astype(np.float32)
    for _ in range(refine):
        c = streamed_pass(features, c, rows, device)
    return c


def nearest(x: torch.Tensor, c: torch.Tensor, distances: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Squared distance to (None unless ``distances``), and index of, the nearest row of ``c`` for each row of ``x``."""
    part = torch.addmm((c * c).sum(1)[None], x, c.t(), alpha=-2)  # (n, K) ||c||^2 - 2 x.c: one fused GEMM
    best, idx = part.min(1)
    return (best + (x * x).sum(1)).clamp(min=0) if distances else None, idx


def torch_kmeans(x: np.ndarray, k: int, iterations: int, start: np.ndarray, device="cpu",
                 chunk: int = 32768) -> np.ndarray:
    """Lloyd's k-means from ``start`` (a k-means++ seeding in :func:`fit_kmeans`), ``x`` moved to ``device`` once.

    k-means++ avoids the poor local minima a random start can fall in on well-separated data. A cluster left
    empty takes the point farthest from its centroid (each empty cluster a different one), so none is returned empty.
    """
    data, c = torch.from_numpy(x).to(device), start
    for _ in range(iterations):
        c = streamed_pass(data, c, device=device, chunk=chunk, refill=True)
    return c


def cluster_sums(x: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    """(k, D) sums of the rows of ``x`` per cluster ``idx``, added in the same order on every run.

    On a GPU ``index_add_`` adds with atomics, in whatever order the threads come, so two runs of the same
    k-means drifted apart (NOTES item 20); torch's deterministic ``index_add_`` sorts the rows by cluster
    first. On a CPU both are the same.
    """
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, idx, x)
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def chunks(features: np.ndarray | torch.Tensor, rows: np.ndarray | None = None, chunk: int = 16384, device="cpu"):
    """(start, float32 tensor) blocks of ``features`` (or of its ``rows``), read one at a time."""
    n = len(features) if rows is None else len(rows)
    for start in range(0, n, chunk):
        block = features[start:start + chunk] if rows is None else features[rows[start:start + chunk]]
        block = block if torch.is_tensor(block) else torch.from_numpy(np.asarray(block, dtype=np.float32))
        yield start, block.to(device, torch.float32)


@torch.no_grad()
def assign(features: np.ndarray, centroids: np.ndarray, chunk: int = 16384,
           device: torch.device | str = "cpu") -> tuple[np.ndarray, float]:
    """Nearest centroid of every frame, streamed in chunks; returns labels and the inertia."""
    c = torch.from_numpy(centroids).to(device)
    labels = np.empty(len(features), dtype=np.int32)
    inertia = 0.0
    for start, x in chunks(features, chunk=chunk, device=device):
        best, idx = nearest(x, c)
        labels[start:start + len(x)] = idx.cpu().numpy()
        inertia += float(best.sum())
    return labels, inertia


@torch.no_grad()
def streamed_pass(features: np.ndarray | torch.Tensor, centroids: np.ndarray, rows: np.ndarray | None = None,
                  device: torch.device | str = "cpu", chunk: int = 16384, refill: bool = False) -> np.ndarray:
    """One Lloyd pass over frames read in chunks (a memmap stays on disk): each frame to its nearest
    centroid, each centroid to the mean of its frames. An empty centroid stays, or with ``refill`` takes
    the frame farthest from its centroid (each empty one a different frame)."""
    c = torch.from_numpy(centroids).to(device)
    sums = torch.zeros(c.shape, dtype=torch.float64, device=device)  # millions of frames: float64 totals
    counts = torch.zeros(len(c), dtype=torch.float64, device=device)
    distances = []
    for _, x in chunks(features, rows, chunk, device):
        best, idx = nearest(x, c, distances=refill)
        sums += cluster_sums(x, idx, len(c)).double()
        counts += torch.bincount(idx, minlength=len(c))
        distances.append(best)
    c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c.double()).float()
    empty = torch.nonzero(counts == 0).flatten()
    if refill and len(empty):
        far = torch.cat(distances).topk(len(empty)).indices.cpu().numpy()
        c[empty] = next(chunks(features, far if rows is None else rows[far], len(far), device))[1]
    return c.cpu().numpy()


def quality(labels: np.ndarray, classes: np.ndarray, k: int) -> dict | None:
    """How well frame clusters follow utterance classes (-1: unknown): NMI and purity in [0, 1]."""
    from sklearn.metrics import normalized_mutual_info_score

    keep = classes >= 0
    if not keep.any():
        return None
    labels, classes = labels[keep], classes[keep]
    table = np.zeros((k, classes.max() + 1), dtype=np.int64)
    np.add.at(table, (labels, classes), 1)
    return {"nmi": float(normalized_mutual_info_score(classes, labels)),
            "purity": float(table.max(1).sum() / max(len(labels), 1))}


def build_pseudo_labels(encoder, train: AudioSet, valid: AudioSet, out_dir: Path, layer: int, scales: list[int],
                        max_frames: int, iterations: int, seed: int, max_seconds: float = 30.0,
                        backend: str = "auto", kmeans: str = "full") -> dict:
    """All steps for one fold; skipped when ``report.json`` is already there (resume).

    Under torchrun every rank dumps its share of the features; rank 0 fits and assigns while the others wait.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "report.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    start = time.perf_counter()
    splits = {"train": train, "valid": valid}
    frames = {name: dump_features(encoder, data, layer, out_dir, name, max_seconds=max_seconds)
              for name, data in splits.items()}
    if not dist.is_main():
        dist.barrier()
        return json.loads(report_path.read_text())
    device = next(encoder.parameters()).device
    backend = kmeans_backend(backend)
    report = {"layer": layer, "frames": {s: int(f.sum()) for s, f in frames.items()}, "backend": backend,
              "dump_s": round(time.perf_counter() - start, 2), "scales": {}}
    train_feats = np.load(out_dir / "train.features.npy", mmap_mode="r")
    for k in scales:
        fit_start = time.perf_counter()  # `start` times the whole step: the report's wall_s
        centroids = fit_kmeans(train_feats, k, max_frames, seed=seed, backend=backend, device=device,
                               **schedule(kmeans, k, iterations, min(max_frames, len(train_feats))))
        np.save(out_dir / f"km{k}.centroids.npy", centroids)
        entry = {"fit_s": round(time.perf_counter() - fit_start, 2)}
        for name, data in splits.items():
            feats = np.load(out_dir / f"{name}.features.npy", mmap_mode="r")
            labels, inertia = assign(feats, centroids, device=device)
            np.save(out_dir / f"{name}.km{k}.labels.npy", labels)
            if name == "train":
                entry.update(inertia=inertia, inertia_per_frame=inertia / max(len(labels), 1),
                             clusters_used=int(len(np.unique(labels))),
                             emotion=quality(labels, np.repeat(data.emotion, frames[name]), k),
                             gender=quality(labels, np.repeat(data.gender, frames[name]), k))
        report["scales"][str(k)] = entry
        log.info("k=%d: %d/%d clusters used, NMI(emotion) %.3f, purity %.3f", k, entry["clusters_used"], k,
                 entry["emotion"]["nmi"], entry["emotion"]["purity"])
    report["wall_s"] = round(time.perf_counter() - start, 1)
    atomic_json(report, report_path)
    dist.barrier()
    return report


def load_labels(out_dir: Path, split: str, scales: list[int], ids: list[str]) -> list[list[np.ndarray]]:
    """Per utterance (dump order), per scale, its (T,) frame labels, read from memory maps (a large corpus's
    labels stay on disk). ``ids``: the utterances they are for, in order, checked against ``ids.txt``."""
    dumped = (out_dir / f"{split}.ids.txt").read_text().split("\n")[:-1]
    if dumped != list(ids):
        first = next((i for i, (a, b) in enumerate(zip(dumped, ids)) if a != b), min(len(dumped), len(ids)))
        raise ConfigError(f"{out_dir}: its {split} pseudo-labels are for other utterances ({len(dumped)} dumped, "
                          f"{len(ids)} now, first difference at #{first}); remove the directory to make them anew")
    lengths = np.load(out_dir / f"{split}.lengths.npy")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    per_scale = [np.load(out_dir / f"{split}.km{k}.labels.npy", mmap_mode="r") for k in scales]
    return [[labels[bounds[i]:bounds[i + 1]] for labels in per_scale] for i in range(len(lengths))]
