"""The ranker's features for (request, candidate) pairs, offline and online alike.

One function, `assemble()`, turns a request batch, its candidates, the feature store's rows
and the in-process vectors into the feature frame, so training and serving cannot drift
apart: the offline path feeds it Feast point-in-time rows, the online path Feast online rows,
with the same column names (`user_history__n_interactions`, `item_stats__popularity_7d`, ...).

Each feature carries tags; an ablation drops every feature with a tag:
- `instruction`: reads the request text (attribute match, instruction-item similarity);
- `text`: comes from sentence-transformer vectors;
- `kg`: comes from the knowledge-graph embeddings;
- `history`, `item`: the user's history and the item's statistics.
Anonymous requests (search, unknown users) get nulls for every user feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from kg.signals import kg_signals
from ranking.candidates import Candidates
from ranking.inputs import RequestBatch
from ranking.intent_parser import ParsedIntents, parse_instructions
from ranking.scorers.knowledge import recent_item_ids

SECONDS_PER_DAY = 86_400.0

FEATURES: dict[str, frozenset[str]] = {name: frozenset(tags.split()) for name, tags in {
    # candidate sources: score and rank in the whole catalogue
    "src_transition": "history", "rank_transition": "history",
    "src_cf": "history", "rank_cf": "history",
    "src_itemknn": "history", "rank_itemknn": "history",
    "src_popularity": "item", "rank_popularity": "item",
    "src_attribute": "instruction", "rank_attribute": "instruction",
    "src_embedding": "instruction text", "rank_embedding": "instruction text",
    "src_kg": "kg history", "rank_kg": "kg history",
    # attribute match between the parsed instruction and the item
    "attr_asked": "instruction", "attr_genre_asked": "instruction",
    "attr_genre_match": "instruction", "attr_decade_match": "instruction",
    "attr_level_match": "instruction", "attr_all_match": "instruction",
    # user (Feast: user_history, user_profile_embedding)
    "user_interactions": "history", "user_mean_rating": "history",
    "user_days_since_last": "history", "user_genre_affinity": "history",
    "profile_cosine": "text history", "kg_user_score": "kg history",
    # item (Feast: item_stats; catalogue)
    "item_interactions": "item", "item_mean_rating": "item", "item_pop_7d": "item",
    "item_pop_30d": "item", "item_days_since_last": "item", "item_year": "item",
}.items()}

ABLATIONS: dict[str, frozenset[str]] = {
    "full": frozenset(), "no_kg": frozenset({"kg"}),
    "no_instruction": frozenset({"instruction"}), "no_text": frozenset({"text"}),
}

USER_COLUMNS = ["user_history__n_interactions", "user_history__mean_rating",
                "user_history__last_interaction_ts", "user_history__genre_share",
                "user_profile_embedding__embedding"]
ITEM_COLUMNS = ["item_stats__interactions", "item_stats__mean_rating",
                "item_stats__popularity_7d", "item_stats__popularity_30d",
                "item_stats__last_interaction_ts"]
# the feature-store columns each stored feature is computed from; a model reads the union
# of its features' columns, so a ranker without text features needs no embedding view
STORE_COLUMNS: dict[str, tuple[str, ...]] = {
    "user_interactions": ("user_history__n_interactions",),
    "user_mean_rating": ("user_history__mean_rating",),
    "user_days_since_last": ("user_history__last_interaction_ts",),
    "user_genre_affinity": ("user_history__genre_share",),
    "profile_cosine": ("user_profile_embedding__embedding",),
    "item_interactions": ("item_stats__interactions",),
    "item_mean_rating": ("item_stats__mean_rating",),
    "item_pop_7d": ("item_stats__popularity_7d",),
    "item_pop_30d": ("item_stats__popularity_30d",),
    "item_days_since_last": ("item_stats__last_interaction_ts",),
}


def store_columns(features: list[str]) -> tuple[list[str], list[str]]:
    """(user columns, item columns) of the feature store that `features` read."""
    needed = {c for f in features for c in STORE_COLUMNS.get(f, ())}
    return ([c for c in USER_COLUMNS if c in needed], [c for c in ITEM_COLUMNS if c in needed])


def feature_names(ablation: str = "full") -> list[str]:
    from recdata.errors import UnknownNameError

    if ablation not in ABLATIONS:
        raise UnknownNameError("ablation", ablation, list(ABLATIONS))
    drop = ABLATIONS[ablation]
    return [f for f, tags in FEATURES.items() if not tags & drop]


@dataclass(frozen=True)
class ItemTables:
    """In-process, static item data the features read (catalogue order)."""

    item_ids: np.ndarray
    genres: list[str]
    genre: np.ndarray        # items x genres, bool
    decade: np.ndarray       # items, -1 unknown
    popular: np.ndarray
    obscure: np.ndarray
    acclaimed: np.ndarray
    year: np.ndarray         # float, NaN unknown
    vectors: np.ndarray | None  # items x d, unit norm (text encoder)

    @classmethod
    def from_attribute_source(cls, source: Any, vectors: np.ndarray | None) -> ItemTables:
        """From a fitted `filter_popularity` scorer, which already holds the attribute arrays."""
        items = source.fitted.catalogue.items
        return cls(items["item_id"].to_numpy(), source.genres, source.item_genre,
                   source.item_decade, source.popular, source.obscure, source.acclaimed,
                   items["year"].cast(pl.Float64).to_numpy(), vectors)


def _attribute_match(p: ParsedIntents, t: ItemTables, idx: np.ndarray) -> dict[str, np.ndarray]:
    genre_hits = (p.genre_mask[:, None, :] & t.genre[idx]).sum(axis=2)
    genre_asked = p.genre_mask.sum(axis=1)[:, None]
    decade_asked = (p.decade > 0)[:, None]
    decade = decade_asked & (t.decade[idx] == p.decade[:, None])
    level = ((p.popular[:, None] & t.popular[idx]) + (p.obscure[:, None] & t.obscure[idx])
             + (p.acclaimed[:, None] & t.acclaimed[idx]))
    asked = genre_asked + decade_asked + p.popular[:, None] + p.obscure[:, None] \
        + p.acclaimed[:, None]
    shape = idx.shape
    return {
        "attr_asked": np.broadcast_to(asked, shape),
        "attr_genre_asked": np.broadcast_to(genre_asked, shape),
        "attr_genre_match": genre_hits,
        "attr_decade_match": decade,
        "attr_level_match": level,
        "attr_all_match": (genre_hits + decade + level) == asked,
    }


def _array_column(frame: pl.DataFrame, name: str, width: int) -> np.ndarray:
    """A list column as a float matrix, NaN rows where null."""
    col = frame[name]
    out = np.full((frame.height, width), np.nan)
    ok = col.is_not_null().to_numpy()
    if ok.any():
        out[ok] = np.array(col.filter(col.is_not_null()).to_list(), dtype=np.float64)
    return out


def _gather_dot(rows: np.ndarray, items: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """rows[r] . items[idx[r, j]] for every (r, j). A (requests x items) product would be
    cheaper per value on a small catalogue but grows with the catalogue; this gathers each
    request's candidates' vectors instead, a block of requests at a time so the
    (block x candidates x dim) copy stays under GATHER_BLOCK values."""
    n, k = idx.shape
    out = np.empty((n, k))
    block = max(1, GATHER_BLOCK // max(1, k * items.shape[1]))
    for lo in range(0, n, block):
        part = items[idx[lo:lo + block]].astype(np.float64)
        out[lo:lo + block] = np.einsum("nkd,nd->nk", part,
                                       rows[lo:lo + block].astype(np.float64))
    return out


GATHER_BLOCK = 4_000_000


def assemble(batch: RequestBatch, cands: Candidates, user_rows: pl.DataFrame,
             item_rows: pl.DataFrame, items: ItemTables, *, kg: Any = None,
             anonymous: np.ndarray | None = None,
             parsed: ParsedIntents | None = None) -> pl.DataFrame:
    """The feature frame, one row per (request, candidate) in row-major order.

    `user_rows`: one row per request with USER_COLUMNS (null for unknown users);
    `item_rows`: one row per (request, candidate) with ITEM_COLUMNS, as of the request time.
    """
    n, k = cands.idx.shape
    idx = cands.idx
    # columns the model does not read may be absent: their features come out NaN
    user_rows = user_rows.with_columns(pl.lit(None).alias(c) for c in USER_COLUMNS
                                       if c not in user_rows.columns)
    item_rows = item_rows.with_columns(pl.lit(None).alias(c) for c in ITEM_COLUMNS
                                       if c not in item_rows.columns)
    anon = np.zeros(n, dtype=bool) if anonymous is None else anonymous
    now = batch.requests["timestamp"].cast(pl.Float64).to_numpy()[:, None]
    cols: dict[str, np.ndarray] = {}
    for source in ("transition", "cf", "itemknn", "popularity", "attribute", "embedding",
                   "kg"):
        if source in cands.scores:
            cols[f"src_{source}"] = cands.scores[source]
            cols[f"rank_{source}"] = cands.ranks[source]
    if parsed is None:
        parsed = parse_instructions(batch.instructions, items.genres)
    cols |= _attribute_match(parsed, items, idx)

    u = user_rows.with_columns(pl.when(pl.Series(anon)).then(None).otherwise(pl.col(c))
                               .alias(c) for c in USER_COLUMNS)
    cols["user_interactions"] = np.broadcast_to(
        u["user_history__n_interactions"].cast(pl.Float64).to_numpy()[:, None], (n, k))
    cols["user_mean_rating"] = np.broadcast_to(
        u["user_history__mean_rating"].cast(pl.Float64).to_numpy()[:, None], (n, k))
    last_ts = u["user_history__last_interaction_ts"].cast(pl.Float64).to_numpy()[:, None]
    cols["user_days_since_last"] = np.broadcast_to((now - last_ts) / SECONDS_PER_DAY, (n, k))
    share = _array_column(u, "user_history__genre_share", len(items.genres))
    cols["user_genre_affinity"] = _gather_dot(share, items.genre, idx)
    if items.vectors is not None:
        profile = _array_column(u, "user_profile_embedding__embedding", items.vectors.shape[1])
        cols["profile_cosine"] = _gather_dot(profile, items.vectors, idx)
    else:
        cols["profile_cosine"] = np.full((n, k), np.nan)
    if kg is not None:
        users = np.where(anon, -1, batch.requests["user_id"].to_numpy())
        sig = kg_signals(kg, users, items.item_ids[idx],
                         recent_item_ids(batch, items.item_ids, 1))
        cols["kg_user_score"] = np.where(anon[:, None], np.nan, sig["kg_score"])
    else:
        cols["kg_user_score"] = np.full((n, k), np.nan)

    def item(name: str) -> np.ndarray:
        return item_rows[name].cast(pl.Float64).fill_null(np.nan).to_numpy().reshape(n, k)

    cols["item_interactions"] = item("item_stats__interactions")
    cols["item_mean_rating"] = item("item_stats__mean_rating")
    cols["item_pop_7d"] = item("item_stats__popularity_7d")
    cols["item_pop_30d"] = item("item_stats__popularity_30d")
    cols["item_days_since_last"] = (now - item("item_stats__last_interaction_ts")) \
        / SECONDS_PER_DAY
    cols["item_year"] = items.year[idx]
    missing = [f for f in FEATURES if f not in cols]
    for f in missing:  # a source left out of the candidate config: the feature is unknown
        cols[f] = np.full((n, k), np.nan)
    return pl.DataFrame({f: np.asarray(cols[f], dtype=np.float32).ravel() for f in FEATURES})
