"""Point-in-time checks: no test target, and nothing at or after a request's position,
reaches what a model is fitted on or conditioned on. The checks recompute order from the raw
interactions, independently of `ranking.inputs`, and are shown to fire on a planted leak."""

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from ranking.evaluation.config import EvalConfig
from ranking.evaluation.harness import prepare
from ranking.inputs import RequestBatch


def history_rows(batch: RequestBatch, prep) -> pl.DataFrame:
    h = batch.history.tocoo()
    reqs = batch.requests.with_row_index("row").select(
        "row", "user_id", "task", pl.col("target_item_id"),
        pl.col("timestamp").alias("target_ts"))
    items = prep.catalogue.items.select("item_idx", "item_id")
    hist = pl.DataFrame({"row": h.row.astype(np.uint32), "item_idx": h.col.astype(np.int64)})
    hist = hist.join(items, on="item_idx").join(reqs, on="row")
    raw = prep.dataset.interactions.select("user_id", "item_id", pl.col("timestamp").alias("ts"))
    return hist.join(raw, on=["user_id", "item_id"], how="left")


def assert_no_future_in_history(batch: RequestBatch, prep) -> None:
    rows = history_rows(batch, prep)
    assert rows["ts"].null_count() == 0, "history holds an item the user never interacted with"
    later = rows.filter((pl.col("ts") > pl.col("target_ts")) | (
        (pl.col("ts") == pl.col("target_ts")) & (pl.col("item_id") >= pl.col("target_item_id"))))
    assert later.height == 0, f"{later.height} history items at or after the request"
    assert rows.filter(pl.col("task") == "search").height == 0, "search must be cold start"


def assert_fit_excludes_targets(prep, cut: str, forbidden_splits: list[str]) -> None:
    fit = prep.fits[cut].interactions.select("user_id", "item_idx")
    targets = prep.requests.filter(pl.col("split").is_in(forbidden_splits))
    targets = prep.catalogue.index(targets.select("user_id", "target_item_id"),
                                   "target_item_id", "item_idx")
    leaked = fit.join(targets, on=["user_id", "item_idx"], how="semi")
    assert leaked.height == 0, f"{leaked.height} {forbidden_splits} targets in the {cut} fit"
    # nothing of a user at or after their first held-out target either
    first = prep.requests.filter(pl.col("split").is_in(forbidden_splits)).group_by(
        "user_id").agg(pl.col("seq").min().alias("cut_seq"))
    after = prep.fits[cut].interactions.join(first, on="user_id").filter(
        pl.col("seq") >= pl.col("cut_seq"))
    assert after.height == 0


@pytest.fixture(scope="module")
def prep(synthetic):
    return prepare(EvalConfig(dataset="synthetic", models=["popularity"]), synthetic)


def test_request_histories_hold_only_the_past(prep):
    for batch in prep.batches.values():
        assert_no_future_in_history(batch, prep)


def test_histories_are_complete(prep):
    batch = prep.batches[("test", "history")]
    sizes = np.diff(batch.history.indptr)
    assert (sizes == batch.requests["seq"].to_numpy()).all()


def test_fit_data_holds_no_evaluation_target(prep):
    assert_fit_excludes_targets(prep, "val", ["val", "test"])
    assert_fit_excludes_targets(prep, "test", ["test"])


def test_the_check_catches_a_planted_leak(prep):
    batch = prep.batches[("test", "history")]
    targets = batch.requests["target_idx"].to_numpy()
    leak = sp.csr_matrix((np.ones(len(targets)), (np.arange(len(targets)), targets)),
                         shape=batch.history.shape)
    leaky = RequestBatch(batch.requests, (batch.history + leak).tocsr(), batch.n_items)
    with pytest.raises(AssertionError, match="at or after the request"):
        assert_no_future_in_history(leaky, prep)


def test_equal_timestamps_use_ascending_item_id(prep):
    """Same-second interactions: the one with the larger item id is the later one."""
    from recdata.split import temporal_leave_one_out

    inter = pl.DataFrame({"user_id": [1] * 4, "item_id": [9, 3, 5, 7],
                          "timestamp": [10, 20, 20, 30], "rating": [1.0] * 4})
    out = temporal_leave_one_out(inter).sort("seq")
    assert out["item_id"].to_list() == [9, 3, 5, 7]
    assert out["split"].to_list() == ["train", "train", "val", "test"]
