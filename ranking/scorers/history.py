"""Baselines that read only the user's history: popularity, ItemKNN, EASE (on the full
history or its last N items) and last-item transitions.

On ML-100k sequence matters a lot: the last few items predict the next far better than the
whole history, which is why every neighbourhood model also comes in a last-N variant.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp

from ranking.inputs import FitData, RequestBatch
from ranking.scorers.base import Scorer, ScorerConfig, register
from recdata.errors import ConfigError

NEIGHBOURS = [10, 25, 50, 100, 200, None]
LAST_N = [1, 2, 3, 5, 10, 20]
LAMBDAS = [10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0]


@register
class Popularity(Scorer):
    """Training-window interaction counts; the floor every model must clear."""

    name = "popularity"
    uses_history = False

    def _score(self, batch: RequestBatch) -> np.ndarray:
        return np.broadcast_to(self._popularity, (len(batch), batch.n_items)).copy()


def _row_top_k(m: sp.csr_matrix, k: int | None) -> sp.csr_matrix:
    """Keep each row's `k` largest entries (ties: lower column first); None keeps all."""
    m.eliminate_zeros()
    if k is None:
        return m
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, rows))
    position = np.arange(len(order)) - m.indptr[rows[order]]
    keep = np.sort(order[position < k])
    out = sp.csr_matrix((m.data[keep], m.indices[keep], np.r_[0, np.cumsum(
        np.bincount(rows[keep], minlength=m.shape[0]))]), shape=m.shape)
    return out


NEIGHBOUR_TABLE_BYTES = 512 * 2**20


def cosine_neighbours(fit: FitData, neighbours: int | None) -> sp.csr_matrix:
    """Sparse item-item cosine on binary interactions, row j keeping j's top `neighbours`
    (None: every co-occurring item, within a 512 MB table), self excluded.

    implicit's all-pairs k-nearest-neighbour search (C++, multi-threaded, pruned per row as
    it goes) computes it in float64: memory follows the neighbour table, not the catalogue
    squared (the dense version needed 80 GB at 10^5 items), and at 10^6 interactions it took
    1.3 s where a block-wise scipy product took 50 s."""
    from implicit.nearest_neighbours import CosineRecommender
    from threadpoolctl import threadpool_limits

    x = fit.user_item()
    # implicit allocates n_items x K entries up front, so "every co-occurring item" cannot
    # be K = n_items (n_items^2 again). No item has more co-occurring items than the sum of
    # its users' history lengths: that bound keeps them all; past NEIGHBOUR_TABLE_BYTES the
    # table keeps each item's best that many instead (ML-100k: every item, as before).
    degree = np.asarray(x.getnnz(axis=1), dtype=np.int64)
    bound = int((x.T.tocsr() @ degree).max(initial=0)) if x.nnz else 1
    k_all = max(1, min(fit.n_items, bound, NEIGHBOUR_TABLE_BYTES // (16 * fit.n_items)))
    k = k_all if neighbours is None else min(neighbours + 1, fit.n_items)  # + itself
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it transposes to COO itself, then warns about it
        model = CosineRecommender(K=k)
        model.fit(x.astype(np.float64).tocsr(), show_progress=False)
    sim = model.similarity.tocsr()
    sim.sort_indices()  # implicit's row order depends on K; sums must not
    sim.setdiag(0.0)
    return _row_top_k(sim, neighbours)


class ItemKNNConfig(ScorerConfig):
    neighbours: int | None = 50
    last_n: int | None = None


@register
class ItemKNN(Scorer):
    """Sum of cosine similarities between a candidate and the items in the history."""

    name = "itemknn"
    Config = ItemKNNConfig
    grid = {"neighbours": NEIGHBOURS, "last_n": [None]}

    fit_params = ("neighbours",)

    def _fit_model(self, data: FitData) -> None:
        k = self.config.neighbours
        self.sim_t = self.context.cached(
            data, ("knn_t", k), lambda: cosine_neighbours(data, k).T.tocsr(), keep=2)

    def _score(self, batch: RequestBatch) -> np.ndarray:
        return (batch.last_n(self.config.last_n) @ self.sim_t).toarray()

    def affinity(self, sources: np.ndarray, item: int) -> np.ndarray:
        return self.sim_t[sources, item].toarray().ravel()


@register
class ItemKNNLastN(ItemKNN):
    name = "itemknn_lastn"
    grid = {"neighbours": NEIGHBOURS, "last_n": LAST_N}


# EASE inverts a dense items x items Gram matrix: 200 MB of float64 at this many items, and
# cubic time. An evaluation holds several fitted copies at once (the ranker's training and
# validation windows, the baselines being tuned), and at 10^4 items each is 800 MB, which
# alone broke a 4 GB budget. Beyond it the "cf" candidate source switches to ALS
# (`als_lastn`) and the EASE baselines are left out of an evaluation, with a note saying why.
EASE_MAX_ITEMS = 5_000


def ease_weights(fit: FitData, lam: float) -> np.ndarray:
    """EASE (Steck 2019): closed-form item-item weights with a zero diagonal."""
    if fit.n_items > EASE_MAX_ITEMS:
        raise ConfigError(
            f"EASE needs a dense {fit.n_items:,} x {fit.n_items:,} matrix; its limit is "
            f"{EASE_MAX_ITEMS:,} items. Use als_lastn or itemknn_lastn for this catalogue")
    x = fit.user_item()
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = la.inv(gram, overwrite_a=True, check_finite=False)
    del gram
    # row-major, or every sparse @ dense product copies all n x n of it first (LAPACK can
    # hand back column-major: 1.2 s a request at 10^4 items until this line)
    p = np.ascontiguousarray(p)
    p /= -np.diag(p).copy()  # in place: one n x n matrix alive, not two
    np.fill_diagonal(p, 0.0)
    return p


class EASEConfig(ScorerConfig):
    lam: float = 250.0
    last_n: int | None = None


@register
class EASE(Scorer):
    name = "ease"
    Config = EASEConfig
    grid = {"lam": LAMBDAS, "last_n": [None]}
    fit_params = ("lam",)
    max_items = EASE_MAX_ITEMS

    def _fit_model(self, data: FitData) -> None:
        lam = self.config.lam
        self.weights = self.context.cached(data, ("ease", lam),
                                           lambda: ease_weights(data, lam), keep=1)

    def _score(self, batch: RequestBatch) -> np.ndarray:
        return np.asarray(batch.last_n(self.config.last_n) @ self.weights)

    def affinity(self, sources: np.ndarray, item: int) -> np.ndarray:
        return self.weights[sources, item]


@register
class EASELastN(EASE):
    name = "ease_lastn"
    grid = {"lam": LAMBDAS, "last_n": LAST_N}


@register
class Transition(Scorer):
    """How often each item followed the user's last item, popularity breaking ties."""

    name = "transition"

    def _fit_model(self, data: FitData) -> None:
        self.counts = self.context.cached(data, ("transitions",),
                                          data.transitions)
        pop = self._popularity
        self.tiebreak = pop / (pop.max(initial=0.0) + 1.0)  # < 1: never outweighs a count

    def _score(self, batch: RequestBatch) -> np.ndarray:
        last = batch.last_item()
        out = np.zeros((len(batch), batch.n_items))
        known = last >= 0
        out[known] = self.counts[last[known]].toarray()
        return out + self.tiebreak
