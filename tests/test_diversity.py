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
    # temperature 1, no head kept, lambda 0.5: relevance exp(s - 1) = 1, .951, .905, .368.
    # After 0: item 1 is worth .5*.951 - .5*.99 = -.02, item 2 .5*.905 - 0 = .45, item 3
    # .5*.368 - .5*.707 = -.17: item 2. Then the mean similarity to {0, 2}: item 1
    # .5*.951 - .5*(.99 + .14)/2 = .19, item 3 .5*.368 - .5*.707 = -.17: item 1
    by_hand = {"temperature": 1.0, "head_share": 0.0}
    assert mmr_order(scores, vectors, 0.5, k=3, **by_hand).tolist() == [0, 2, 1, 3]
    assert mmr_order(scores, vectors, 0.5, k=2, **by_hand).tolist() == [0, 2, 1, 3]  # rest
    # a small lambda keeps relevance first
    assert mmr_order(scores, vectors, 0.01, **by_hand).tolist()[:3] == [0, 1, 2]
    # the kept head: half of k = 4, the first two, stay whatever lambda says
    assert mmr_order(scores, vectors, 0.5, k=4, temperature=1.0,
                     head_share=0.5).tolist() == [0, 1, 2, 3]


def test_the_penalty_is_the_mean_similarity_not_the_highest():
    # after 0 and 1 (kept), item 2 is a copy of 0 and unlike 1 (mean .5, highest 1), item 3
    # half like both (mean .71, highest .71): classic MMR (the highest) would take 3; the
    # mean, which is what intra-list diversity averages, takes 2
    scores = np.array([1.0, 1.0, 1.0, 1.0])
    vectors = _unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))
    assert mmr_order(scores, vectors, 0.9, k=4, head_share=0.5).tolist() == [0, 1, 2, 3]


def test_a_confident_list_keeps_its_order_where_an_unsure_one_changes():
    # the same geometry: item 1 duplicates item 0, item 2 is different. A list whose top
    # items stand far above item 2 keeps them; a list of near-equal scores takes item 2
    vectors = _unit(np.array([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]]))
    confident = np.array([10.0, 9.0, 1.0])
    unsure = np.array([1.02, 1.01, 1.0])
    assert mmr_order(confident, vectors, 0.3, head_share=0.0).tolist() == [0, 1, 2]
    assert mmr_order(unsure, vectors, 0.3, head_share=0.0).tolist() == [0, 2, 1]
    # min-max rescaling would have treated the two alike: the relevance is not rescaled
    from ranking.diversity import relevance

    assert relevance(confident[None, :])[0, 2] < 0.02 < relevance(unsure[None, :])[0, 2]


