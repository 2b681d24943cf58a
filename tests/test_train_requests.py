"""`train --train-requests FILE`: logged requests with the item each person chose teach the
ranker beside the generated ones, and the evaluation stops scoring what they taught."""

from __future__ import annotations

import numpy as np
import polars as pl

from ranking.evaluation.config import EvalConfig
from ranking.ltr.training import _logged_weights
from recdata.split import temporal_leave_one_out


def _test_targets(synthetic, users: slice) -> pl.DataFrame:
    test = temporal_leave_one_out(synthetic.interactions).filter(pl.col("split") == "test")
    return test.sort("user_id")[users].select(
        "user_id", pl.lit("a drama with a twist, nothing too long").alias("instruction"),
        "timestamp", pl.col("item_id").alias("target_item_id"))


def test_learners_test_requests_leave_every_task(tmp_path, synthetic):
    from ranking.prepare import prepare
    from recdata.logged import load_logged_requests

    _test_targets(synthetic, slice(0, 20)).write_csv(tmp_path / "learn.csv")
    _test_targets(synthetic, slice(10, 30)).write_csv(tmp_path / "score.csv")
    cfg = EvalConfig(dataset="synthetic", models=["popularity"], tasks=["intent", "history"],
                     data_dir=tmp_path, train_requests_file=tmp_path / "learn.csv")
    prep = prepare(cfg, synthetic, load_logged_requests(tmp_path / "score.csv", synthetic))
    learners = set(pl.read_csv(tmp_path / "learn.csv")["user_id"])
    assert prep.held_out_users == 20
    tests = prep.requests.filter(pl.col("split") == "test")
    assert not learners & set(tests["user_id"]), "a learner's target would be scored"
    scored = set(pl.read_csv(tmp_path / "score.csv")["user_id"]) - learners
    assert set(tests.filter(pl.col("task") == "logged")["user_id"]) == scored
    # every other user's generated requests are still scored, the same as without the file
    plain = prepare(cfg.model_copy(update={"train_requests_file": None}), synthetic)
    kept = plain.requests.filter((pl.col("split") == "test")
                                 & ~pl.col("user_id").is_in(list(learners)))
    assert kept.height == tests.filter(pl.col("task") != "logged").height
    # at the test position: features from the test cut, which holds none of their targets
    [(fit, batch)] = prep.train_logged
    assert fit is prep.fits["test"] and len(batch) == 20
    held = fit.interactions.join(batch.requests.select(
        "user_id", pl.col("target_idx").alias("item_idx")), on=["user_id", "item_idx"])
    assert held.height == 0


def test_scoring_only_the_learners_is_refused(tmp_path, synthetic):
    import pytest

    from ranking.prepare import prepare
    from recdata.errors import ConfigError
    from recdata.logged import load_logged_requests

    _test_targets(synthetic, slice(0, 20)).write_csv(tmp_path / "learn.csv")
    cfg = EvalConfig(dataset="synthetic", models=["popularity"], tasks=["intent"],
                     data_dir=tmp_path, train_requests_file=tmp_path / "learn.csv",
                     requests_file=tmp_path / "learn.csv")
    with pytest.raises(ConfigError, match="training labels"):
        prepare(cfg, synthetic, load_logged_requests(tmp_path / "learn.csv", synthetic))


def test_the_training_fingerprint_reads_the_file(tmp_path):
    path = tmp_path / "learn.csv"
    path.write_text("user_id,instruction,timestamp,target_item_id\n1,a,2004-01-01,3\n")
    cfg = EvalConfig(dataset="synthetic", train_requests_file=path)
    before = cfg.training_fingerprint("data")
    path.write_text("user_id,instruction,timestamp,target_item_id\n1,b,2004-01-01,3\n")
    assert cfg.training_fingerprint("data") != before
    assert EvalConfig(dataset="synthetic").training_fingerprint("data") != before


def test_logged_rows_carry_their_share_of_the_weight():
    w = _logged_weights(900, 30, 0.2)
    assert (w[:900] == 1).all() and np.isclose(w[900:].sum() / w.sum(), 0.2)
    assert (_logged_weights(900, 30, 0.0)[900:] == 0).all()


def test_the_ranker_learns_from_logged_requests(tmp_path, trained, synthetic, encoder):
    from ranking.prepare import prepare
    from ranking.scorers.base import ScorerContext
    from ranking.train import ltr_kg, ltr_resources

    _test_targets(synthetic, slice(0, 40)).write_csv(tmp_path / "learn.csv")
    cfg = trained["cfg"].model_copy(update={"train_requests_file": tmp_path / "learn.csv"})
    prep = prepare(cfg, synthetic)
    context = ScorerContext(encoder=encoder)
    context.kg = ltr_kg(cfg, synthetic, progress=False).embeddings
    res = ltr_resources(cfg, synthetic, prep, context, progress=False)
    res.models_dir = tmp_path / "models"
    ts = res.training_set()
    assert 0 < ts.logged_groups <= 40 and ts.weights is not None
    logged_rows = ts.groups[-ts.logged_groups:].sum()
    share = ts.weights[-logged_rows:].sum() / ts.weights.sum()
    assert np.isclose(share, cfg.ltr.logged_share)
    model = res.train("no_kg")
    assert model.extra["logged_train_requests"] == ts.logged_groups
    # the same training without them is another model, under another key
    plain = ltr_resources(trained["cfg"], synthetic, prepare(trained["cfg"], synthetic),
                          context, progress=False)
    plain.models_dir = tmp_path / "models"
    other = plain.train("no_kg")
    assert other.key != model.key
    assert "logged_train_requests" in other.extra and other.extra["logged_train_requests"] == 0
