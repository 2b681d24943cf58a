"""Logged requests written by anyone: `(user_id, instruction, timestamp, target_item_id)`
rows in CSV or parquet, validated like bring-your-own data (every problem with its line).

Each row becomes a test request of task `logged`. Its history is the user's interactions
strictly before its timestamp; a user without any (or unknown) takes the cold-start path.
Ids are the dataset's own (string ids through its `IdMap`).
Instructions longer than the online limit are refused, as the service would refuse them.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recdata.byo import ROW, _missing, _present, _read, _row_problems, _timestamp_expr
from recdata.dataset import Dataset
from recdata.errors import DataValidationError, Problem
from recdata.ids import IdMap

LOGGED_TASK = "logged"
REQUIRED = ["user_id", "instruction", "timestamp", "target_item_id"]
MAX_CHARS = 1000


def load_logged_requests(path: str | Path, ds: Dataset) -> pl.DataFrame:
    """Request rows in the generator's layout (request_id, user_id, task, instruction,
    target_item_id, timestamp, phrasing_set, split, seq, template_id)."""
    file = str(path)
    frame, _ = _read(Path(path))
    problems = _missing(frame, file, REQUIRED)
    if problems:
        raise DataValidationError(problems)
    problems += _present(frame, file, "user_id") + _present(frame, file, "target_item_id")
    problems += _row_problems(frame, file, _timestamp_expr().is_null(), "timestamp",
                              pl.format("unparseable timestamp {}",
                                        pl.col("timestamp").fill_null("null")))
    text = pl.col("instruction").str.strip_chars()
    problems += _row_problems(frame, file, text.is_null() | (text == ""), "instruction",
                              pl.lit("empty instruction"))
    problems += _row_problems(frame, file, pl.col("instruction").str.len_chars() > MAX_CHARS,
                              "instruction", pl.format("instruction is {} characters; the "
                                                       "limit is {}", pl.col("instruction")
                                                       .str.len_chars(), pl.lit(MAX_CHARS)))
    ids = ds.ids or IdMap()
    target = pl.col("target_item_id").str.strip_chars()
    encoded = ids.encode(frame.select(ROW, "target_item_id"), "target_item_id", "item")
    known = pl.lit(encoded["target_item_id"].is_in(ds.items["item_id"].implode())
                   .fill_null(False))
    problems += _row_problems(frame, file, target.is_not_null() & (target != "") & ~known,
                              "target_item_id",
                              pl.format("target_item_id {} is not in the catalogue", target))
    if frame.height == 0:
        problems.append(Problem(file, None, None, "no requests in the file"))
    if problems:
        raise DataValidationError(problems)
    rows = frame.select(
        pl.format("logged-{}", pl.col(ROW)).alias("request_id"),
        pl.col("user_id"),
        pl.lit(LOGGED_TASK).alias("task"),
        pl.col("instruction"),
        "target_item_id",
        _timestamp_expr().alias("timestamp"),
    )
    rows = ids.encode(ids.encode(rows, "target_item_id", "item"), "user_id", "user")
    rows = rows.with_columns(pl.col("user_id").fill_null(-1))  # unknown: cold start
    # seq = how many of the user's interactions precede the request (the protocol's order):
    # those strictly earlier; or, where the user interacted with the target at that very
    # time, the target's own position (ties in time are ordered by item id, recdata.split)
    before = rows.select("request_id", "user_id", "timestamp").join(
        ds.interactions.select("user_id", pl.col("timestamp").alias("t")), on="user_id",
    ).filter(pl.col("t") < pl.col("timestamp")).group_by("request_id").len("seq")
    from recdata.split import temporal_leave_one_out

    placed = rows.select("request_id", "user_id", "timestamp", "target_item_id").join(
        temporal_leave_one_out(ds.interactions).select(
            "user_id", pl.col("item_id").alias("target_item_id"), "timestamp",
            pl.col("seq").cast(pl.UInt32).alias("at")),
        on=["user_id", "target_item_id", "timestamp"]).group_by("request_id").agg(
        pl.col("at").min())
    before = before.join(placed, on="request_id", how="full", coalesce=True).select(
        "request_id", pl.coalesce("at", "seq").alias("seq"))
    return rows.join(before, on="request_id", how="left", maintain_order="left").select(
        "request_id", "user_id", "task", "instruction", "target_item_id", "timestamp",
        pl.lit(LOGGED_TASK).alias("phrasing_set"), pl.lit("test").alias("split"),
        pl.col("seq").fill_null(0).cast(pl.Int64), pl.lit(-1).cast(pl.Int64).alias("template_id"),
    )
