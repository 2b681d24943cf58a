"""User views: `user_history` and `user_profile_embedding`.

One row per (user, second with interactions), holding the state *including* that second and
timestamped one second later, so a point-in-time join at T sees interactions strictly before
T. Within a second, interactions are ordered by ascending item id (the protocol's tie rule).
"""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl

from feature_repo.jobs import utc_seconds
from feature_repo.jobs.decay import decayed_cumsum

LAST_ITEMS = 5
PROFILE_HALF_LIFE = 20  # items
PROFILE_BLOCK_ROWS = 50_000  # interactions per block of users of the 384-d profile (150 MB a copy)


def _ordered(interactions: pl.DataFrame) -> pl.DataFrame:
    return interactions.sort("user_id", "timestamp", "item_id").with_columns(
        pl.int_range(pl.len()).over("user_id").alias("pos"))


def _group_end() -> pl.Expr:
    """True on the last interaction of each (user, second): the row that closes the state."""
    nxt = pl.col("timestamp").shift(-1).over("user_id")
    return nxt.is_null() | (nxt != pl.col("timestamp"))


def user_history(interactions: pl.DataFrame, items: pl.DataFrame,
                 genres: list[str]) -> pl.DataFrame:
    """user_id, n_interactions, mean_rating, last_interaction_ts, genre_share, last_items,
    event_timestamp."""
    flags = items.select(
        "item_id",
        *[pl.col("genres").list.contains(g).cast(pl.Float32).alias(f"_g{i}")
          for i, g in enumerate(genres)],
    )
    g_cols = [f"_g{i}" for i in range(len(genres))]
    x = _ordered(interactions).join(flags, on="item_id", how="left").with_columns(
        pl.col(g_cols).fill_null(0.0))
    n = pl.col("pos") + 1
    rated = pl.col("rating").is_not_null().cast(pl.Int64).cum_sum().over("user_id")
    rating_sum = pl.col("rating").fill_null(0.0).cum_sum().over("user_id")
    share = [(pl.col(c).cum_sum().over("user_id") / n).cast(pl.Float32) for c in g_cols]
    last = pl.concat_list(
        [pl.col("item_id").shift(k).over("user_id") for k in range(LAST_ITEMS)]
    ).list.drop_nulls()
    return x.with_columns(
        n.cast(pl.Int64).alias("n_interactions"),
        pl.when(rated > 0).then(rating_sum / rated).cast(pl.Float32).alias("mean_rating"),
        pl.col("timestamp").alias("last_interaction_ts"),
        (pl.concat_list(share) if share else pl.lit([], pl.List(pl.Float32))).alias(
            "genre_share"),
        last.alias("last_items"),
        _group_end().alias("_end"),
    ).filter("_end").select(
        "user_id", "n_interactions", "mean_rating", "last_interaction_ts", "genre_share",
        "last_items", utc_seconds(pl.col("timestamp") + 1),
    )


def user_seen(interactions: pl.DataFrame) -> pl.DataFrame:
    """One row per user: every item interacted with, most recent first (ties by descending
    item id, the reverse of the protocol's order), and its rating (NaN: not rated),
    timestamped one second after the last interaction. Serving excludes these and says
    "which you rated 4"; one row per user keeps it O(interactions), where a row per
    interaction would be quadratic in a history. A point-in-time read before the user's
    last interaction finds no row (null), never a later one."""
    x = _ordered(interactions).reverse()
    return x.group_by("user_id", maintain_order=True).agg(
        pl.col("item_id").alias("items"),
        pl.col("rating").cast(pl.Float32).fill_null(float("nan")).alias("ratings"),
        pl.col("timestamp").max().alias("_last"),
    ).sort("user_id").select("user_id", "items", "ratings", utc_seconds(pl.col("_last") + 1))


def user_profile_embedding(interactions: pl.DataFrame, item_ids: np.ndarray,
                           item_vectors: np.ndarray) -> pl.DataFrame:
    """Recency-weighted mean of history item vectors (weight halves every 20 items back),
    L2-normalised: user_id, embedding, event_timestamp."""
    x = _ordered(interactions)
    row_of = {int(i): r for r, i in enumerate(item_ids)}
    x = x.with_columns(pl.col("item_id").replace_strict(row_of, return_dtype=pl.Int64)
                       .alias("_idx"), _group_end().alias("_end"))
    parts = []
    for block in _user_blocks(x, PROFILE_BLOCK_ROWS):  # bounded memory: vectors are 384-d
        # weights halve every PROFILE_HALF_LIFE items back, however long the history
        vec = decayed_cumsum(item_vectors[block["_idx"].to_numpy()],
                             block["user_id"].to_numpy(), block["pos"].to_numpy(),
                             PROFILE_HALF_LIFE)[block["_end"].to_numpy()]
        vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
        parts.append(block.filter("_end").select(
            "user_id", utc_seconds(pl.col("timestamp") + 1)).insert_column(
            1, vectors_column(vec)))
    if not parts:
        return x.select("user_id", utc_seconds(pl.col("timestamp") + 1)).insert_column(
            1, vectors_column(np.zeros((0, item_vectors.shape[1]))))
    return pl.concat(parts)


def _user_blocks(x: pl.DataFrame, rows: int) -> list[pl.DataFrame]:
    """Slices of about `rows` rows that never split a user (x is sorted by user)."""
    if x.height == 0:
        return []
    ends = np.cumsum(x.group_by("user_id", maintain_order=True).len()["len"].to_numpy())
    # cut at the first user boundary at or past every multiple of `rows`
    at = ends[np.searchsorted(ends, np.arange(rows, x.height, rows))]
    cuts = np.unique(np.r_[0, at, x.height])
    return [x.slice(int(a), int(b - a)) for a, b in itertools.pairwise(cuts)]


def vectors_column(vectors: np.ndarray, name: str = "embedding") -> pl.Series:
    """A (n x d) matrix as the List(Float32) column Feast reads as Array(Float32)."""
    return pl.Series(name, vectors.astype(np.float32)).cast(pl.List(pl.Float32))
