"""Multi-scale frame pseudo-labels (GMPs): dump a layer -> k-means per scale -> assign.

As in fairseq's ``simple_kmeans``, the steps are joined only by files, so each can
be rerun alone. Layout of a pseudo-label directory::

    {split}.ids.txt            utterance ids, one per line, in dump order
    {split}.lengths.npy        (U,) int64 frames per utterance
    {split}.features.npy       (N, D) float16 memmap, the frames of all utterances concatenated
    km{K}.centroids.npy        (K, D) float32, fitted on the 'train' split only
    {split}.km{K}.labels.npy   (N,) int32 nearest centroid of every frame
    report.json                per scale: inertia, clusters used, NMI / purity against emotion and gender

``split`` is ``train`` (the frames k-means is fitted on: training speakers minus the
validation speakers) or ``valid`` (labelled with the train centroids, for stage 2's
validation loss). Test speakers never appear here.
"""

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import AudioSet, epoch_batches

log = logging.getLogger(__name__)


@torch.no_grad()
def dump_features(encoder, data: AudioSet, layer: int, out_dir: Path, split: str, batch_size: int = 16,
                  max_seconds: float = 30.0) -> np.ndarray:
    """Write layer ``layer`` of ``encoder`` for every utterance of ``data``; returns the lengths."""
    encoder.eval()
    max_samples = int(max_seconds * encoder.sample_rate)
    frames = encoder.frame_lengths(torch.from_numpy(np.minimum(data.lengths, max_samples))).numpy()
    offsets = np.concatenate([[0], np.cumsum(frames)])
    path = out_dir / f"{split}.features.npy"
    tmp = path.with_suffix(".tmp.npy")
    feats = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                      shape=(int(offsets[-1]), encoder.hidden_size))
    with tqdm(total=len(data), desc=f"dumping {split} layer {layer}", unit="utt", leave=False, disable=None) as bar:
        for batch in epoch_batches(data, batch_size, max_seconds, rng=None):
            hidden = encoder(batch.waves, batch.lengths).hidden_states[layer]  # (B, T, D)
            for row, i in enumerate(batch.index.tolist()):
                n = int(frames[i])
                feats[offsets[i]:offsets[i] + n] = hidden[row, :n].float().numpy()
            bar.update(len(batch.index))
    feats.flush()
    del feats
    tmp.replace(path)
    np.save(out_dir / f"{split}.lengths.npy", frames.astype(np.int64))
    (out_dir / f"{split}.ids.txt").write_text("".join(u.id + "\n" for u in data.utterances))
    return frames


def fit_kmeans(features: np.ndarray, k: int, max_frames: int, iterations: int, seed: int) -> np.ndarray:
    """faiss k-means on at most ``max_frames`` frames drawn at random (seeded); (K, D) centroids."""
    import faiss

    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(features), size=min(max_frames, len(features)), replace=False))
    x = np.ascontiguousarray(features[take], dtype=np.float32)
    if len(x) < k:
        raise ValueError(f"{len(x)} frames cannot make {k} clusters")
    # faiss subsamples again past max_points_per_centroid; ours is already the sample.
    km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, verbose=False,
                      max_points_per_centroid=max(len(x) // k + 1, 256))
    km.train(x)
    return km.centroids.astype(np.float32)


@torch.no_grad()
def assign(features: np.ndarray, centroids: np.ndarray, chunk: int = 16384) -> tuple[np.ndarray, float]:
    """Nearest centroid of every frame, streamed in chunks; returns labels and the inertia."""
    c = torch.from_numpy(centroids)
    c_sq = (c * c).sum(1)
    labels = np.empty(len(features), dtype=np.int32)
    inertia = 0.0
    for start in range(0, len(features), chunk):
        x = torch.from_numpy(np.asarray(features[start:start + chunk], dtype=np.float32))
        dist = (x * x).sum(1, keepdim=True) - 2 * x @ c.t() + c_sq  # (n, K) squared distances
        best, idx = dist.min(1)
        labels[start:start + len(x)] = idx.numpy()
        inertia += float(best.clamp(min=0).sum())
    return labels, inertia


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
                        max_frames: int, iterations: int, seed: int, max_seconds: float = 30.0) -> dict:
    """All steps for one fold; skipped when ``report.json`` is already there (resume)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "report.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    splits = {"train": train, "valid": valid}
    frames = {name: dump_features(encoder, data, layer, out_dir, name, max_seconds=max_seconds)
              for name, data in splits.items()}
    report = {"layer": layer, "frames": {s: int(f.sum()) for s, f in frames.items()}, "scales": {}}
    train_feats = np.load(out_dir / "train.features.npy", mmap_mode="r")
    for k in scales:
        start = time.perf_counter()
        centroids = fit_kmeans(train_feats, k, max_frames, iterations, seed)
        np.save(out_dir / f"km{k}.centroids.npy", centroids)
        entry = {"fit_s": round(time.perf_counter() - start, 2)}
        for name, data in splits.items():
            feats = np.load(out_dir / f"{name}.features.npy", mmap_mode="r")
            labels, inertia = assign(feats, centroids)
            np.save(out_dir / f"{name}.km{k}.labels.npy", labels)
            if name == "train":
                per_frame = lambda values: np.repeat(values, frames[name])  # noqa: E731
                entry.update(inertia=inertia, inertia_per_frame=inertia / max(len(labels), 1),
                             clusters_used=int(len(np.unique(labels))),
                             emotion=quality(labels, per_frame(data.emotion), k),
                             gender=quality(labels, per_frame(data.gender), k))
        report["scales"][str(k)] = entry
        log.info("k=%d: %d/%d clusters used, NMI(emotion) %.3f, purity %.3f", k, entry["clusters_used"], k,
                 entry["emotion"]["nmi"], entry["emotion"]["purity"])
    tmp = report_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(report_path)
    return report


def load_labels(out_dir: Path, split: str, scales: list[int]) -> list[list[np.ndarray]]:
    """Per utterance (dump order), per scale, its (T,) frame labels."""
    lengths = np.load(out_dir / f"{split}.lengths.npy")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    per_scale = [np.load(out_dir / f"{split}.km{k}.labels.npy") for k in scales]
    return [[labels[bounds[i]:bounds[i + 1]] for labels in per_scale] for i in range(len(lengths))]
