"""The k best columns of each row, in exactly the order a full stable sort would give.

Ranking 10^5 items to keep 50 of them should not cost a sort of 10^5, and neither should it
cost a partition: numpy's partition takes ~1 ms per 10^5 values, and over ten times that
when the k-th value sits inside a block of equal values, which is the usual case here (a
history-based source scores most of the catalogue 0, a merged candidate key is mostly inf).
So a large row is cut by a threshold instead: a fixed, evenly spaced sample of its columns
is sorted, its value at the sample's share of k (plus a margin) becomes the threshold, one
comparison pass keeps the columns at or above it, and only those survivors are sorted.
Where the k-th value is the threshold itself (ties straddling the cut), the tied columns
are taken in the tie order by a running count, so no partition ever meets a tie block.
Rows where the sample misjudged (too few or too many survivors) are redone exactly by
partitions; small rows take that path directly, and a small block of them (a request
against a catalogue of thousands) is simply sorted.

The result equals `argsort` by (score descending, tie position ascending) truncated to k,
ties included, which the evaluation protocol needs; NaN ranks as -inf.

Rows are independent, so a large block (the candidate sources of a few thousand training
requests) is cut into one slice of rows per core, ranked on threads: numpy's sorts,
partitions and comparisons release the GIL, and the answer is the same array. Building the
ranker's examples spends ~30% of its time here, on one core while the other waits
(1,000 x 1,682, k 1,000: 0.23 -> 0.10 s on two cores). A request's block is far below the
size that pays for a thread, and a serving process limits the threads to its own
count (`limit_threads`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from recdata.cores import usable_cores

SAMPLE = 4096  # columns sampled per row to place the threshold (at most a quarter of them)
MIN_COLUMNS = 4096  # rows narrower than this take the partition path
MARGIN = 1.25  # the threshold aims at this many times k survivors
SMALL_BLOCK = 1 << 15  # rows x columns sorted whole (below MIN_COLUMNS columns)


def _by_tie_order(scores: np.ndarray, k: int, order_key: np.ndarray) -> np.ndarray:
    """The k best columns (unordered) where ties at the k-th value go by `order_key`."""
    n = scores.shape[1]
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
    # strictly better than the k-th value: always in; equal: by tie order; worse: out
    key = np.where(scores > kth, -1, np.where(scores == kth, order_key[None, :], n))
    return np.argpartition(key, k - 1, axis=1)[:, :k]


def _ordered(scores: np.ndarray, cols: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """`cols` (rows x m) sorted by (score descending, tie position ascending)."""
    values = np.take_along_axis(scores, cols, axis=1)
    order = np.lexsort((order_key[cols], -values), axis=1)
    return np.take_along_axis(cols, order, axis=1)


def _by_threshold(scores: np.ndarray, k: int, order_key: np.ndarray,
                  layout: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows x k best columns in order, or -1 rows; which rows succeeded). `layout` lists
    columns in tie order (None: by index)."""
    rows, n = scores.shape
    size = min(SAMPLE, n // 4)
    step = n / size
    sample = np.sort(scores[:, (np.arange(size) * step).astype(np.int64)], axis=1)
    q = min(size, int(np.ceil(k / step * MARGIN)) + 8)
    t = sample[:, size - q:size - q + 1]  # the q-th largest sampled value
    above = scores > t
    n_above = above.sum(axis=1)
    n_at_least = n_above + (scores == t).sum(axis=1)
    cap = max(4 * k, n // 8)
    ok = (n_at_least >= k) & (n_above <= cap)
    need = np.where(ok, np.maximum(k - n_above, 0), 0)
    keep = above
    if need.any():  # the k-th value is t: the first `need` columns equal to t, in tie order
        tied = np.flatnonzero(need)
        eq = scores[tied] == t[tied]
        in_order = eq if layout is None else eq[:, layout]
        first = in_order & (np.cumsum(in_order, axis=1) <= need[tied, None])
        if layout is not None:
            first = first[:, np.argsort(layout)]
        keep = above.copy()
        keep[tied] |= first
    keep[~ok] = False
    counts = keep.sum(axis=1)
    width = int(counts.max(initial=0))
    r, c = np.nonzero(keep)  # row-major: each row's survivors together, ascending column
    slot = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = np.zeros((rows, max(width, 1)), dtype=np.int64)
    padded = np.full((rows, max(width, 1)), -np.inf)
    cols[r, slot] = c
    padded[r, slot] = scores[r, c]
    pad_key = np.concatenate([order_key, [np.iinfo(np.int64).max]])
    col_key = np.where(np.arange(cols.shape[1])[None, :] < counts[:, None], cols, n)
    order = np.lexsort((pad_key[col_key], -padded), axis=1)[:, :k]
    best = np.take_along_axis(cols, order, axis=1)
    best[~ok] = -1
    return best, ok


PARALLEL_MIN = 1 << 20  # scores in a block ranked on threads, a slice of rows per core
_LIMIT: int | None = None  # threads at most (limit_threads); None: one per usable core
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_IN_POOL = threading.local()


def limit_threads(threads: int | None) -> None:
    """Rank on at most `threads` threads in this process (None: one per usable core). A
    serving process sets its own count, as it caps BLAS's pools (Recommender.load): its
    concurrent requests are its parallelism, and a catalogue of 10^5 items makes a batch of
    16 requests large enough to fan out."""
    global _LIMIT
    _LIMIT = threads


def _pool() -> ThreadPoolExecutor:
    """One pool for the process, a thread per usable core (a call with a lower limit uses
    fewer of them)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(usable_cores(), thread_name_prefix="top_k",
                                       initializer=setattr, initargs=(_IN_POOL, "on", True))
        return _POOL


def top_k(scores: np.ndarray, k: int, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """(rows x min(k, n)) column indices, best first. `tiebreak[j]` is column j's position
    in the tie order (a permutation of 0..n-1); None orders ties by ascending index."""
    rows, n = scores.shape
    if rows * n >= PARALLEL_MIN and not getattr(_IN_POOL, "on", False):
        threads = usable_cores() if _LIMIT is None else min(_LIMIT, usable_cores())
        if threads > 1 and rows >= 2 * threads:
            bounds = np.linspace(0, rows, threads + 1).astype(np.int64)
            parts = _pool().map(lambda lo, hi: _top_k(scores[lo:hi], k, tiebreak),
                                bounds[:-1], bounds[1:])
            return np.concatenate(list(parts))
    return _top_k(scores, k, tiebreak)


def _top_k(scores: np.ndarray, k: int, tiebreak: np.ndarray | None) -> np.ndarray:
    rows, n = scores.shape
    k = min(k, n)
    order_key = np.arange(n) if tiebreak is None else np.asarray(tiebreak)
    if k == 0 or rows == 0:
        return np.zeros((rows, k), dtype=np.int64)
    if np.isnan(scores.max()):  # max is NaN only where some score is: one pass, no copy
        scores = np.where(np.isnan(scores), -np.inf, scores)
    whole = k * 2 > n or (n < MIN_COLUMNS and rows * n <= SMALL_BLOCK)
    if scores.dtype.kind == "f" and whole:
        # a small block (a request or a few against a small catalogue): one stable sort of
        # it costs less than the partition path's eight numpy calls; so does most of a row
        # (a candidate source ranks the whole of a small catalogue to its rank depth): one
        # stable sort against a partition and a two-key lexsort of what it kept (1,000
        # requests x 1,682 items: 0.24 -> 0.14 s, ties by index the same)
        if tiebreak is None:
            return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)
        layout = np.argsort(order_key)
        return layout[np.argsort(-scores[:, layout], axis=1, kind="stable")[:, :k]] \
            .astype(np.int64, copy=False)
    if k == n:  # integer scores
        return _ordered(scores, np.broadcast_to(np.arange(n), (rows, n)), order_key) \
            .astype(np.int64, copy=False)
    out = np.empty((rows, k), dtype=np.int64)
    todo = np.ones(rows, dtype=bool)
    if n >= MIN_COLUMNS and k * 2 <= n:
        layout = None if tiebreak is None else np.argsort(order_key)
        best, ok = _by_threshold(scores, k, order_key, layout)
        out[ok] = best[ok]
        todo = ~ok
    if todo.any():
        rest = scores[todo] if not todo.all() else scores
        out[todo] = _ordered(rest, _by_tie_order(rest, k, order_key), order_key)
    return out
