"""Pseudo-label steps: nearest centroid against numpy, k-means on clustered data, quality scores."""

import numpy as np
import pytest
import torch

from gmptl.pseudo_labels import assign, fit_kmeans, quality


def test_assign_equals_numpy_reference():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((5000, 24)).astype(np.float16)  # dumps are float16
    centroids = rng.standard_normal((37, 24)).astype(np.float32)
    labels, inertia = assign(feats, centroids, chunk=777)  # chunks that do not divide the frames
    x = feats.astype(np.float64)
    d = ((x[:, None, :] - centroids[None].astype(np.float64)) ** 2).sum(-1)
    expected = d.argmin(1)
    # float32 distances may break exact ties differently: allow only true near-ties to differ
    differ = labels != expected
    assert differ.mean() < 1e-3
    assert np.allclose(d[differ, labels[differ]], d[differ, expected[differ]], rtol=1e-4)
    assert inertia == pytest.approx(d.min(1).sum(), rel=1e-4)


def test_assign_streams_a_memmap(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "f.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(3000, 8))
    mm[:] = rng.standard_normal((3000, 8))
    mm.flush()
    feats = np.load(path, mmap_mode="r")
    centroids = rng.standard_normal((5, 8)).astype(np.float32)
    assert np.array_equal(assign(feats, centroids, chunk=256)[0], assign(np.asarray(feats), centroids)[0])


def test_kmeans_recovers_separated_clusters_and_is_seeded():
    rng = np.random.default_rng(2)
    centers = np.eye(4, 16) * 40  # four clusters far apart
    truth = rng.integers(0, 4, 4000)
    feats = (centers[truth] + rng.standard_normal((4000, 16))).astype(np.float16)
    a = fit_kmeans(feats, 4, max_frames=3000, iterations=20, seed=0)
    b = fit_kmeans(feats, 4, max_frames=3000, iterations=20, seed=0)
    assert np.array_equal(a, b), "same seed, same centroids"
    labels, inertia = assign(feats, a)
    assert inertia < 1.2 * 4000 * 16, "about one unit of variance per dimension is left"
    scores = quality(labels, truth, 4)
    assert scores["nmi"] > 0.95 and scores["purity"] > 0.95
    with pytest.raises(ValueError, match="cannot make"):
        fit_kmeans(feats[:5], 8, max_frames=100, iterations=5, seed=0)


def test_quality_on_known_tables():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert quality(labels, np.array([0, 0, 1, 1, 1, 1]), 3)["purity"] == 1.0
    assert quality(labels, np.array([0, 1, 0, 1, 0, 1]), 3) == {"nmi": pytest.approx(0.0, abs=1e-12),
                                                                "purity": 0.5}
    assert quality(labels, np.full(6, -1), 3) is None, "unknown classes (gender) give no score"


@pytest.mark.parametrize("k", [8, 64])
def test_torch_kmeans_matches_faiss_quality(k):
    """The torch backend (for GPUs without faiss-gpu) reaches faiss's inertia, no cluster left empty."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((k, 16)) * 4
    x = (centres[rng.integers(0, k, 20000)] + rng.standard_normal((20000, 16))).astype(np.float32)
    inertia = {}
    for backend in ("faiss", "torch"):
        c = fit_kmeans(x, k, max_frames=20000, iterations=25, seed=0, backend=backend)
        labels, inertia[backend] = assign(x, c)
        assert c.shape == (k, 16) and len(np.unique(labels)) == k
    assert inertia["torch"] <= 1.05 * inertia["faiss"]


def test_torch_kmeans_refills_empty_clusters():
    from gmptl.pseudo_labels import torch_kmeans

    x = np.concatenate([np.zeros((500, 2)), np.ones((5, 2)) * 50]).astype(np.float32)
    x += np.random.default_rng(0).standard_normal(x.shape).astype(np.float32) * 0.01
    c = torch_kmeans(x, 4, iterations=10, start=x[:4].copy())  # four starts in one cluster: three go empty
    labels, _ = assign(x, c)
    assert len(np.unique(labels)) == 4


def test_kmeans_plus_plus_seeds_and_faiss_refines_them():
    import torch

    from gmptl.pseudo_labels import kmeans_plus_plus

    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((16, 8)) * 5
    x = (centres[rng.integers(0, 16, 8000)] + rng.standard_normal((8000, 8))).astype(np.float32)
    seeded, drawn = [], []
    for seed in range(5):  # D^2 seeding beats k random points on average (Arthur and Vassilvitskii 2007)
        seeded.append(assign(x, kmeans_plus_plus(torch.from_numpy(x), 16, torch.Generator().manual_seed(seed)).numpy())[1])
        drawn.append(assign(x, x[np.random.default_rng(seed).choice(len(x), 16, replace=False)])[1])
    assert np.mean(seeded) < np.mean(drawn)
    c = fit_kmeans(x, 16, max_frames=8000, iterations=3, seed=0, backend="faiss", init="kmeans++")
    labels, inertia = assign(x, c)
    assert len(np.unique(labels)) == 16 and inertia < seeded[0]  # Lloyd passes improve on the seeds


def clustered(k: int, n: int, seed: int, dims: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dims)) * 3
    return (centres[rng.integers(0, k, n)] + rng.standard_normal((n, dims))).astype(np.float32)


def test_greedy_kmeans_plus_plus_lowers_the_seeding_potential():
    """Greedy k-means++ (2 + ln k candidates per step, scikit-learn's choice) starts lower than plain."""
    import torch

    from gmptl.pseudo_labels import greedy_trials, kmeans_plus_plus

    x = clustered(32, 6000, 5)
    potential = {}
    for trials in (1, greedy_trials(32)):
        potential[trials] = np.mean([assign(x, kmeans_plus_plus(torch.from_numpy(x), 32, torch.Generator().manual_seed(s),
                                                                trials).numpy())[1] for s in range(4)])
    assert potential[greedy_trials(32)] < 0.95 * potential[1]


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_fast_schedule_close_to_full_and_seeded(backend):
    """``pseudo.kmeans=fast``: subsample passes then one full pass, within 2 % of the full schedule's inertia."""
    if backend == "faiss":
        pytest.importorskip("faiss")
    from gmptl.pseudo_labels import schedule

    x = clustered(24, 20000, 6)
    fast = schedule("fast", 24, 25, len(x))
    assert fast["sample"] < len(x), "the Lloyd passes see a subsample"
    full_c = fit_kmeans(x, 24, len(x), seed=0, backend=backend, **schedule("full", 24, 25, len(x)))
    fast_c = fit_kmeans(x, 24, len(x), seed=0, backend=backend, **fast)
    assert np.array_equal(fast_c, fit_kmeans(x, 24, len(x), seed=0, backend=backend, **fast))
    labels, fast_inertia = assign(x, fast_c)
    assert len(np.unique(labels)) == 24
    assert fast_inertia <= 1.02 * assign(x, full_c)[1]
    # the refining pass over all frames moves the centroids to their frames' means
    sub_only = fit_kmeans(x, 24, len(x), seed=0, backend=backend, **{**fast, "refine": 0})
    labels, sub_inertia = assign(x, sub_only)
    assert fast_inertia < sub_inertia
    with pytest.raises(ValueError, match="schedule"):
        schedule("quick", 24, 25, len(x))


def test_streamed_pass_is_one_lloyd_step_over_a_memmap(tmp_path):
    """The fast schedule's closing passes read the float16 dump chunk by chunk and move every
    centroid to the mean of its frames, as one in-memory Lloyd step does."""
    from gmptl.pseudo_labels import schedule, streamed_pass, torch_kmeans

    x = clustered(12, 5000, 7).astype(np.float16)
    path = tmp_path / "train.features.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=x.shape)
    mm[:] = x
    mm.flush()
    feats = np.load(path, mmap_mode="r")
    start = x[:12].astype(np.float32) + 0.5
    expected = torch_kmeans(x.astype(np.float32), 12, iterations=1, start=start)
    assert np.allclose(streamed_pass(feats, start, chunk=777), expected, atol=1e-4)
    rows = np.arange(0, 5000, 3)  # a max_frames subsample: only those rows count
    expected = torch_kmeans(x[rows].astype(np.float32), 12, iterations=1, start=start)
    assert np.allclose(streamed_pass(feats, start, rows, chunk=500), expected, atol=1e-4)
    c = fit_kmeans(feats, 12, max_frames=4000, seed=0, **schedule("fast", 12, 25, 4000))
    assert len(np.unique(assign(feats, c)[0])) == 12


def test_cluster_sums_add_in_a_fixed_order_and_leave_the_global_setting(monkeypatch):
    from gmptl.pseudo_labels import cluster_sums

    g = torch.Generator().manual_seed(0)
    x, idx = torch.randn(500, 6, generator=g), torch.randint(0, 7, (500,), generator=g)
    expected = np.zeros((7, 6))
    np.add.at(expected, idx.numpy(), x.double().numpy())
    modes = []
    add = torch.Tensor.index_add_
    monkeypatch.setattr(torch.Tensor, "index_add_",
                        lambda self, *a: modes.append(torch.are_deterministic_algorithms_enabled()) or add(self, *a))
    for warn_only in (False, True):
        torch.use_deterministic_algorithms(False, warn_only=warn_only)
        assert np.allclose(cluster_sums(x, idx, 7).numpy(), expected, atol=1e-5)
        assert modes.pop() is True, "index_add_ ran in deterministic mode (on a GPU: sorted, not atomics)"
        assert not torch.are_deterministic_algorithms_enabled(), "the caller's setting is restored"
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    assert cluster_sums(x, idx, 9)[7:].abs().sum() == 0, "an empty cluster sums to zero"


def test_stage2_labels_are_checked_against_the_utterances_they_were_dumped_for(tmp_path):
    from gmptl.errors import ConfigError
    from gmptl.pseudo_labels import load_labels

    (tmp_path / "train.ids.txt").write_text("a\nb\nc\n")
    np.save(tmp_path / "train.lengths.npy", np.array([2, 3, 1]))
    np.save(tmp_path / "train.km4.labels.npy", np.arange(6, dtype=np.int32))
    labels = load_labels(tmp_path, "train", [4], ["a", "b", "c"])
    assert [u[0].tolist() for u in labels] == [[0, 1], [2, 3, 4], [5]]
    for wrong in (["a", "c", "b"], ["a", "b"], ["a", "b", "c", "d"]):
        with pytest.raises(ConfigError, match="other utterances"):
            load_labels(tmp_path, "train", [4], wrong)
