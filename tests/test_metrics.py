"""Metrics against values computed by hand on a toy ranking."""

import math

import polars as pl
import pytest

from ranking.evaluation.metrics import metrics_of

REQUESTS = pl.DataFrame({
    "request_id": ["a", "b", "c", "d"],
    "task": ["history"] * 4,
    "target_item_id": [10, 20, 30, 40],
})


def rows(protocol, request_id, items):
    return pl.DataFrame({
        "model": "m", "task": "history", "protocol": protocol, "request_id": request_id,
        "rank": list(range(1, len(items) + 1)), "item_id": items,
        "score": [float(-i) for i in range(len(items))],
    })


def test_hand_computed_values():
    # a: target at rank 1; b: rank 3; c: rank 15 (in top-20, not top-10); d: missing.
    full = pl.concat([
        rows("full", "a", [10, 1, 2]),
        rows("full", "b", [1, 2, 20]),
        rows("full", "c", [*range(100, 114), 30]),
        rows("full", "d", [1, 2, 3]),
        # sampled: a rank 2, b rank 11, c and d absent
        rows("sampled", "a", [5, 10]),
        rows("sampled", "b", [*range(200, 210), 20]),
    ])
    m = metrics_of(full, REQUESTS).row(0, named=True)
    assert m["requests"] == 4
    assert m["hr@10"] == pytest.approx(2 / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3) / 4)
    assert m["recall@20"] == pytest.approx(3 / 4)
    assert m["sampled_hr@10"] == pytest.approx(1 / 4)
    assert m["sampled_ndcg@10"] == pytest.approx((1 / math.log2(3)) / 4)


def test_requests_without_any_rows_count_as_misses():
    only_a = rows("full", "a", [10])
    m = metrics_of(only_a, REQUESTS).row(0, named=True)
    assert m["requests"] == 4
    assert m["hr@10"] == pytest.approx(0.25)


def test_models_and_tasks_are_reported_separately():
    two = pl.concat([rows("full", "a", [10]),
                     rows("full", "a", [1, 10]).with_columns(pl.lit("n").alias("model"))])
    m = metrics_of(two, REQUESTS).sort("model")
    assert m["model"].to_list() == ["m", "n"]
    assert m["mrr@10"].to_list() == pytest.approx([0.25, 0.125])
