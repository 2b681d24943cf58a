"""From score matrices to ranking rows, under the protocol's rules.

- Full ranking: items the user interacted with before the request are removed (the target
  never is); the rest are ordered by score.
- Sampled ranking: the target plus 99 items the user never interacted with, drawn once per
  request with a fixed seed so every model sees the same candidates.
- Equal scores are ordered by a fixed seeded permutation of items, never by item id (which
  on ML-100k correlates with release order and would flatter some models).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp


def tie_permutation(n_items: int, seed: int) -> np.ndarray:
    """Position of each item in the tie-break order."""
    return np.random.default_rng(seed).permutation(n_items)


def _order(scores: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Column indices per row sorted by score descending, ties by `tiebreak` ascending.
    Columns are first laid out in tie-break order so a stable sort resolves ties by it."""
    layout = np.argsort(tiebreak)
    order = np.argsort(-scores[..., layout], axis=-1, kind="stable")
    return np.take_along_axis(np.broadcast_to(layout, scores.shape), order, axis=-1)


def full_ranking(scores: np.ndarray, exclude: sp.csr_matrix, targets: np.ndarray,
                 tiebreak: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item indices and scores per request; -1 pads a row with fewer than k items."""
    masked = scores.copy()
    ex = exclude.tocoo()
    keep_target = ex.col == targets[ex.row]
    masked[ex.row[~keep_target], ex.col[~keep_target]] = -np.inf
    top = _order(masked, tiebreak)[:, :k]
    top_scores = np.take_along_axis(masked, top, axis=1)
    top = np.where(np.isneginf(top_scores), -1, top)
    return top, top_scores


def sample_negatives(seen: sp.csr_matrix, targets: np.ndarray, n_negatives: int,
                     seed: int) -> np.ndarray:
    """(requests x n_negatives) items the user never interacted with, without repeats."""
    rng = np.random.default_rng(seed)
    keys = rng.random(seen.shape)
    coo = seen.tocoo()
    keys[coo.row, coo.col] = np.inf
    keys[np.arange(len(targets)), targets] = np.inf
    return np.argpartition(keys, n_negatives, axis=1)[:, :n_negatives]


def sampled_ranking(scores: np.ndarray, candidates: np.ndarray, tiebreak: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each request's own candidate set (target first, then its negatives)."""
    cand_scores = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((tiebreak[candidates], -cand_scores), axis=1)[:, :k]
    return (np.take_along_axis(candidates, order, axis=1),
            np.take_along_axis(cand_scores, order, axis=1))


def ranking_rows(request_ids: pl.Series, top: np.ndarray, top_scores: np.ndarray,
                 item_ids: np.ndarray) -> pl.DataFrame:
    """Long table (request_id, rank, item_id, score) for the valid cells of `top`."""
    n, k = top.shape
    valid = top >= 0
    rows = np.repeat(np.arange(n), k).reshape(n, k)[valid]
    ranks = np.tile(np.arange(1, k + 1), (n, 1))[valid]
    return pl.DataFrame({
        "request_id": request_ids.to_numpy()[rows],
        "rank": ranks.astype(np.int32),
        "item_id": item_ids[top[valid]],
        "score": top_scores[valid].astype(np.float64),
    })
