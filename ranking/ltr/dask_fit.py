"""The LambdaRank ranker trained through `lightgbm.dask` on a Dask cluster, for training data
past one machine.

`fit_lambdarank_dask` keeps the contract of `ranking.ltr.model.fit_lambdarank`: numpy
(X, y, group sizes) for train and validation in, (booster, best iteration, valid NDCG@10)
out, with the same LightGBM parameters, so the artifact and everything downstream of it do not
care which of the two trained the model. Two things differ, both because of what Dask
LightGBM is:

* LambdaRank gradients are computed per query on the worker holding it, so a query must
  never be split across partitions: the rows are partitioned on group boundaries only
  (`split_on_groups`), each partition with its own group-size array.
* `lightgbm.dask` does not support early stopping (its DaskLGBMRanker.fit says so; see
  LightGBM issues #3712, #4189, #4493). Each worker is a separate LightGBM process that
  evaluates only the validation rows Dask placed on it and decides on its own when to stop;
  a worker that stops leaves the others waiting on a collective that never comes (the hangs
  and "Socket recv error 104" of issues #5963, #6197, #6351). For the same reason the
  `evals_result_` it returns is the master worker's local validation shard, not the
  validation set. So all `n_estimators` rounds are trained and the validation NDCG@10 curve
  is computed here, on the driver, over the whole validation set, one tree at a time; the
  best iteration is then what LightGBM's `early_stopping` callback would have picked.

Heavy imports (lightgbm, dask, distributed) happen inside the functions, so importing this
module costs nothing where Dask is not used.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import lightgbm as lgb
    from distributed import Client

    from ranking.ltr.model import LTRConfig

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]

EVAL_AT = 10


class DaskConfig(BaseModel):
    """Where and how wide the Dask fit runs. With `scheduler_address` unset a LocalCluster on
    loopback lives for the one fit, so a real cluster is one setting away."""

    model_config = ConfigDict(extra="forbid")
    workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1, description="LightGBM threads on each worker")
    scheduler_address: str | None = Field(
        None, description="connect to this scheduler (e.g. tcp://10.0.0.5:8786) instead of "
                          "starting a LocalCluster; `workers`/`threads_per_worker`/"
                          "`memory_limit` then describe nothing")
    partitions: int | None = Field(
        None, ge=1, description="training partitions (None: one per worker); cut on query "
                                "boundaries, so at most one per query")
    memory_limit: str = Field("auto", description="per-worker memory limit of the LocalCluster")


@contextmanager
def dask_client(dask: DaskConfig) -> Iterator[Client]:
    """A `distributed.Client`: connected to `dask.scheduler_address`, or to a LocalCluster of
    worker processes on 127.0.0.1 (no dashboard, random free ports) that is closed on exit,
    whatever happens inside. Processes, not threads: LightGBM's network state is per process,
    and a real cluster runs one LightGBM per worker process too."""
    from distributed import Client, LocalCluster

    if dask.scheduler_address is not None:
        with Client(dask.scheduler_address) as client:
            yield client
        return
    with LocalCluster(n_workers=dask.workers, threads_per_worker=dask.threads_per_worker,
                      processes=True, host="127.0.0.1", scheduler_port=0,
                      dashboard_address=None, memory_limit=dask.memory_limit) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(dask.workers)
        yield client


def split_on_groups(group_sizes: np.ndarray, n_parts: int) -> list[tuple[slice, slice]]:
    """Cut the rows into at most `n_parts` contiguous partitions of about equal row counts,
    only ever between two queries, so that no query straddles partitions (LambdaRank's
    gradients for a query need all of its rows on one worker). Returns (row slice, group
    slice) per partition; every partition holds at least one query."""
    sizes = np.asarray(group_sizes, dtype=np.int64)
    if sizes.ndim != 1 or len(sizes) == 0 or (sizes <= 0).any():
        raise ValueError("group sizes must be a non-empty 1-D array of positive counts")
    if n_parts < 1:
        raise ValueError(f"n_parts must be at least 1, got {n_parts}")
    n_groups = len(sizes)
    n_parts = min(n_parts, n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)])  # row offset of each query boundary
    total = int(starts[-1])
    cuts = [0]
    for k in range(1, n_parts):
        # the query boundary nearest to an even share of rows, leaving each part >= 1 query
        cut = int(np.abs(starts - total * k / n_parts).argmin())
        cut = max(cut, cuts[-1] + 1)
        cut = min(cut, n_groups - (n_parts - k))
        cuts.append(cut)
    cuts.append(n_groups)
    return [(slice(int(starts[a]), int(starts[b])), slice(a, b))
            for a, b in itertools.pairwise(cuts)]


class _NDCG:
    """NDCG@k of many score vectors over one labelled set of queries, as LightGBM's `ndcg`
    metric computes it: gain 2^label - 1, discount 1/log2(2 + rank), ties in score kept in row
    order (LightGBM's stable sort), a query without any relevant row counting as 1, the mean
    over queries. Matching it means the best iteration picked here is the one LightGBM's own
    early stopping would pick. Vectorised (one lexsort per call) because it runs once per
    boosting round over the whole validation set."""

    def __init__(self, labels: np.ndarray, group_sizes: np.ndarray, k: int = EVAL_AT) -> None:
        sizes = np.asarray(group_sizes, dtype=np.int64)
        self.k = k
        self.n_queries = len(sizes)
        self.qid = np.repeat(np.arange(self.n_queries), sizes)
        self.start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.gain = np.exp2(np.asarray(labels, dtype=np.float64)) - 1.0
        self.max_dcg = self._dcg(self.gain)

    def _dcg(self, order_key: np.ndarray) -> np.ndarray:
        order = np.lexsort((-order_key, self.qid))  # by query, then score descending, stable
        rank = np.arange(len(order)) - self.start[self.qid[order]]
        top = rank < self.k
        weights = self.gain[order[top]] / np.log2(rank[top] + 2.0)
        return np.bincount(self.qid[order[top]], weights=weights, minlength=self.n_queries)

    def __call__(self, scores: np.ndarray) -> float:
        dcg = self._dcg(np.asarray(scores, dtype=np.float64))
        has_relevant = self.max_dcg > 0
        ndcg = np.ones(self.n_queries)
        ndcg[has_relevant] = dcg[has_relevant] / self.max_dcg[has_relevant]
        return float(ndcg.mean())


def ndcg_at_k(scores: np.ndarray, labels: np.ndarray, group_sizes: np.ndarray,
              k: int = EVAL_AT) -> float:
    """Mean NDCG@k over queries, as LightGBM's `ndcg` metric computes it (see `_NDCG`)."""
    return _NDCG(labels, group_sizes, k)(scores)


def ndcg_curve(booster: lgb.Booster, valid: Arrays, k: int = EVAL_AT) -> np.ndarray:
    """Validation NDCG@k after each boosting round, from the booster's trees one at a time
    (linear in the number of trees, unlike predicting every prefix)."""
    vx, vy, vg = valid
    metric = _NDCG(vy, vg, k)
    score = np.zeros(len(vy), dtype=np.float64)
    curve = np.empty(booster.num_trees(), dtype=np.float64)
    for i in range(booster.num_trees()):
        score += booster.predict(vx, start_iteration=i, num_iteration=1, raw_score=True)
        curve[i] = metric(score)
    return curve


def early_stopping_pick(curve: np.ndarray, rounds: int) -> tuple[int, float]:
    """(best iteration, 1-based, and its score) as `lightgbm.early_stopping(rounds)` would
    have returned them for a higher-is-better metric: the first strict maximum, looking no
    further than the round at which `rounds` rounds without improvement stop training."""
    best_i, best = 0, -np.inf
    for i, value in enumerate(curve):
        if value > best:
            best_i, best = i, float(value)
        elif i - best_i >= rounds:
            break
    return best_i + 1, best


def _check(name: str, data: Arrays) -> None:
    x, y, g = data
    if x.ndim != 2 or len(x) != len(y) or int(np.sum(g)) != len(y):
        raise ValueError(f"{name}: X must be 2-D with one label per row and group sizes "
                         f"summing to the row count (got X {x.shape}, {len(y)} labels, "
                         f"groups summing to {int(np.sum(g))})")


def _scatter_partitions(client: Client, train: Arrays, n_parts: int
                        ) -> tuple[Any, Any, Any, list[Any]]:
    """Dask arrays over the training data whose chunks are the group-aligned partitions, each
    partition's X, y and group sizes scattered together onto one worker (round-robin), so
    LightGBM's per-worker concatenation sees whole queries with their own group array.
    Returns (X, y, group) and the futures to release afterwards."""
    import dask.array as da

    x, y, g = train
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    xs, ys, gs, futures = [], [], [], []
    for i, (rows, groups) in enumerate(split_on_groups(g, n_parts)):
        parts = [np.ascontiguousarray(x[rows]), np.ascontiguousarray(y[rows]),
                 np.ascontiguousarray(g[groups])]
        # hash=False: equal group arrays of two partitions must not share one key
        fx, fy, fg = client.scatter(parts, workers=[workers[i % len(workers)]],
                                    hash=False)
        futures += [fx, fy, fg]
        xs.append(da.from_delayed(fx, shape=parts[0].shape, dtype=parts[0].dtype))
        ys.append(da.from_delayed(fy, shape=parts[1].shape, dtype=parts[1].dtype))
        gs.append(da.from_delayed(fg, shape=parts[2].shape, dtype=parts[2].dtype))
    return da.concatenate(xs), da.concatenate(ys), da.concatenate(gs), futures


def fit_lambdarank_dask(cfg: LTRConfig, train: Arrays, valid: Arrays, features: list[str],
                        dask: DaskConfig | None = None) -> tuple[lgb.Booster, int, float]:
    """`fit_lambdarank` on a Dask cluster: (X, y, group sizes) for train and validation ->
    (booster, best iteration, valid NDCG@10).

    Same LightGBM parameters as the single-process fit, with `tree_learner="data"` (the
    data-parallel learner: each worker builds histograms of its rows, they are summed across
    workers, and every worker grows the same tree). Training rows are partitioned on query
    boundaries and spread over the workers; the validation set stays on the driver.

    Dask LightGBM has no early stopping (see the module docstring), so all `n_estimators`
    rounds are trained, the validation NDCG@10 of every round is computed here on the whole
    validation set, and the best iteration is the one `early_stopping(early_stopping_rounds)`
    would have kept. The returned booster is the fitted model's local `booster_`, holding all
    rounds; callers predict with `num_iteration=best`, as they do after `fit_lambdarank`.

    Not bit-for-bit the serial model, nor always the same model: in distributed mode each
    LightGBM process finds the bin boundaries of its share of the features from its own rows
    and they are then shared, and which worker gets which rank (hence which features) follows
    the order of a Python set of Dask keys inside lightgbm.dask, which varies from process to
    process. With two workers there are two possible models; the test pins both to within
    0.005 NDCG@10 of the single-process one.
    """
    import lightgbm as lgb

    dask = dask or DaskConfig()
    _check("train", train)
    _check("valid", valid)
    with dask_client(dask) as client:
        n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
        dx, dy, dg, futures = _scatter_partitions(client, train, dask.partitions or n_workers)
        try:
            ranker = lgb.DaskLGBMRanker(
                client=client, objective="lambdarank", tree_learner="data",
                n_estimators=cfg.n_estimators, learning_rate=cfg.learning_rate,
                num_leaves=cfg.num_leaves, min_child_samples=cfg.min_child_samples,
                colsample_bytree=cfg.colsample_bytree, random_state=cfg.seed,
                deterministic=True, force_row_wise=True, verbose=-1,
                lambdarank_truncation_level=20)
            with warnings.catch_warnings():
                # num_threads is set per worker from its thread count, whatever n_jobs says
                warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
                ranker.fit(dx, dy, group=dg, feature_name=features)
            booster = ranker.booster_
        finally:
            client.cancel(futures)
    curve = ndcg_curve(booster, valid)
    best, score = early_stopping_pick(curve, cfg.early_stopping_rounds)
    return booster, best, score
