"""Polars jobs that turn the interaction log and catalogue into Feast sources. Pure
computation: frames in, frames out; `featurestore.store` writes them and runs Feast."""

from datetime import UTC, datetime

import polars as pl

# Static rows carry this time and never expire (views use ttl=0).
STATIC_TS = datetime(1970, 1, 1, tzinfo=UTC)
DAY = 86_400


def utc_seconds(expr: pl.Expr) -> pl.Expr:
    """Unix seconds as the tz-aware timestamp Feast joins on."""
    return pl.from_epoch(expr, time_unit="s").dt.replace_time_zone("UTC").alias(
        "event_timestamp")


def static_ts(n: int) -> pl.Series:
    return pl.Series("event_timestamp", [STATIC_TS] * n, dtype=pl.Datetime("us", "UTC"))
