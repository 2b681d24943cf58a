"""Matrix factorisation (implicit-feedback ALS from the `implicit` library) on the history.

EASE is exact but needs the items x items inverse; beyond `EASE_MAX_ITEMS` this is the
collaborative model that scales: item factors are learned once (memory items x factors),
and a request is folded in from its own history (last N items) with the same least-squares
step ALS uses for a user, so a request from an unseen user or a fresh session scores like a
known one and nothing about the request's user is looked up.
"""

from __future__ import annotations

import numpy as np

from ranking.inputs import FitData, RequestBatch
from ranking.scorers.base import Scorer, ScorerConfig, register


class ALSConfig(ScorerConfig):
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0  # confidence of an observed interaction (1 for unobserved)
    iterations: int = 15
    last_n: int | None = None
    seed: int = 42


def als_item_factors(fit: FitData, cfg: ALSConfig) -> np.ndarray:
    """(items x factors) float32, fitted with implicit's CPU ALS on the binary matrix."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit parallelises itself; BLAS threads fight it
        model = AlternatingLeastSquares(
            factors=cfg.factors, regularization=cfg.regularization, alpha=cfg.alpha,
            iterations=cfg.iterations, random_state=cfg.seed)
        model.fit(fit.user_item(), show_progress=False)
    return np.ascontiguousarray(model.item_factors, dtype=np.float32)


def fold_in(history: np.ndarray | object, items: np.ndarray, cfg: ALSConfig,
            gram: np.ndarray | None = None) -> np.ndarray:
    """Request factors from binary histories (requests x items, sparse): for each request
    x = (YtY + reg I + (alpha - 1) Yh'Yh)^-1 alpha Yh'1, the ALS user step. `gram` is
    YtY + reg I when the caller keeps it (it costs items x factors^2 to form)."""
    h = history.tocsr()  # type: ignore[attr-defined]
    f = items.shape[1]
    y = items if items.dtype == np.float64 else items.astype(np.float64)
    if gram is None:
        gram = y.T @ y + cfg.regularization * np.eye(f)
    a = np.broadcast_to(gram, (h.shape[0], f, f)).copy()
    rows = np.repeat(np.arange(h.shape[0]), np.diff(h.indptr))
    for lo in range(0, len(rows), FOLD_BLOCK):  # bounded: FOLD_BLOCK x f x f at a time
        r, yh = rows[lo:lo + FOLD_BLOCK], y[h.indices[lo:lo + FOLD_BLOCK]]
        starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        a[r[starts]] += (cfg.alpha - 1.0) * np.add.reduceat(
            np.einsum("nf,ng->nfg", yh, yh), starts, axis=0)
    b = cfg.alpha * (h @ y)
    return np.linalg.solve(a, b[..., None])[..., 0]


FOLD_BLOCK = 4096


@register
class ALS(Scorer):
    """Implicit ALS item factors; each request folded in from its (last N) history."""

    name = "als"
    Config = ALSConfig
    grid = {"factors": [32, 64, 128], "last_n": [None]}
    fit_params = ("factors", "regularization", "alpha", "iterations", "seed")

    def _fit_model(self, data: FitData) -> None:
        cfg = self.config
        key = ("als", cfg.factors, cfg.regularization, cfg.alpha, cfg.iterations, cfg.seed)
        self.items = self.context.cached(data, key, lambda: als_item_factors(data, cfg),
                                         keep=2)
        self.items64 = self.items.astype(np.float64)  # formed once, not per request
        self.items64_t = np.ascontiguousarray(self.items64.T)
        self.gram = self.items64.T @ self.items64 + cfg.regularization * np.eye(cfg.factors)

    def _score(self, batch: RequestBatch) -> np.ndarray:
        x = fold_in(batch.last_n(self.config.last_n), self.items64, self.config, self.gram)
        return x @ self.items64_t

    def affinity(self, sources: np.ndarray, item: int) -> np.ndarray:
        return self.items[sources] @ self.items[item]


@register
class ALSLastN(ALS):
    name = "als_lastn"
    grid = {"factors": [32, 64, 128], "last_n": [3, 5, 10]}
