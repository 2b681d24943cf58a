"""What a request rules out, and the items it names, applied to a ranked candidate list.

- An item with a value the request excluded ("no horror") or outside a range it asked for
  ("before 1980", "under $20") is a *violation*. Violations are not dropped: they rank
  after every candidate that satisfies the request (their score minus PENALTY), so a list
  is only filled with them when fewer than k candidates satisfy it — the documented
  fallback — and the answer never comes back short. An item whose value is unknown passes.
- Items a request names ("like Alien") join the request's history as its most recent
  items: the item-to-item sources start from them, and, like anything seen, they are not
  recommended back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from ranking.inputs import RequestBatch
    from ranking.intent_parser import ParsedIntents
    from ranking.ltr.features import ItemTables

PENALTY = 1e6


def violations(parsed: ParsedIntents, items: ItemTables, idx: np.ndarray) -> np.ndarray:
    """(requests x candidates) True where candidate `idx[r, j]` breaks request r."""
    bad = np.zeros(idx.shape, dtype=bool)
    excluded = parsed.exclusions
    if excluded.any():
        asked = np.flatnonzero(excluded.any(axis=0))
        bad |= (excluded[:, None, asked] & items.genre[idx][:, :, asked]).any(axis=2)
    for column, (lo, hi) in parsed.ranges.items():
        values = items.numeric.get(column)
        if values is None:
            continue
        v = values[idx]
        with np.errstate(invalid="ignore"):
            bad |= np.isfinite(lo)[:, None] & (v < lo[:, None])
            bad |= np.isfinite(hi)[:, None] & (v > hi[:, None])
    return bad


def constrain(scores: np.ndarray, parsed: ParsedIntents, items: ItemTables,
              idx: np.ndarray) -> np.ndarray:
    """`scores` (requests x candidates) with violations moved below every other candidate,
    their own order kept."""
    bad = violations(parsed, items, idx)
    return scores - PENALTY * bad if bad.any() else scores


def with_items(batch: RequestBatch, rows: list[tuple[int, ...]] | list[list[int]]
               ) -> RequestBatch:
    """`batch` whose histories start with `rows[r]` (catalogue rows, most recent first),
    the rest of each history one step older per added item. The same batch when nothing is
    added."""
    from ranking.inputs import RequestBatch

    if not any(rows):
        return batch
    h = batch.history_coo
    shift = np.asarray([len(r) for r in rows], dtype=np.float32)
    old = sp.csr_matrix((h.data + shift[h.row], (h.row, h.col)), shape=h.shape)
    add_r = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)]).astype(np.int64)
    add_c = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
    add_v = np.concatenate([np.arange(1, len(r) + 1) for r in rows]).astype(np.float32)
    added = sp.csr_matrix((add_v, (add_r, add_c)), shape=h.shape)
    # an item both named and already seen keeps its named (most recent) position
    old = old - old.multiply(added.astype(bool))
    old.eliminate_zeros()
    history = (old + added).tocsr()
    history.sort_indices()
    # a new uid: memoised candidates of the batch without these items must not be reused
    return RequestBatch(batch.requests, history, batch.n_items, f"{batch.uid}+items",
                        batch.offset)
