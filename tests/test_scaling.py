"""The structures that let the project grow: exact top-k without a full sort, sparse
neighbour tables, ALS fold-in, chunked candidates and negatives, and the EASE size limit."""

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from ranking import inputs
from ranking.evaluation.rankings import sample_negatives
from ranking.inputs import Catalogue, fit_data, request_batch, split_interactions
from ranking.topk import top_k
from recdata.errors import ConfigError


@pytest.mark.parametrize("threads", [1, 3], ids=["one thread", "row slices on threads"])
@pytest.mark.parametrize("small_block", [1 << 15, 0], ids=["sorted whole", "partitions"])
def test_top_k_equals_a_full_stable_sort_ties_included(monkeypatch, small_block, threads):
    import ranking.topk as topk

    monkeypatch.setattr(topk, "SMALL_BLOCK", small_block)
    monkeypatch.setattr(topk, "PARALLEL_MIN", 0)  # every block large enough for threads
    monkeypatch.setattr(topk, "usable_cores", lambda: threads)
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, (40, 300)).astype(float)  # many ties
    scores[3] = -np.inf
    scores[4, ::7] = np.nan  # ranks as -inf
    scores[5, ::3] = -0.0  # equal to 0.0: a tie, not an order
    tiebreak = rng.permutation(300)
    layout = np.argsort(tiebreak)
    clean = np.where(np.isnan(scores), -np.inf, scores)
    full = np.take_along_axis(np.broadcast_to(layout, scores.shape),
                              np.argsort(-clean[:, layout], axis=1, kind="stable"), axis=1)
    for k in (1, 7, 50, 300, 400):
        assert (top_k(scores, k, tiebreak) == full[:, :k]).all()
        assert top_k(scores, k, tiebreak).dtype == np.int64
    by_index = np.argsort(-clean, axis=1, kind="stable")
    assert (top_k(scores, 25) == by_index[:, :25]).all()
    assert (top_k(scores.astype(np.float32), 25) == by_index[:, :25]).all()
    assert top_k(scores[:0], 5).shape == (0, 5)


def test_top_k_by_threshold_is_exact_on_tie_blocks_nan_and_mostly_infinite_rows(monkeypatch):
    """The sampled-threshold path (forced onto small rows by a small sample) against a full
    stable sort, on the score shapes that made partitions slow: most of a row equal (0 or
    -inf), repeated values, NaN; a sample that misjudges must fall back, not go wrong."""
    import ranking.topk as topk

    monkeypatch.setattr(topk, "SAMPLE", 64)
    monkeypatch.setattr(topk, "MIN_COLUMNS", 256)
    rng = np.random.default_rng(1)
    for trial in range(160):
        rows, n = int(rng.integers(1, 10)), int(rng.integers(300, 2500))
        kind = trial % 4
        if kind == 0:
            scores = rng.integers(0, rng.integers(1, 8), (rows, n)).astype(float)
        elif kind == 1:
            scores = rng.standard_normal((rows, n))
        elif kind == 2:
            scores = np.where(rng.random((rows, n)) < 0.05, rng.random((rows, n)), 0.0)
        else:
            scores = np.where(rng.random((rows, n)) < 0.3, -3.0, -np.inf)
        if trial % 5 == 0:
            scores[rng.random((rows, n)) < 0.1] = np.nan
        tiebreak = rng.permutation(n) if trial % 2 else None
        order = np.arange(n) if tiebreak is None else tiebreak
        layout = np.argsort(order)
        clean = np.where(np.isnan(scores), -np.inf, scores)
        full = np.take_along_axis(np.broadcast_to(layout, scores.shape),
                                  np.argsort(-clean[:, layout], axis=1, kind="stable"), axis=1)
        for k in (1, 7, n // 9 + 1, n // 3, n // 2):
            assert (top_k(scores, k, tiebreak) == full[:, :k]).all(), (trial, kind, k)


def test_top_k_on_threads_slices_rows_and_never_nests(monkeypatch):
    """A large block is ranked one slice of rows per core (uneven slices included), and a
    top_k called from one of those threads ranks inline instead of waiting on the pool."""
    import ranking.topk as topk

    monkeypatch.setattr(topk, "PARALLEL_MIN", 0)
    monkeypatch.setattr(topk, "usable_cores", lambda: 3)
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 4, (11, 500)).astype(float)
    want = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    import threading

    used: list[str] = []
    depth = threading.local()
    inner = topk._top_k

    def spy(block, k, tiebreak):
        used.append(threading.current_thread().name.split("_")[0])
        if not getattr(depth, "nested", False):  # a whole block again, from a pool thread
            depth.nested = True
            assert (topk.top_k(scores, k, tiebreak) == want).all()
            depth.nested = False
        return inner(block, k, tiebreak)

    monkeypatch.setattr(topk, "_top_k", spy)
    assert (topk.top_k(scores, 20) == want).all()
    # three slices, each on a pool thread, and each one's nested call inline on that thread
    assert used == ["top"] * 6
    monkeypatch.setattr(topk, "_LIMIT", None)
    topk.limit_threads(1)  # a serving process's own count: inline on its thread
    used.clear()
    depth.nested = True
    assert (topk.top_k(scores, 20) == want).all()
    assert used == ["MainThread"]
    topk.limit_threads(None)
    monkeypatch.setattr(topk, "usable_cores", lambda: 1)
    used.clear()
    depth.nested = True
    assert (topk.top_k(scores, 20) == want).all()
    assert used == ["MainThread"]


