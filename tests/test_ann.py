from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest

from encoders.ann import (
    ANN_BACKEND,
    ANNConfig,
    ExactIndex,
    FaissIndex,
    build_index,
    load_index,
)
from recdata.errors import ConfigError, InvalidRequestError, UnknownNameError


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int, seed: int, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    return unit(centres[rng.integers(clusters, size=n)] + 0.6 * rng.standard_normal((n, d)))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """5,000 items and 100 queries drawn from the same 40 clusters in 32-d (seeded)."""
    x = clustered(5_100, 32, seed=3)
    return x[:5_000], x[5_000:]


@pytest.fixture(scope="module")
def ann(data) -> FaissIndex:
    index = build_index(data[0], ANNConfig(backend=ANN_BACKEND))
    assert isinstance(index, FaissIndex)
    return index


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = (q.astype(np.float64) @ x.T.astype(np.float64))
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def test_exact_equals_brute_force(data):
    x, q = data
    index = build_index(x, ANNConfig(backend="exact"))
    positions, scores = index.search(q, 25)
    want_pos, want_scores = brute_force(x, q, 25)
    assert positions.dtype == np.int64 and scores.dtype == np.float64
    assert positions.shape == scores.shape == (len(q), 25)
    np.testing.assert_array_equal(positions, want_pos)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_ann_recall_at_50(data, ann):
    x, q = data
    positions, scores = ann.search(q, 50)
    truth, _ = brute_force(x, q, 50)
    recall = np.mean([len(np.intersect1d(a, t)) / 50 for a, t in zip(positions, truth,
                                                                       strict=True)])
    assert recall >= 0.95
    assert positions.dtype == np.int64 and scores.dtype == np.float64
    # scores are the cosines of the returned items, best first
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[positions]), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_same_seed_same_graph(data, ann):
    x, q = data
    again = build_index(x, ANNConfig(backend=ANN_BACKEND))
    np.testing.assert_array_equal(again.search(q, 50)[0], ann.search(q, 50)[0])


@pytest.mark.parametrize("backend", ["exact", ANN_BACKEND])
def test_save_load_mmap_identical(data, ann, backend, tmp_path):
    x, q = data
    index = ann if backend == ANN_BACKEND else build_index(x, ANNConfig(backend="exact"))
    target = index.save(tmp_path / "idx")
    meta = json.loads((target / "index.json").read_text())
    assert meta["backend"] == backend and meta["n"] == len(x) and meta["dim"] == x.shape[1]
    assert "library_version" in meta and "params" in meta
    loaded = load_index(target, mmap=True)
    assert type(loaded) is type(index)
    for got, want in zip(loaded.search(q, 30), index.search(q, 30), strict=True):
        np.testing.assert_array_equal(got, want)
    if backend == "exact":
        assert isinstance(loaded.vectors, np.memmap)
    # saving again over it replaces it and leaves no temporary folder behind
    index.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    for got, want in zip(load_index(target, mmap=False).search(q, 30), index.search(q, 30),
                         strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", ["exact", ANN_BACKEND])
def test_k_clipped_to_catalogue(backend):
    x = clustered(30, 8, seed=1)
    q = clustered(4, 8, seed=2)
    positions, scores = build_index(x, ANNConfig(backend=backend)).search(q, 100)
    assert positions.shape == scores.shape == (4, 30)
    for row in positions:
        assert sorted(row.tolist()) == list(range(30))
    _, want_scores = brute_force(x, q, 30)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_bad_k_and_query_shape(data, ann):
    _, q = data
    with pytest.raises(InvalidRequestError, match="k must be"):
        ann.search(q, 0)
    with pytest.raises(InvalidRequestError, match="shape"):
        ann.search(q[:, :5], 10)


def test_unknown_backend_lists_valid_names(tmp_path, data):
    with pytest.raises(UnknownNameError) as err:
        ANNConfig(backend="annoy")
    assert "'annoy'" in str(err.value)
    assert f"auto, exact, {ANN_BACKEND}" in str(err.value)
    with pytest.raises(pydantic.ValidationError):
        ANNConfig(conectivity=32)
    # an index folder naming a backend this version does not know
    build_index(data[0][:10], ANNConfig(backend="exact")).save(tmp_path / "i")
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    (tmp_path / "i" / "index.json").write_text(json.dumps({**meta, "backend": "annoy"}))
    with pytest.raises(UnknownNameError, match="valid names: exact, "):
        load_index(tmp_path / "i")
    with pytest.raises(ConfigError, match=r"no index\.json"):
        load_index(tmp_path / "missing")


def test_auto_switches_at_exact_below():
    x = clustered(200, 8, seed=4)
    cfg = ANNConfig(exact_below=200)
    assert isinstance(build_index(x[:199], cfg), ExactIndex)
    assert isinstance(build_index(x, cfg), FaissIndex)
    assert isinstance(build_index(x, ANNConfig()), ExactIndex)  # default 20,000


def test_rejects_unnormalised_vectors():
    x = clustered(20, 8, seed=5) * 2
    with pytest.raises(ConfigError, match="L2-normalised"):
        build_index(x)


def test_rows_the_graph_leaves_short_fall_back_to_exact(data, ann):
    """faiss pads with -1 where the graph yields fewer than k items; those rows are answered
    by exact search over the stored vectors."""
    x, q = data

    class Padded:  # the faiss index, with its last query's last result missing
        def __init__(self, inner):
            self.inner, self.ntotal, self.d = inner, inner.ntotal, inner.d

        def search(self, queries, k, params=None):
            scores, positions = self.inner.search(queries, k, params=params)
            positions[-1, -1], scores[-1, -1] = -1, -np.inf
            return scores, positions

        def reconstruct_n(self, start, n):
            return self.inner.reconstruct_n(start, n)

    padded = FaissIndex(Padded(ann.index), ann.params)
    positions, scores = padded.search(q, 20)
    want_pos, want_scores = brute_force(x, q[-1:], 20)
    np.testing.assert_array_equal(positions[-1], want_pos[0])
    np.testing.assert_allclose(scores[-1], want_scores[0], atol=1e-5)
    np.testing.assert_array_equal(positions[:-1], ann.search(q, 20)[0][:-1])
