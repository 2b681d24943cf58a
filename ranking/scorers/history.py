"""Baselines that read only the user's history: popularity, ItemKNN, EASE (on the full
history or its last N items) and last-item transitions.

On ML-100k sequence matters a lot: the last few items predict the next far better than the
whole history, which is why every neighbourhood model also comes in a last-N variant.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as la

from ranking.inputs import FitData, RequestBatch
from ranking.scorers.base import Scorer, ScorerConfig, register

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


def cosine_neighbours(fit: FitData, neighbours: int | None) -> np.ndarray:
    """Item-item cosine on binary interactions, row j keeping j's top neighbours only."""
    x = fit.user_item()
    co = (x.T @ x).toarray().astype(np.float64)
    norms = np.sqrt(np.diag(co))
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.nan_to_num(co / np.outer(norms, norms))
    np.fill_diagonal(sim, 0.0)
    if neighbours is not None and neighbours < sim.shape[1]:
        drop = np.argpartition(-sim, neighbours, axis=1)[:, neighbours:]
        np.put_along_axis(sim, drop, 0.0, axis=1)
    return sim


class ItemKNNConfig(ScorerConfig):
    neighbours: int | None = 50
    last_n: int | None = None


@register
class ItemKNN(Scorer):
    """Sum of cosine similarities between a candidate and the items in the history."""

    name = "itemknn"
    Config = ItemKNNConfig
    grid = {"neighbours": NEIGHBOURS, "last_n": [None]}

    def _fit_model(self, data: FitData) -> None:
        k = self.config.neighbours
        # transposed once and laid out row-major: sparse @ dense copies a column-major operand
        self.sim_t = self.context.cached(
            data, ("knn_t", k), lambda: np.ascontiguousarray(cosine_neighbours(data, k).T))

    def _score(self, batch: RequestBatch) -> np.ndarray:
        return np.asarray(batch.last_n(self.config.last_n) @ self.sim_t)


@register
class ItemKNNLastN(ItemKNN):
    name = "itemknn_lastn"
    grid = {"neighbours": NEIGHBOURS, "last_n": LAST_N}


def ease_weights(fit: FitData, lam: float) -> np.ndarray:
    """EASE (Steck 2019): closed-form item-item weights with a zero diagonal."""
    x = fit.user_item()
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = la.inv(gram, overwrite_a=True, check_finite=False)
    b = np.ascontiguousarray(p / -np.diag(p))  # row-major: sparse @ dense copies F-order
    np.fill_diagonal(b, 0.0)
    return b


class EASEConfig(ScorerConfig):
    lam: float = 250.0
    last_n: int | None = None


@register
class EASE(Scorer):
    name = "ease"
    Config = EASEConfig
    grid = {"lam": LAMBDAS, "last_n": [None]}

    def _fit_model(self, data: FitData) -> None:
        lam = self.config.lam
        self.weights = self.context.cached(data, ("ease", lam),
                                           lambda: ease_weights(data, lam))

    def _score(self, batch: RequestBatch) -> np.ndarray:
        return np.asarray(batch.last_n(self.config.last_n) @ self.weights)


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