@pytest.fixture(scope="module")
def small(synthetic):
    catalogue = Catalogue.from_dataset(synthetic)
    split = split_interactions(synthetic, catalogue)
    return catalogue, split, fit_data(split, catalogue, "test")


def test_sparse_cosine_table_equals_the_dense_computation(small):
    from ranking.scorers.history import cosine_neighbours

    _, _, fit = small
    x = fit.user_item()
    co = (x.T @ x).toarray().astype(np.float64)
    norms = np.sqrt(np.diag(co))
    with np.errstate(divide="ignore", invalid="ignore"):
        dense = np.nan_to_num(co / np.outer(norms, norms))
    np.fill_diagonal(dense, 0.0)
    table = cosine_neighbours(fit, None)
    np.testing.assert_allclose(table.toarray(), dense, atol=1e-12)
    top10 = cosine_neighbours(fit, 10).toarray()
    assert ((top10 > 0).sum(axis=1) <= 10).all()
    for j in range(dense.shape[0]):  # each row keeps its 10 best (equal values: any of them)
        best = np.sort(dense[j])[::-1][:10]
        kept = np.sort(top10[j][top10[j] > 0])[::-1]
        np.testing.assert_allclose(kept, best[best > 0], atol=1e-12)


def test_all_neighbours_table_is_bounded_by_its_memory_cap(small, monkeypatch):
    """"Every co-occurring item" costs n_items x K up front in implicit; past the cap each
    item keeps its best cap-many neighbours instead of asking for n_items^2."""
    from ranking.scorers import history

    _, _, fit = small
    full = history.cosine_neighbours(fit, None)
    cap = 5
    monkeypatch.setattr(history, "NEIGHBOUR_TABLE_BYTES", 16 * fit.n_items * cap)
    capped = history.cosine_neighbours(fit, None)
    assert capped.getnnz(axis=1).max() <= cap and full.getnnz(axis=1).max() > cap
    np.testing.assert_allclose(np.sort(capped.max(axis=1).toarray().ravel()),
                               np.sort(full.max(axis=1).toarray().ravel()))


