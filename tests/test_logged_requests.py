"""`evaluate --requests FILE`: anyone's logged requests, validated with line numbers,
scored in the same harness beside the generated ones."""

from __future__ import annotations

import polars as pl
import pytest

from recdata.errors import DataValidationError
from recdata.logged import load_logged_requests


def _write(tmp_path, text: str):
    path = tmp_path / "logged.csv"
    path.write_text(text)
    return path


def test_every_bad_row_is_reported_with_its_line(tmp_path, synthetic):
    path = _write(tmp_path, "user_id,instruction,timestamp,target_item_id\n"
                            "1,a comedy,2004-01-01T00:00:00,3\n"
                            ",a comedy,2004-01-01T00:00:00,3\n"
                            "2,,2004-01-01T00:00:00,3\n"
                            "3,a drama,yesterday,999999\n")
    with pytest.raises(DataValidationError) as err:
        load_logged_requests(path, synthetic)
    text = str(err.value)
    for expected in ("logged.csv:3 [user_id]", "null user_id",
                     "logged.csv:4 [instruction]", "empty instruction",
                     "logged.csv:5 [timestamp]", "unparseable timestamp yesterday",
                     "target_item_id 999999 is not in the catalogue"):
        assert expected in text, (expected, text)


def test_a_user_the_data_does_not_know_takes_the_cold_start_path(tmp_path, synthetic):
    path = _write(tmp_path, "user_id,instruction,timestamp,target_item_id\n"
                            "someone-new,a comedy,2004-01-01T00:00:00,3\n")
    logged = load_logged_requests(path, synthetic)
    assert logged["user_id"].to_list() == [-1] and logged["seq"].to_list() == [0]


def test_missing_column_is_named(tmp_path, synthetic):
    path = _write(tmp_path, "user,instruction,timestamp,target_item_id\n1,a,1,1\n")
    with pytest.raises(DataValidationError, match="user_id"):
        load_logged_requests(path, synthetic)


def test_logged_requests_are_scored_without_seeing_the_future(tmp_path, synthetic):
    from ranking.evaluation.config import EvalConfig
    from ranking.evaluation.harness import evaluate

    inter = synthetic.interactions.sort("timestamp")
    late = inter.tail(40)
    rows = late.select("user_id", pl.lit("a drama please").alias("instruction"), "timestamp",
                       pl.col("item_id").alias("target_item_id"))
    rows = pl.concat([rows, pl.DataFrame({"user_id": [10**9], "instruction": ["a comedy"],
                                          "timestamp": [late["timestamp"][0]],
                                          "target_item_id": [late["item_id"][0]]})])
    path = tmp_path / "logged.parquet"
    rows.write_parquet(path)
    logged = load_logged_requests(path, synthetic)
    assert logged.height == 41
    # history = interactions strictly before the request, whatever the row order
    first = logged.filter(pl.col("user_id") == rows["user_id"][0]).row(0, named=True)
    before = inter.filter((pl.col("user_id") == first["user_id"])
                          & (pl.col("timestamp") < first["timestamp"])).height
    assert first["seq"] == before
    assert logged.filter(pl.col("user_id") == 10**9)["seq"].to_list() == [0]

    cfg = EvalConfig(dataset="synthetic", models=["popularity", "filter_popularity"],
                     tasks=["intent"], requests_file=path, data_dir=tmp_path / "data",
                     results_dir=tmp_path / "results")
    result = evaluate(cfg, dataset=synthetic, progress=False)
    scored = result.metrics.filter(pl.col("task").str.starts_with("logged"))
    assert set(scored["model"]) == {"popularity", "filter_popularity"}
    per_model = scored.group_by("model").agg(pl.col("requests").sum())
    assert (per_model["requests"] == 41).all()  # every row scored once, in its group
    # each group by the models of its position: test-position rows by the test cut, the
    # rest by models fitted only on interactions before the group's first request
    from ranking.evaluation.harness import prepare

    prep = prepare(cfg, synthetic, logged)
    logged_tasks = {t: cut for t, (_, cut) in prep.test_tasks.items()
                    if t.startswith("logged")}
    assert logged_tasks.get("logged") == "test"
    for task, cut in logged_tasks.items():
        if cut not in ("test", "val"):
            rows = prep.batches[("test", task)].requests
            assert prep.fits[cut].interactions["timestamp"].max() < rows["timestamp"].min()


def test_requests_at_the_test_position_are_scored_by_the_test_cut(tmp_path, synthetic):
    """The hand-written set's case: one request per user at their test target, all scored
    by the same models as the generated test requests, not by a fit before the earliest."""
    from ranking.evaluation.config import EvalConfig
    from ranking.prepare import prepare
    from recdata.split import temporal_leave_one_out

    test = temporal_leave_one_out(synthetic.interactions).filter(pl.col("split") == "test")
    rows = test.head(30).select("user_id", pl.lit("a drama").alias("instruction"),
                                "timestamp", pl.col("item_id").alias("target_item_id"))
    rows.write_csv(tmp_path / "r.csv")
    logged = load_logged_requests(tmp_path / "r.csv", synthetic)
    cfg = EvalConfig(dataset="synthetic", models=["popularity"], tasks=["intent"],
                     data_dir=tmp_path)
    prep = prepare(cfg, synthetic, logged)
    assert prep.test_tasks["logged"] == ("intent", "test")
    assert "logged_early" not in prep.test_tasks and len(prep.batches[("test", "logged")]) == 30
