"""The real path on real data: MovieLens-100k (a sample of users), every baseline, every
task, the DuckDB file, quality.csv and the plot."""

import duckdb
import polars as pl
import pytest

from ranking.evaluation.beyond import BEYOND_METRICS
from ranking.evaluation.config import BASELINES, EvalConfig
from ranking.evaluation.harness import evaluate
from ranking.evaluation.metrics import METRICS, compute_metrics
from ranking.train import train
from recdata.instructions import TASKS


@pytest.mark.slow
def test_movielens_sample_end_to_end(movielens, data_dir, tmp_path):
    # the baselines: the ranker needs a feature repo built for this sample (test_ranker.py)
    cfg = EvalConfig(sample_users=80, models=BASELINES, data_dir=data_dir,
                     results_dir=tmp_path)
    train(cfg, dataset=movielens, progress=False)  # the hold-out KG the `kg` baseline reads
    result = evaluate(cfg, dataset=movielens, progress=False)
    paths = result.save()

    quality = pl.read_csv(paths["quality"])
    assert quality.columns == ["dataset", "task", "model", "metric", "value"]
    assert set(quality["model"]) == set(BASELINES)
    assert set(quality["metric"]) == {*METRICS, *BEYOND_METRICS}
    assert quality.height == len(BASELINES) * len(TASKS) * (len(METRICS) + len(BEYOND_METRICS))
    shares = quality.filter(~pl.col("metric").is_in(["ild@10", "ild_attr@10", "novelty@10"]))
    assert shares["value"].is_between(0, 1).all()
    assert quality.filter(pl.col("metric").str.starts_with("ild"))["value"].is_between(0, 2).all()
    assert (quality.filter(pl.col("metric") == "novelty@10")["value"] > 0).all()
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"

    # the DuckDB file reproduces the figures from its own rankings table
    con = duckdb.connect(str(paths["duckdb"]), read_only=True)
    try:
        tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
        assert {"requests", "rankings", "metrics", "tuning"} <= tables
        again = compute_metrics(con, requests="(SELECT * FROM requests WHERE split = 'test')")
    finally:
        con.close()
    assert again.sort("task", "model").select(METRICS).equals(
        result.metrics.sort("task", "model").select(METRICS))

    # held-out wording only at test time; the parquet request file is complete
    test = pl.read_parquet(paths["requests"]).filter(pl.col("split") == "test")
    assert (test["phrasing_set"] == "heldout").all()
    assert test.height == 80 * len(TASKS)
    ndcg = result.metrics.filter(pl.col("task") == "history")
    by_model = dict(zip(ndcg["model"], ndcg["ndcg@10"], strict=True))
    assert by_model["ease_lastn"] > by_model["popularity"]


@pytest.mark.slow
def test_fetch_is_cached_and_verified(data_dir):
    from recdata.movielens import fetch_movielens_100k, load_movielens_100k

    path, origin = fetch_movielens_100k(data_dir)
    assert origin == "cache"
    assert load_movielens_100k(path).summary()["interactions"] == 100_000