def test_als_fold_in_is_the_ls_user_step(small):
    from ranking.scorers.factors import ALSConfig, als_item_factors, fold_in

    _, _, fit = small
    cfg = ALSConfig(factors=8, iterations=5)
    y = als_item_factors(fit, cfg).astype(np.float64)
    assert y.shape == (fit.n_items, 8)
    assert np.array_equal(y, als_item_factors(fit, cfg))  # seeded: the same factors
    h = fit.user_item()[:5]
    x = fold_in(h, y, cfg)
    for r in range(5):  # the normal equations of the ALS user step, solved directly
        items = h[r].indices
        a = y.T @ y + cfg.regularization * np.eye(8) + (cfg.alpha - 1) * y[items].T @ y[items]
        b = cfg.alpha * y[items].sum(axis=0)
        np.testing.assert_allclose(x[r], np.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


def test_candidates_do_not_depend_on_the_chunking(small, encoder, monkeypatch, synthetic):
    from ranking.candidates import CandidateConfig, CandidateGenerator
    from ranking.scorers.base import ScorerContext
    from recdata.instructions import generate_requests

    catalogue, split, fit = small
    requests = generate_requests(synthetic).filter(pl.col("split") == "test")
    batch = request_batch(requests, split, catalogue)
    weights = {"embedding": 1.0, "attribute": 1.5, "transition": 1.0, "cf": 1.0,
               "itemknn": 0.5, "popularity": 0.25}
    gen = CandidateGenerator(CandidateConfig(n=30, weights=weights, rank_depth=60),
                             ScorerContext(encoder=encoder)).fit(fit)
    whole = gen.generate(batch)
    monkeypatch.setattr(inputs, "chunk_rows", lambda n_items, budget=0: 37)
    chunked = gen.generate(batch)
    assert (whole.idx == chunked.idx).all()
    for name in weights:
        np.testing.assert_array_equal(whole.ranks[name], chunked.ranks[name])
        np.testing.assert_allclose(whole.scores[name], chunked.scores[name])
    ranks = np.stack([whole.ranks[n] for n in weights])
    assert np.nanmax(ranks) == 61  # ranks beyond rank_depth read rank_depth + 1


def test_negatives_do_not_depend_on_the_chunking(monkeypatch):
    rng = np.random.default_rng(1)
    seen = sp.random(50, 400, density=0.1, format="csr", random_state=2)
    targets = rng.integers(0, 400, 50)
    whole = sample_negatives(seen, targets, 99, seed=3)
    monkeypatch.setattr("ranking.evaluation.rankings.chunk_rows", lambda n: 7)
    assert (sample_negatives(seen, targets, 99, seed=3) == whole).all()


def test_ease_refuses_a_catalogue_past_its_limit_and_the_harness_says_why(small, monkeypatch):
    from ranking.candidates import source_scorer
    from ranking.evaluation.harness import runnable_models
    from ranking.scorers import history
    from ranking.scorers.history import ease_weights

    _, _, fit = small
    monkeypatch.setattr(history, "EASE_MAX_ITEMS", 100)
    with pytest.raises(ConfigError, match="limit is 100 items"):
        ease_weights(fit, 10.0)
    monkeypatch.setattr(history.EASE, "max_items", 100)
    keep, skipped = runnable_models(["popularity", "ease", "ease_lastn"], fit.n_items)
    assert keep == ["popularity"]
    assert "exceed its limit of 100" in skipped["ease"]
    assert source_scorer("cf", fit.n_items)[0] == "als_lastn"
    assert source_scorer("cf", 50)[0] == "ease_lastn"


def test_embedding_source_through_an_approximate_index(small, encoder, synthetic, tmp_path):
    """Above `exact_below` the embedding source asks a faiss HNSW index for its top
    `ann_depth`; the index is saved once and mapped again by the next generator, and the
    candidates match the exact ones almost everywhere."""
    from encoders.ann import ANNConfig
    from ranking.candidates import CandidateConfig, CandidateGenerator
    from ranking.scorers.base import ScorerContext
    from recdata.instructions import generate_requests

    catalogue, split, fit = small
    requests = generate_requests(synthetic).filter(
        (pl.col("split") == "test") & (pl.col("task") == "search"))
    batch = request_batch(requests, split, catalogue)
    weights = {"embedding": 1.0}
    exact = CandidateGenerator(CandidateConfig(n=20, weights=weights),
                               ScorerContext(encoder=encoder)).fit(fit)
    assert exact.index is None
    approx_cfg = CandidateConfig(n=20, weights=weights, ann=ANNConfig(exact_below=10),
                                 ann_depth=40)
    approx = CandidateGenerator(approx_cfg, ScorerContext(encoder=encoder,
                                                          artifacts=tmp_path)).fit(fit)
    assert approx.index is not None and approx.index.backend == "faiss"
    assert len(list(tmp_path.glob("ann-*/index.json"))) == 1
    a, e = approx.generate(batch), exact.generate(batch)
    overlap = np.mean([len(set(x) & set(y)) / 20 for x, y in zip(a.idx, e.idx, strict=True)])
    assert overlap > 0.95
    np.testing.assert_allclose(  # candidate scores are exact cosines either way
        a.scores["embedding"],
        np.take_along_axis(exact.sources["embedding"].score(batch), a.idx, axis=1),
        atol=1e-5)
    again = CandidateGenerator(approx_cfg, ScorerContext(encoder=encoder,
                                                         artifacts=tmp_path)).fit(fit)
    assert (again.generate(batch).idx == a.idx).all()
    assert len(list(tmp_path.glob("ann-*"))) == 1


def test_kg_cap_keeps_every_attribute_and_samples_collaborative_edges():
    from kg.train import KGConfig, cap_triples

    attrs = pl.DataFrame({"head": [f"item:{i}" for i in range(300)], "relation": "has_genre",
                          "tail": "genre:x"})
    edges = pl.DataFrame({"head": [f"user:{i}" for i in range(1000)],
                          "relation": ["interacted", "liked"] * 500, "tail": "item:1"})
    triples = pl.concat([attrs, edges])
    capped = cap_triples(triples, KGConfig(max_triples=800))
    assert capped.filter(pl.col("relation") == "has_genre").height == 300
    assert capped.height == 800  # the cap, attributes first
    assert capped.equals(cap_triples(triples, KGConfig(max_triples=800)))  # seeded
    # attributes crowd the cap: collaborative edges still keep half of it
    crowded = cap_triples(triples, KGConfig(max_triples=400))
    assert crowded.filter(pl.col("relation") == "has_genre").height == 300
    assert crowded.filter(pl.col("relation") != "has_genre").height == 200
    assert cap_triples(triples, KGConfig(max_triples=None)).height == triples.height
