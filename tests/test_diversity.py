"""MMR re-ranking: lambda 0 is the ranker's exact order; higher lambda brings in variety."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.diversity import intra_list_diversity, mmr_order, rerank


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_lambda_zero_is_the_rankers_exact_order_ties_included():
    rng = np.random.default_rng(0)
    scores = np.sort(rng.random(40))[::-1]
    scores[5:9] = scores[5]  # a tie block keeps the ranker's order
    vectors = _unit(rng.normal(size=(40, 8)))
    assert mmr_order(scores, vectors, 0.0).tolist() == list(range(40))
    assert rerank(scores, vectors, 0.0, k=10).tolist() == list(range(40))


def test_mmr_picks_by_hand():
    # items 0 and 1 are near-duplicates, 2 is different and a little less relevant
    scores = np.array([1.0, 0.95, 0.9, 0.0])
    vectors = _unit(np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.7, 0.7]]))
    # lambda 0.5: after 0, item 1 is worth 0.5*0.95 - 0.5*0.99 = -0.02, item 2
    # 0.5*0.9 - 0 = 0.45, item 3 0 - 0.5*0.71: item 2; then item 1 (-0.02) before 3 (-0.35)
    assert mmr_order(scores, vectors, 0.5, k=3).tolist() == [0, 2, 1, 3]
    assert mmr_order(scores, vectors, 0.5, k=2).tolist() == [0, 2, 1, 3]  # rest in order
    # a small lambda keeps relevance first
    assert mmr_order(scores, vectors, 0.01).tolist()[:3] == [0, 1, 2]


def test_more_lambda_more_diversity_and_the_pool_bounds_the_change():
    rng = np.random.default_rng(1)
    scores = np.sort(rng.random(100))[::-1]
    vectors = _unit(rng.normal(size=(100, 16)) + np.array([3.0] + [0.0] * 15))
    ild = [intra_list_diversity(vectors[rerank(scores, vectors, lam, k=10, pool=50)[:10]])
           for lam in (0.0, 0.3, 0.7)]
    assert ild[0] < ild[1] < ild[2]
    order = rerank(scores, vectors, 0.7, k=10, pool=50)
    assert sorted(order.tolist()) == list(range(100))  # a permutation
    assert order[50:].tolist() == list(range(50, 100))  # past the pool: untouched
    with pytest.raises(ValueError, match="lambda"):
        mmr_order(scores, vectors, 1.5)


def test_intra_list_diversity_equals_the_pairwise_mean():
    rng = np.random.default_rng(2)
    v = _unit(rng.normal(size=(7, 5)))
    pairs = [v[i] @ v[j] for i in range(7) for j in range(i + 1, 7)]
    assert intra_list_diversity(v) == pytest.approx(1 - np.mean(pairs))
    assert np.isnan(intra_list_diversity(v[:1]))


def test_a_batch_equals_its_lists_one_by_one_and_pads_stay_last():
    from ranking.diversity import mmr_batch

    rng = np.random.default_rng(3)
    scores = np.sort(rng.random((6, 12)), axis=1)[:, ::-1].copy()
    scores[2, 9:] = -np.inf  # a short list
    vectors = _unit(rng.normal(size=(6 * 12, 4))).reshape(6, 12, 4)
    batch = mmr_batch(scores, vectors, 0.4, k=5)
    for r in range(6):
        real = np.isfinite(scores[r])
        alone = mmr_order(scores[r][real], vectors[r][real], 0.4, k=5)
        assert batch[r][:real.sum()].tolist() == alone.tolist()
    assert batch[2][9:].tolist() == [9, 10, 11]


def test_lambda_is_chosen_on_validation_within_the_accuracy_budget():
    import polars as pl

    from ranking.evaluation.tradeoff import DiversityConfig, choose

    table = pl.DataFrame({
        "task": ["a"] * 5 + ["b"] * 3,
        "lambda": [0.0, 0.2, 0.4, 0.6, 0.8, 0.0, 0.5, 1.0],
        "ndcg@10": [0.40, 0.399, 0.395, 0.37, 0.30, 0.20, 0.199, 0.10],
        "ild@10": [0.40, 0.44, 0.49, 0.55, 0.60, 0.50, 0.52, 0.70]})
    got = choose(table, DiversityConfig())  # floor: +20% ILD; at most 3% of NDCG given up
    # a: 0.4 (ILD 0.49 >= 0.48, NDCG -1.25%); 0.6 would reach more but costs 7.5%
    assert got["a"] == (0.4, pytest.approx(0.48))
    # b: no lambda within 3% reaches 0.60: the most diverse within the budget
    assert got["b"][0] == 0.5
    assert choose(table, DiversityConfig(floor=0.45))["a"][0] == 0.4  # best NDCG above it
    assert choose(table, DiversityConfig(max_ndcg_loss=1.0))["a"][0] == 0.4
    assert choose(table, DiversityConfig(floor=0.58, max_ndcg_loss=1.0))["a"][0] == 0.8