def test_more_lambda_more_diversity_and_the_pool_bounds_the_change():
    rng = np.random.default_rng(1)
    scores = np.sort(rng.random(100))[::-1]
    vectors = _unit(rng.normal(size=(100, 16)) + np.array([3.0] + [0.0] * 15))
    ild = [intra_list_diversity(vectors[rerank(scores, vectors, lam, k=10, pool=50,
                                               temperature=0.2)[:10]])
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
    batch = mmr_batch(scores, vectors, 0.4, k=5, head_share=0.2)
    for r in range(6):
        real = np.isfinite(scores[r])
        alone = mmr_order(scores[r][real], vectors[r][real], 0.4, k=5, head_share=0.2)
        assert batch[r][:real.sum()].tolist() == alone.tolist()
    assert batch[2][9:].tolist() == [9, 10, 11]


def test_the_setting_is_chosen_on_validation_within_the_accuracy_budget():
    import polars as pl

    from ranking.evaluation.tradeoff import DiversityConfig, choose

    table = pl.DataFrame({
        "task": ["a"] * 5 + ["b"] * 3,
        "temperature": [1.0] * 8, "head_share": [0.3] * 8,
        "lambda": [0.0, 0.2, 0.4, 0.6, 0.8, 0.0, 0.5, 1.0],
        "ndcg@10": [0.40, 0.399, 0.395, 0.37, 0.30, 0.20, 0.199, 0.10],
        "ild@10": [0.40, 0.44, 0.49, 0.55, 0.60, 0.50, 0.52, 0.70]})
    got = choose(table, DiversityConfig())  # floor: +20% ILD; at most 3% of NDCG given up
    # a: 0.4 (ILD 0.49 >= 0.48, NDCG -1.25%); 0.6 would reach more but costs 7.5%
    assert got["a"] == {"temperature": 1.0, "head_share": 0.3, "lambda": 0.4,
                        "ild_floor": pytest.approx(0.48)}
    # b: no lambda within 3% reaches 0.60: the most diverse within the budget
    assert got["b"]["lambda"] == 0.5
    assert choose(table, DiversityConfig(floor=0.45))["a"]["lambda"] == 0.4  # best NDCG above
    assert choose(table, DiversityConfig(max_ndcg_loss=1.0))["a"]["lambda"] == 0.4
    assert choose(table, DiversityConfig(floor=0.58, max_ndcg_loss=1.0))["a"]["lambda"] == 0.8
    # another temperature and head that reach the floor at a better NDCG win
    other = pl.DataFrame({"task": ["a"], "temperature": [2.0], "head_share": [0.5],
                          "lambda": [0.7],
                          "ndcg@10": [0.398], "ild@10": [0.50]})
    assert choose(pl.concat([table, other]), DiversityConfig())["a"] == {
        "temperature": 2.0, "head_share": 0.5, "lambda": 0.7,
        "ild_floor": pytest.approx(0.48)}


def test_the_grid_reranks_lambda_zero_once():
    from ranking.evaluation.tradeoff import DiversityConfig

    cfg = DiversityConfig(lambdas=[0.0, 0.5], temperatures=[1.0, 2.0],
                          head_shares=[0.3, 0.5])
    assert cfg.settings() == [(1.0, 0.3, 0.0), (1.0, 0.3, 0.5), (1.0, 0.5, 0.5),
                              (2.0, 0.3, 0.5), (2.0, 0.5, 0.5)]


def test_the_validation_screen_equals_the_metrics_queries():
    """The screen (numpy, every setting) picks what the DuckDB metrics would pick: on the
    same lists its NDCG@10 and ILD@10 are the SQL's."""
    import polars as pl

    from ranking.evaluation.beyond import beyond_accuracy_of, item_table, popularity_table
    from ranking.evaluation.metrics import metrics_of
    from ranking.evaluation.tradeoff import reranked, screened, setting_label

    rng = np.random.default_rng(4)
    n_items, lists, pool = 60, 30, 25
    item_ids = np.arange(100, 100 + n_items)
    unit = _unit(rng.normal(size=(n_items, 6)))
    items = np.stack([rng.choice(item_ids, pool, replace=False) for _ in range(lists)])
    scores = np.sort(rng.normal(size=(lists, pool)), axis=1)[:, ::-1].copy()
    scores[3, 7:] = -np.inf  # a short list
    items[3, 7:] = -1
    targets = np.where(rng.random(lists) < 0.7, items[:, 4], 999)  # some never listed
    request_ids = np.array([f"r{i}" for i in range(lists)])
    settings = [(1.0, 0.3, 0.0), (2.0, 0.3, 0.6), (1.0, 0.5, 0.9)]
    screen = screened(items, scores, targets, item_ids, unit, settings, 10)
    frames = reranked(request_ids, items, scores, item_ids, unit, settings, 10)
    everything = pl.concat([f.with_columns(pl.lit(setting_label(s)).alias("model"),
                                           pl.lit("t").alias("task"),
                                           pl.lit("full").alias("protocol"))
                            for s, f in frames.items()])
    requests = pl.DataFrame({"request_id": request_ids, "task": "t",
                             "target_item_id": targets})
    table = item_table(item_ids, unit, [None] * n_items)
    pop = popularity_table("t", item_ids, np.ones(n_items))
    sql = metrics_of(everything, requests).join(
        beyond_accuracy_of(everything, table, pop, n_items), on=["model", "task"])
    for row in screen.iter_rows(named=True):
        label = setting_label((row["temperature"], row["head_share"], row["lambda"]))
        want = sql.filter(pl.col("model") == label)
        assert row["ndcg@10"] == pytest.approx(want["ndcg@10"][0], abs=1e-9)
        assert row["ild@10"] == pytest.approx(want["ild@10"][0], abs=1e-5)
    assert screen["ild@10"].n_unique() == 3  # the settings differ


def test_the_trade_off_on_threads_equals_one_thread(monkeypatch):
    """Chunks of lists re-ranked on a thread per core give the screen's sums and the
    re-ranked rows of one thread exactly (results are taken in chunk order)."""
    import ranking.evaluation.tradeoff as tradeoff

    rng = np.random.default_rng(5)
    n_items, lists, pool = 80, 3 * tradeoff.CHUNK - 40, 25  # three chunks, the last short
    item_ids = np.arange(n_items)
    unit = _unit(rng.normal(size=(n_items, 8)))
    items = np.stack([rng.choice(item_ids, pool, replace=False) for _ in range(lists)])
    scores = np.sort(rng.normal(size=(lists, pool)), axis=1)[:, ::-1].copy()
    targets = items[np.arange(lists), rng.integers(0, pool, lists)]
    settings = [(1.0, 0.3, 0.0), (2.0, 0.3, 0.6), (1.0, 0.5, 0.9)]
    got = {}
    for threads in (1, 3):
        monkeypatch.setattr(tradeoff, "usable_cores", lambda threads=threads: threads)
        got[threads] = (tradeoff.screened(items, scores, targets, item_ids, unit, settings, 10),
                        tradeoff.reranked(np.arange(lists), items, scores, item_ids, unit,
                                          settings, 10))
    assert got[1][0].equals(got[3][0])
    assert got[1][1].keys() == got[3][1].keys()
    assert all(got[1][1][s].equals(got[3][1][s]) for s in settings)
    assert got[3][1][settings[1]]["request_id"].is_sorted()  # chunk order kept
