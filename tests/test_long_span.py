"""Logs that span decades build: features (decayed popularity over 60 years, rows before
1970 materialized online) and the knowledge graph, where the old jobs refused anything over
7,000 days."""

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feature_repo.ranker import service_name
from featurestore import store as fs
from recdata.dataset import Dataset
from recdata.synthetic import make_synthetic

YEAR = 365 * 86_400


@pytest.fixture(scope="module")
def decades():
    """The synthetic data with its timestamps stretched over 1958-2018 (60 years)."""
    ds = make_synthetic(n_users=60, n_items=80, interactions_per_user=20, seed=3)
    t = ds.interactions["timestamp"]
    span = (t - t.min()) / (t.max() - t.min())
    stretched = (-12 * YEAR + span * 60 * YEAR).cast(pl.Int64)
    return Dataset("decades", ds.interactions.with_columns(stretched.alias("timestamp")),
                   ds.items, None, ds.text_columns, ds.schema)


def test_sixty_year_log_builds_and_serves_rows_from_before_1970(make_repo, decades):
    repo, _ = make_repo(decades)
    stats = pl.read_parquet(repo.source_path(fs.feature_views()["item_stats"]))
    years = stats["event_timestamp"].dt.year()
    assert years.min() <= 1958 and years.max() >= 2017
    assert stats["popularity_30d"].is_finite().all()
    # an item touched only before 1970 is still served online
    last = stats.group_by("item_id").agg(pl.col("event_timestamp").max())
    old = last.filter(pl.col("event_timestamp").dt.year() < 1970)["item_id"].to_list()
    store = repo.store()
    reader = fs.OnlineReader(store, service_name("no_text"))
    ids = old[:3] or last["item_id"].head(3).to_list()
    got = reader.read_items(ids)
    assert got["item_stats__interactions"].is_not_null().all()


def test_sixty_year_log_builds_its_knowledge_graph(decades):
    from kg.triples import build_triples

    triples = build_triples(decades)
    assert triples.filter(pl.col("relation") == "interacted").height > 0


LASTFM = Path(os.environ.get("INSTRUCTRANK_LASTFM",
                             Path(__file__).resolve().parents[2] / "shared/data/lastfm"))


@pytest.mark.slow
@pytest.mark.skipif(not (LASTFM / "interactions.parquet").exists(),
                    reason=f"the Last.fm data is not at {LASTFM} (set INSTRUCTRANK_LASTFM)")
def test_lastfm_55_year_log_builds(make_repo):
    """The real Last.fm log (1956-2011, 70k interactions, 17.6k artists) through bring-your-
    own loading, the feature jobs, Feast and the KG triples."""
    from kg.triples import build_triples
    from recdata.byo import load_custom

    ds = load_custom(LASTFM / "interactions.parquet", LASTFM / "items.parquet")
    span = (ds.interactions["timestamp"].max() - ds.interactions["timestamp"].min()) / YEAR
    assert span > 50
    repo, result = make_repo(ds)
    assert result.rows["item_stats"] > 0
    assert np.isfinite(pl.read_parquet(repo.source_path(
        fs.feature_views()["item_stats"]))["popularity_7d"].to_numpy()).all()
    assert build_triples(ds).height > 70_000
