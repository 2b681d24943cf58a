"""Temporal leave-one-out, the protocol every figure in this project uses.

Per user, interactions are ordered by timestamp, and equal timestamps by ascending item id
(on ML-100k 44% of test targets share a timestamp with the item before them, and this rule
moves every figure by about 2x, so it is part of the protocol, not a detail). The last
interaction is the test target, the second-to-last the validation target, the rest train.
Users with fewer than three interactions stay wholly in train: they have nothing to test.
"""

from __future__ import annotations

import polars as pl

SPLITS = ("train", "val", "test")


def temporal_leave_one_out(interactions: pl.DataFrame) -> pl.DataFrame:
    """Interactions with `seq` (0-based position in the user's ordered history) and `split`."""
    ordered = interactions.sort(["user_id", "timestamp", "item_id"]).with_columns(
        pl.int_range(pl.len()).over("user_id").alias("seq"),
        pl.len().over("user_id").alias("_n"),
    )
    return ordered.with_columns(
        pl.when(pl.col("_n") < 3).then(pl.lit("train"))
        .when(pl.col("seq") == pl.col("_n") - 1).then(pl.lit("test"))
        .when(pl.col("seq") == pl.col("_n") - 2).then(pl.lit("val"))
        .otherwise(pl.lit("train")).alias("split")
    ).drop("_n")


def training_targets_removed(split: pl.DataFrame, last: int) -> pl.DataFrame:
    """The training rows without each user's last `last` training positions: what models may
    learn from when they score learning-to-rank requests placed at those positions."""
    train = split.filter(pl.col("split") == "train")
    if last <= 0:
        return train
    return train.filter(pl.col("seq").rank("ordinal", descending=True).over("user_id") > last)
