"""Request-time KG signals for (user, candidate) pairs: the one function the ranker calls.

- `kg_score`: the KG model's score of (user, interacted, candidate);
- `kg_recent_cosine`: cosine between the candidate and the mean of the user's recent items
  in KG space.
NaN marks "unknown" (a user or item outside the graph, no recent items): LightGBM treats it
as missing rather than as a value.
"""

from __future__ import annotations

import numpy as np

from kg.embeddings import KGEmbeddings

RELATION = "interacted"


def _id_index(emb: KGEmbeddings, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted integer ids, their rows) of the `kind:<id>` entities, built once per graph:
    looking ids up by number avoids building millions of label strings per batch."""
    cache = emb.__dict__.setdefault("_id_index", {})
    if kind not in cache:
        labels = emb.entities.astype(str)
        prefix = f"{kind}:"
        rows = np.flatnonzero(np.char.startswith(labels, prefix))
        if len(rows) == 0:  # a graph without this kind of entity (no users, say)
            cache[kind] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
            return cache[kind]
        tails = np.char.lstrip(np.char.replace(labels[rows], prefix, "", count=1))
        numeric = np.char.isdigit(tails)
        rows, ids = rows[numeric], tails[numeric].astype(np.int64)
        order = np.argsort(ids, kind="stable")
        cache[kind] = (ids[order], rows[order])
    return cache[kind]


def entity_rows(emb: KGEmbeddings, kind: str, ids: np.ndarray) -> np.ndarray:
    """Rows of `kind:<id>` entities (shape of `ids`), -1 where absent or id < 0."""
    ids = np.asarray(ids, dtype=np.int64)
    keys, rows = _id_index(emb, kind)
    if len(keys) == 0:
        return np.full(ids.shape, -1, dtype=np.int64)
    pos = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
    return np.where((keys[pos] == ids) & (ids >= 0), rows[pos], -1)


def kg_score(emb: KGEmbeddings, user_ids: np.ndarray, candidates: np.ndarray
             ) -> np.ndarray:
    """`kg_score` alone (what the ranker reads), without the recent-items cosine."""
    return _score(emb, user_ids, entity_rows(emb, "item", candidates))


def _score(emb: KGEmbeddings, user_ids: np.ndarray, items: np.ndarray) -> np.ndarray:
    users = entity_rows(emb, "user", user_ids)[:, None]
    if RELATION in emb.relations:
        return emb.score(np.broadcast_to(users, items.shape), RELATION, items)
    # a graph without collaborative edges (users with too short a history): unknown
    return np.full(items.shape, np.nan)


def kg_signals(emb: KGEmbeddings, user_ids: np.ndarray, candidates: np.ndarray,
               recent_items: np.ndarray) -> dict[str, np.ndarray]:
    """user_ids (n,), candidates (n, k) item ids, recent_items (n, r) item ids padded with -1.
    Returns arrays of shape (n, k)."""
    items = entity_rows(emb, "item", candidates)
    score = _score(emb, user_ids, items)

    unit = emb.unit_vectors()
    recent = entity_rows(emb, "item", recent_items)
    known = recent >= 0
    summed = (unit[np.maximum(recent, 0)] * known[..., None]).sum(axis=1)
    norm = np.linalg.norm(summed, axis=1, keepdims=True)
    profile = np.where(norm > 0, summed / np.maximum(norm, 1e-12), np.nan)
    cosine = np.einsum("nkd,nd->nk", unit[np.maximum(items, 0)], profile)
    cosine = np.where(items < 0, np.nan, cosine)
    return {"kg_score": score, "kg_recent_cosine": cosine}
