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

from ranking.inputs import chunk_rows
from ranking.topk import top_k


def tie_permutation(n_items: int, seed: int) -> np.ndarray:
    """Position of each item in the tie-break order."""
    return np.random.default_rng(seed).permutation(n_items)


def full_ranking(scores: np.ndarray, exclude: sp.csr_matrix, targets: np.ndarray,
                 tiebreak: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item indices and scores per request; -1 pads a row with fewer than k items."""
    masked = scores.copy()
    ex = exclude.tocoo()
    keep_target = ex.col == targets[ex.row]
    masked[ex.row[~keep_target], ex.col[~keep_target]] = -np.inf
    top = top_k(masked, k, tiebreak)
    top_scores = np.take_along_axis(masked, top, axis=1)
    top = np.where(np.isneginf(top_scores), -1, top)
    return top, top_scores


def sample_negatives(seen: sp.csr_matrix, targets: np.ndarray, n_negatives: int,
                     seed: int) -> np.ndarray:
    """(requests x n_negatives) items the user never interacted with, without repeats.
    Drawn a chunk of requests at a time from one seeded stream, so the draw is the same
    whatever the chunk size and memory stays at one chunk's random keys. A catalogue with
    fewer than `n_negatives + 1` items gives every other item instead."""
    n_negatives = max(0, min(n_negatives, seen.shape[1] - 1))
    rng = np.random.default_rng(seed)
    rows = chunk_rows(seen.shape[1])
    out = []
    for lo in range(0, seen.shape[0], rows):
        hi = min(lo + rows, seen.shape[0])
        keys = rng.random((hi - lo, seen.shape[1]))
        coo = seen[lo:hi].tocoo()
        keys[coo.row, coo.col] = np.inf
        keys[np.arange(hi - lo), targets[lo:hi]] = np.inf
        out.append(np.argpartition(keys, n_negatives, axis=1)[:, :n_negatives])
    return np.concatenate(out) if out else np.zeros((0, n_negatives), dtype=np.int64)


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
