"""The LambdaRank ranker trained through lightgbm.dask on a two-worker LocalCluster must rank as
well as the single-process one: same parameters, partitions cut on query boundaries, and the
best iteration picked as LightGBM's early stopping would have picked it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ranking.ltr.dask_fit import (
    DaskConfig,
    dask_client,
    early_stopping_pick,
    fit_lambdarank_dask,
    ndcg_curve,
    split_on_groups,
)
from ranking.ltr.model import LTRConfig, fit_lambdarank

ROWS_PER_QUERY = 50
N_FEATURES = 10
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
CFG = LTRConfig(n_estimators=60, early_stopping_rounds=20)


def make_queries(n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planted signal: relevance 0-3 from three of the ten features plus as much noise, so a
    ranker has something to find and something it cannot."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_queries * ROWS_PER_QUERY, N_FEATURES)).astype(np.float32)
    signal = x[:, 0] + 0.7 * x[:, 1] - 0.5 * x[:, 2] + rng.normal(size=len(x))
    y = np.digitize(signal, [0.8, 1.6, 2.4]).astype(np.int32)
    return x, y, np.full(n_queries, ROWS_PER_QUERY, dtype=np.int32)


def ndcg10(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Plain NDCG@10, one query at a time, independent of the module's vectorised one."""
    discount = 1.0 / np.log2(np.arange(2, 12))
    values, offset = [], 0
    for size in groups:
        s, gain = scores[offset:offset + size], 2.0 ** labels[offset:offset + size] - 1
        offset += size
        ideal = np.sort(gain)[::-1][:10] @ discount[:min(10, size)]
        ranked = gain[np.argsort(-s, kind="stable")][:10] @ discount[:min(10, size)]
        values.append(ranked / ideal if ideal > 0 else 1.0)
    return float(np.mean(values))


@pytest.fixture(scope="module")
def data():
    return {"train": make_queries(600, 1), "valid": make_queries(200, 2),
            "test": make_queries(200, 3)}


@pytest.fixture(scope="module")
def client():
    """One two-worker LocalCluster on loopback for the module, closed whatever the tests do."""
    with dask_client(DaskConfig(workers=2, threads_per_worker=1)) as c:
        cluster = c.cluster
        workers = c.scheduler_info(n_workers=-1)["workers"]
        assert c.scheduler.address.startswith("tcp://127.0.0.1:")
        assert len(workers) == 2
        assert all(w.startswith("tcp://127.0.0.1:") for w in workers)
        yield c
    assert c.status == "closed"
    assert cluster.status.name == "closed"


def test_split_on_groups_never_splits_a_query():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 80, size=101)
    qid = np.repeat(np.arange(len(sizes)), sizes)
    for n_parts in (1, 2, 3, 7, 101, 500):
        parts = split_on_groups(sizes, n_parts)
        assert len(parts) == min(n_parts, len(sizes))
        # contiguous, complete, every part whole queries with its own group sizes
        assert parts[0][0].start == 0 and parts[-1][0].stop == sizes.sum()
        assert all(a[0].stop == b[0].start for a, b in itertools.pairwise(parts))
        seen: set[int] = set()
        for rows, groups in parts:
            ids = set(qid[rows].tolist())
            assert ids.isdisjoint(seen), "a query was split across partitions"
            seen |= ids
            assert ids == set(range(groups.start, groups.stop))
            assert sizes[groups].sum() == rows.stop - rows.start
        if n_parts == 2:  # balanced to within one query
            counts = [r.stop - r.start for r, _ in parts]
            assert abs(counts[0] - counts[1]) <= sizes.max()
    with pytest.raises(ValueError):
        split_on_groups(np.array([3, 0, 2]), 2)


def test_early_stopping_pick_follows_lightgbm_semantics():
    curve = np.array([0.1, 0.3, 0.3, 0.2, 0.2, 0.9])
    assert early_stopping_pick(curve, 3) == (2, 0.3)  # first maximum; stops before 0.9
    assert early_stopping_pick(curve, 4) == (6, 0.9)
    assert early_stopping_pick(np.array([0.5]), 1) == (1, 0.5)


def test_curve_and_pick_reproduce_lightgbm_early_stopping(data):
    """The driver-side curve is LightGBM's own ndcg@10, and the pick is its best_iteration_."""
    import lightgbm as lgb

    (x, y, g), valid = data["train"], data["valid"]
    ranker = lgb.LGBMRanker(objective="lambdarank", n_estimators=200, learning_rate=0.3,
                            num_leaves=31, min_child_samples=50, random_state=42, n_jobs=1,
                            deterministic=True, force_row_wise=True, verbose=-1)
    ranker.fit(x, y, group=g, eval_X=(valid[0],), eval_y=(valid[1],), eval_group=[valid[2]],
               eval_at=[10], callbacks=[lgb.early_stopping(5, verbose=False)])
    recorded = np.array(ranker.evals_result_["valid_0"]["ndcg@10"])
    assert len(recorded) < 200  # early stopping did stop
    # the fitted booster keeps the trees up to the best iteration only
    curve = ndcg_curve(ranker.booster_, valid)
    assert len(curve) == ranker.best_iteration_
    np.testing.assert_allclose(curve, recorded[:len(curve)], atol=1e-9)
    best, score = early_stopping_pick(recorded, 5)
    assert best == ranker.best_iteration_
    assert score == pytest.approx(ranker.best_score_["valid_0"]["ndcg@10"], abs=1e-9)


def test_dask_ranker_matches_single_process(data, client):
    train, valid, (tx, ty, tg) = data["train"], data["valid"], data["test"]
    serial, serial_best, _ = fit_lambdarank(CFG, train, valid, FEATURES)
    dask_cfg = DaskConfig(scheduler_address=client.scheduler.address)
    booster, best, valid_ndcg = fit_lambdarank_dask(CFG, train, valid, FEATURES, dask_cfg)

    assert booster.feature_name() == FEATURES
    assert booster.num_trees() == CFG.n_estimators  # no early stopping under Dask
    assert 1 <= best <= CFG.n_estimators
    assert valid_ndcg == pytest.approx(ndcg10(booster.predict(valid[0], num_iteration=best),
                                              valid[1], valid[2]), abs=1e-9)

    single = ndcg10(serial.predict(tx, num_iteration=serial_best), ty, tg)
    distributed = ndcg10(booster.predict(tx, num_iteration=best), ty, tg)
    random = ndcg10(np.random.default_rng(4).random(len(ty)), ty, tg)
    print(f"test NDCG@10: single {single:.4f} (best {serial_best}), dask {distributed:.4f} "
          f"(best {best}), random {random:.4f}")
    assert single > random + 0.3 and distributed > random + 0.3
    assert abs(single - distributed) <= 0.005
