"""Maximal marginal relevance: the ranker's list re-ranked for variety, optionally.

After LightGBM has ordered the candidates (and before the optional LLM), the first
`pool` of them are picked one at a time: each next item is the one with the best
(1 - lambda) * relevance - lambda * (its highest cosine with an item already picked), where
relevance is the ranker's score rescaled to [0, 1] over the pool. lambda = 0 is the
ranker's order exactly (the first best in the ranker's order wins every tie); higher
lambda trades relevance for items unlike those above them. Items past the first `k`
picks keep the ranker's order after them. The similarities are pool x pool per list
(50 x 50), never the catalogue's; lists are processed in batches, one greedy step at a
time for all of them (the evaluation re-ranks every test request for every lambda).

A determinantal point process would be the other standard choice; MMR is kept because its
one knob has a plain meaning, lambda = 0 is provably the identity, and its cost is a pool's
similarity matrix.
"""

from __future__ import annotations

import numpy as np

POOL = 50  # candidates of the ranker's list that MMR may reorder


def similarities(vectors: np.ndarray) -> np.ndarray:
    """lists x n x n cosines of each list's unit vectors (one batched matrix product)."""
    unit = np.asarray(vectors, dtype=np.float64)
    return np.matmul(unit, unit.transpose(0, 2, 1))


def mmr_batch(scores: np.ndarray, vectors: np.ndarray | None, lam: float, k: int,
              sims: np.ndarray | None = None) -> np.ndarray:
    """(lists x n) positions in MMR order. `scores`: lists x n, each row in the ranker's
    order (best first; -inf pads a short list: pads stay last); `vectors`: lists x n x d,
    unit length (or their `similarities`, computed once for several lambdas). The first `k`
    of each row are chosen by MMR, the rest follow in the ranker's order."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"diversity lambda must be in [0, 1], got {lam}")
    rows, n = scores.shape
    if lam == 0.0 or n <= 1:
        return np.broadcast_to(np.arange(n), (rows, n)).copy()
    scores = np.asarray(scores, dtype=np.float64)
    real = np.isfinite(scores)
    low = np.where(real, scores, np.inf).min(axis=1, keepdims=True)
    high = np.where(real, scores, -np.inf).max(axis=1, keepdims=True)
    spread = np.where(high > low, high - low, 1.0)
    relevance = np.where(real, (scores - low) / spread, 0.0)
    if sims is None:
        assert vectors is not None
        sims = similarities(vectors)
    free = real.copy()
    closest = np.zeros((rows, n))  # highest similarity to an item already chosen
    picked_at = np.full((rows, n), 2 * n)  # the step an item was picked at
    at = np.arange(rows)
    for step in range(min(k, n)):
        value = np.where(free, (1 - lam) * relevance - lam * closest, -np.inf)
        pick = np.argmax(value, axis=1)  # the first best in the ranker's order
        live = free[at, pick]
        picked_at[at[live], pick[live]] = step
        free[at, pick] = False
        update = sims[at, pick]
        closest = update if step == 0 else np.maximum(closest, update)
    # picks first, in the order picked; then the rest in the ranker's order; pads last
    rest = np.where(real, n, 3 * n) + np.arange(n)
    return np.argsort(np.where(picked_at < 2 * n, picked_at, rest), axis=1, kind="stable")


def mmr_order(scores: np.ndarray, vectors: np.ndarray, lam: float,
              k: int | None = None) -> np.ndarray:
    """`mmr_batch` of one list."""
    n = len(scores)
    return mmr_batch(np.asarray(scores)[None, :], np.asarray(vectors)[None, :, :], lam,
                     n if k is None else k)[0]


def rerank(scores: np.ndarray, vectors: np.ndarray, lam: float, k: int,
           pool: int = POOL) -> np.ndarray:
    """`mmr_order` over the first `pool` positions of a ranked list, the rest after them."""
    head = min(pool, len(scores))
    order = mmr_order(scores[:head], vectors[:head], lam, k)
    return np.concatenate([order, np.arange(head, len(scores))])


def intra_list_diversity(vectors: np.ndarray) -> float:
    """1 - mean pairwise cosine of unit vectors (NaN for fewer than two): the ILD the
    evaluation reports (ranking.evaluation.beyond), for one list."""
    n = len(vectors)
    if n < 2:
        return float("nan")
    total = np.asarray(vectors, dtype=np.float64).sum(axis=0)
    # the sum of all pairwise cosines of unit vectors is (|sum|^2 - n) / 2
    mean_cos = (float(total @ total) - n) / (n * (n - 1))
    return 1.0 - mean_cos
