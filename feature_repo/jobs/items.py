"""Item views: `item_stats` (daily), `item_content` and `item_text_embedding` (static)."""

from __future__ import annotations

import numpy as np
import polars as pl

from feature_repo.jobs import DAY, static_ts, utc_seconds
from feature_repo.jobs.decay import decayed_cumsum
from feature_repo.jobs.users import vectors_column

HALF_LIVES = {"popularity_7d": 7, "popularity_30d": 30}  # days


def item_stats(interactions: pl.DataFrame) -> pl.DataFrame:
    """One row per (item, day with interactions), available at the end of that day.

    Popularity is an exponentially decayed count: it changes only when the item is touched,
    so a refresh rewrites exactly the items that got new interactions, and the ranker can
    decay it further to request time if it wants (2^(-days/half_life)). Exact over any span
    (`decay.decayed_cumsum`): a 55-year log builds like a 5-month one."""
    daily = interactions.with_columns((pl.col("timestamp") // DAY).alias("day")).group_by(
        "item_id", "day").agg(
        pl.len().alias("n"),
        pl.col("rating").sum().alias("rating_sum"),
        pl.col("rating").count().alias("rating_n"),
        pl.col("timestamp").max().alias("last_interaction_ts"),
    ).sort("item_id", "day")
    group = daily["item_id"].to_numpy()
    day = daily["day"].to_numpy()
    decayed = [pl.Series(name, decayed_cumsum(daily["n"].to_numpy(), group, day, h),
                         dtype=pl.Float32) for name, h in HALF_LIVES.items()]
    rated = pl.col("rating_n").cum_sum().over("item_id")
    return daily.with_columns(
        pl.col("n").cum_sum().over("item_id").cast(pl.Int64).alias("interactions"),
        pl.when(rated > 0).then(pl.col("rating_sum").cum_sum().over("item_id") / rated)
        .cast(pl.Float32).alias("mean_rating"),
        *decayed,
    ).select("item_id", "interactions", "mean_rating", *HALF_LIVES, "last_interaction_ts",
             utc_seconds((pl.col("day") + 1) * DAY))


def item_serving(stats: pl.DataFrame, fields: tuple[str, ...]) -> pl.DataFrame:
    """item_stats rows packed into `vector`, `fields` in order (the view's field order, see
    `featurestore.store.packed_views`: one row per candidate instead of one per field keeps
    the hot-path lookup inside its latency budget; float64 so timestamps survive exactly)."""
    return stats.select(
        "item_id",
        pl.concat_list([pl.col(f).cast(pl.Float64) for f in fields]).alias("vector"),
        "event_timestamp",
    )


def item_content(items: pl.DataFrame) -> pl.DataFrame:
    return items.select(
        "item_id", pl.col("title").cast(pl.String), pl.col("year").cast(pl.Int64),
        pl.col("genres").cast(pl.List(pl.String)),
    ).with_columns(static_ts(items.height))


def item_text_embedding(item_ids: np.ndarray, vectors: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"item_id": item_ids.astype(np.int64)}).with_columns(
        vectors_column(vectors), static_ts(len(item_ids)))


def instruction_embedding(requests: pl.DataFrame, vectors: np.ndarray) -> pl.DataFrame:
    """request_id, embedding, event_timestamp (= the request's time)."""
    return requests.select(
        pl.col("request_id").cast(pl.String), utc_seconds(pl.col("timestamp")),
    ).insert_column(1, vectors_column(vectors))
