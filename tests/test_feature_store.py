"""The Feast repository for real: apply, materialize, point-in-time joins, online reads."""

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feature_repo.ranker import service_name
from featurestore import store as fs
from featurestore.build import refresh_features
from recdata.errors import FeatureStoreError

DAY = 86_400
NO_TEXT = service_name("no_text")  # builds without embeddings serve this one


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def test_leak_trap(make_repo, synthetic):
    """A row timestamped one second after the request, holding an extreme value, is never
    returned for that request; one second later it is."""
    repo, _ = make_repo(synthetic)
    inter = synthetic.interactions.sort("user_id", "timestamp")
    user = 5
    times = inter.filter(pl.col("user_id") == user)["timestamp"]
    t = int(times[10]) + 30  # between two interactions (synthetic gaps are >= 60 s)
    assert int(times[11]) > t + 1
    path = repo.source_path(fs.feature_views()["user_history"])
    source = pl.read_parquet(path)
    trap = source.filter(pl.col("user_id") == user).head(1).with_columns(
        pl.lit(10**9, pl.Int64).alias("n_interactions"),
        pl.lit(at(t + 1)).alias("event_timestamp"))
    pl.concat([source, trap]).write_parquet(path)
    rows = pl.DataFrame({"user_id": [user, user], "item_id": [1, 1],
                         "event_timestamp": [at(t), at(t + 1)]})
    got = fs.historical_features(repo, repo.store(), rows, ["user_history:n_interactions"])
    before = inter.filter((pl.col("user_id") == user) & (pl.col("timestamp") < t)).height
    assert before == 11
    assert got["user_history__n_interactions"].to_list() == [before, 10**9]
    # the ranker's own reads (as-of joins over the same sources) fall in no trap either
    pushed = fs.point_in_time(repo, rows, ["user_history:n_interactions"])
    assert pushed["user_history__n_interactions"].to_list() == [before, 10**9]


def test_point_in_time_reads_equal_feast_historical_features(make_repo, synthetic):
    """The ranker reads training rows through `fs.point_in_time`; for any entity rows (known
    and unknown ids, times between, before and after interactions) it returns what Feast's
    get_historical_features returns: same values, same types, same order."""
    repo, _ = make_repo(synthetic)
    rng = np.random.default_rng(5)
    t = synthetic.interactions["timestamp"]
    n = 300
    rows = pl.DataFrame({
        "user_id": rng.integers(1, 130, n), "item_id": rng.integers(1, 160, n),
        "event_timestamp": [at(int(x)) for x in rng.integers(int(t.min()) - DAY,
                                                             int(t.max()) + DAY, n)]})
    refs = ["user_history:n_interactions", "user_history:mean_rating",
            "user_history:genre_share", "user_history:last_items", "item_stats:interactions",
            "item_stats:popularity_7d", "item_stats:last_interaction_ts"]
    feast = fs.historical_features(repo, repo.store(), rows, refs)
    ours = fs.point_in_time(repo, rows, refs)
    assert ours.columns == feast.columns and ours.schema == feast.schema
    assert ours.to_dicts() == feast.to_dicts()
    assert ours["item_stats__interactions"].null_count() > 0  # some rows predate their item
    # a view kept in a warehouse goes through the offline store's own join, the rest stays
    # local, and the answer is the same
    mixed = fs.point_in_time(repo, rows, refs, via_feast={"item_stats"})
    assert mixed.schema == feast.schema and mixed.to_dicts() == feast.to_dicts()


def test_point_in_time_equals_recomputation(make_repo, synthetic):
    repo, _ = make_repo(synthetic)
    inter = synthetic.interactions
    sample = inter.sample(60, seed=3).select(
        "user_id", "item_id", pl.from_epoch("timestamp", "s").dt.replace_time_zone("UTC")
        .alias("event_timestamp"), pl.col("timestamp").alias("t"))
    got = fs.historical_features(repo, repo.store(), sample.drop("t"),
                                 ["user_history:n_interactions", "item_stats:interactions"])
    expect_user = sample.join(inter, on="user_id", suffix="_i").filter(
        pl.col("timestamp") < pl.col("t")).group_by("user_id", "t").len()
    expect_item = sample.join(inter, on="item_id", suffix="_i").filter(
        pl.col("timestamp") < pl.col("t") // DAY * DAY).group_by("item_id", "t").len()
    check = sample.join(expect_user.rename({"len": "eu"}), on=["user_id", "t"], how="left").join(
        expect_item.rename({"len": "ei"}), on=["item_id", "t"], how="left")
    assert got["user_history__n_interactions"].to_list() == check["eu"].to_list()
    assert got["item_stats__interactions"].to_list() == check["ei"].to_list()


def test_types_survive_nulls(make_repo):
    repo, _ = make_repo()
    rows = pl.DataFrame({"user_id": [1, 999_999], "item_id": [1, 999_999],
                         "event_timestamp": [at(2_000_000_000)] * 2})
    got = fs.historical_features(repo, repo.store(), rows, [
        "user_history:n_interactions", "item_stats:mean_rating", "item_stats:interactions",
        "user_history:last_items"])
    assert got.schema["user_history__n_interactions"] == pl.Int64
    assert got.schema["item_stats__mean_rating"] == pl.Float32
    assert got.schema["user_history__last_items"] == pl.List(pl.Int64)
    assert got["user_history__n_interactions"][1] is None
    assert got["item_stats__interactions"][0] is not None


def test_online_reader_matches_public_api_and_offline_rows(make_repo, synthetic):
    repo, _ = make_repo(synthetic)
    store = repo.store()
    reader = fs.OnlineReader(store, NO_TEXT)
    items = [*range(1, 41), 10**6]
    got = reader.read(3, items)
    api = fs.online_features_api(store, 3, items, NO_TEXT)
    for col, value in got.user.items():
        assert api[col][0] == pytest.approx(value)
    # the reader unpacks item_serving's vectors; the public API reads item_stats itself
    item_cols = [c for c in got.items.columns if c.startswith("item_stats__")]
    assert item_cols and all(c in api for c in item_cols)
    for name in item_cols:
        col = got.items[name].to_list()
        assert col[-1] is None and api[name][-1] is None  # the unknown item
        assert col[:-1] == pytest.approx(api[name][:-1], rel=1e-6)
    # unpacked serving values equal the named offline rows (latest per item)
    latest = pl.read_parquet(repo.source_path(fs.feature_views()["item_stats"])).sort(
        "event_timestamp").group_by("item_id").last()
    joined = got.items.join(latest, on="item_id")
    assert joined.height == 40
    assert (joined["item_stats__interactions"] == joined["interactions"]).all()
    assert np.allclose(joined["item_stats__popularity_7d"], joined["popularity_7d"])


def test_missing_service_is_named(make_repo):
    repo, _ = make_repo()
    with pytest.raises(FeatureStoreError,
                       match=rf"'{service_name('full')}' is not applied.*{NO_TEXT}"):
        fs.OnlineReader(repo.store(), service_name("full"))


def test_unknown_entities_are_cold_start(make_repo):
    repo, _ = make_repo()
    got = fs.OnlineReader(repo.store(), NO_TEXT).read(10**7, [1, 10**7])
    assert not got.user_known
    assert all(v is None for v in got.user.values())
    assert got.items["item_stats__interactions"].to_list()[1] is None


def test_sqlite_and_redis_serve_identical_values(make_repo, synthetic, redis_url, data_dir,
                                                 tmp_path):
    sqlite_repo, _ = make_repo(synthetic, embeddings=True, data_dir=data_dir)
    redis_repo, _ = make_repo(synthetic, embeddings=True, online="redis", redis_url=redis_url,
                              repo=tmp_path / "redis_repo", data_dir=data_dir)
    a = fs.OnlineReader(sqlite_repo.store(), service_name("full"))
    b = fs.OnlineReader(redis_repo.store("redis", redis_url), service_name("full"))
    items = synthetic.items["item_id"].to_list()
    for user in (1, 17, 60, 10**7):
        x, y = a.read(user, items), b.read(user, items)
        assert x.user == y.user
        assert x.items.equals(y.items)
    profile = a.read(17, items).user["user_profile_embedding__embedding"]
    assert len(profile) == 384 and np.linalg.norm(profile) == pytest.approx(1.0, abs=1e-4)


def _snapshot(reader, users, items):
    out_users = {u: reader.read(u, [1]).user for u in users}
    return out_users, reader.read(users[0], items).items


def test_incremental_refresh_changes_exactly_the_touched_entities(make_repo, synthetic):
    repo, result = make_repo(synthetic)
    users = synthetic.interactions["user_id"].unique().sort().to_list()
    items = synthetic.items["item_id"].to_list()
    reader = fs.OnlineReader(repo.store(), NO_TEXT)
    before_users, before_items = _snapshot(reader, users, items)
    t = int(datetime.fromisoformat(result.as_of).timestamp()) + 3600
    new = pl.DataFrame({"user_id": [3, 7, 7], "item_id": [5, 9, 5],
                        "timestamp": [t, t + 10, t + 20], "rating": [5.0, 4.0, 3.0]})
    refresh_features(repo.path, new)
    after_users, after_items = _snapshot(fs.OnlineReader(repo.store(), NO_TEXT), users, items)
    changed_users = {u for u in users if before_users[u] != after_users[u]}
    diff = before_items.join(after_items, on="item_id", suffix="_new").filter(
        pl.col("item_stats__interactions") != pl.col("item_stats__interactions_new"))
    assert changed_users == {3, 7}
    assert set(diff["item_id"]) == {5, 9}
    assert after_users[7]["user_seen__items"][:2] == [5, 9]  # most recent first


def test_refresh_refuses_interactions_older_than_the_store(make_repo):
    repo, _ = make_repo()
    old = pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1_000_000_000]})
    with pytest.raises(FeatureStoreError, match="not after the materialized time"):
        refresh_features(repo.path, old)


def test_source_that_no_longer_matches_its_view_is_named(make_repo):
    repo, _ = make_repo()
    path = repo.source_path(fs.feature_views()["item_stats"])
    pl.read_parquet(path).rename({"popularity_7d": "pop7"}).write_parquet(path)
    with pytest.raises(FeatureStoreError,
                       match="feature view 'item_stats': column 'popularity_7d' is missing"):
        fs.apply(repo, repo.store())
    pl.read_parquet(path).rename({"pop7": "popularity_7d"}).with_columns(
        pl.col("mean_rating").cast(pl.String)).write_parquet(path)
    with pytest.raises(FeatureStoreError, match=r"'mean_rating' is String .* declares Float32"):
        fs.materialize(repo, repo.store(), end=at(2_000_000_000))


def test_rebuild_with_nothing_changed_reuses_sources(make_repo, synthetic):
    repo, first = make_repo(synthetic)
    _, second = make_repo(synthetic, repo=repo.path)
    assert not first.reused_sources and second.reused_sources
    assert first.fingerprint == second.fingerprint


@pytest.mark.slow
def test_movielens_build_and_lookup(make_repo, movielens, tmp_path):
    repo, result = make_repo(movielens)
    assert result.rows["item_content"] == 1682
    assert result.as_of.startswith("1998-04-23")
    got = fs.OnlineReader(repo.store(), NO_TEXT).read(42, [1, 50])
    assert got.user_known and got.user["user_history__n_interactions"] == 183
    when = [at(880_000_000), at(881_108_000)]
    hist = fs.historical_features(repo, repo.store(), pl.DataFrame(
        {"user_id": [42, 42], "item_id": [50, 50], "event_timestamp": when}),
        ["user_history:n_interactions"])
    counts = [movielens.interactions.filter(
        (pl.col("user_id") == 42) & (pl.col("timestamp") < int(w.timestamp()))).height
        for w in when]
    assert counts[0] == 0 and counts[1] > 0
    assert hist["user_history__n_interactions"].to_list() == [None, counts[1]]


def test_feast_cli_applies_the_repo_from_its_folder(make_repo, tmp_path):
    """`cd feature_repo && feast apply` as a data scientist runs it, on a copy of the repo."""
    import shutil
    import subprocess
    import sys

    repo, _ = make_repo()
    for f in ("definitions.py", ".feastignore"):
        shutil.copy(fs.PACKAGE_REPO / f, repo.path / f)
    feast = str(Path(sys.executable).parent / "feast")
    done = subprocess.run([feast, "apply"], cwd=repo.path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = subprocess.run([feast, "feature-views", "list"], cwd=repo.path,
                            capture_output=True, text=True, timeout=300)
    assert "user_history" in listed.stdout and "item_serving" in listed.stdout


def test_cli_build_and_lookup(tmp_path):
    from typer.testing import CliRunner

    from serve.cli import app

    repo = tmp_path / "repo"
    repo.mkdir()
    runner = CliRunner()
    out = runner.invoke(app, ["features", "build", "--dataset", "synthetic", "--repo", str(repo),
                              "--no-embeddings", "--data-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "user_history" in out.output
    out = runner.invoke(app, ["features", "lookup", "--user", "1", "--items", "1,2",
                              "--repo", str(repo), "--service", "ranker_nope"])
    assert out.exit_code == 1 and NO_TEXT in out.output
    out = runner.invoke(app, ["features", "lookup", "--user", "1", "--items", "1,2",
                              "--repo", str(repo)])  # no embeddings: the no-text service
    assert out.exit_code == 0, out.output
    assert "user 1: known" in out.output and "popularity_7d" in out.output


def test_two_writers_of_one_repo_are_refused_with_the_holder_named(tmp_path):
    """A build or refresh holds the repo's writer lock; a second one fails at once, naming
    who holds it, and the repo is free again when the first ends."""
    import os

    from featurestore import build
    from featurestore.store import FeatureRepo
    from recdata.errors import FeatureStoreError

    repo = FeatureRepo(tmp_path / "repo")
    cfg = build.FeatureBuildConfig(dataset="synthetic", repo=repo.path,
                                   data_dir=tmp_path / "data")
    with build.writer_lock(repo):
        with pytest.raises(FeatureStoreError, match=f"being written by pid {os.getpid()}"):
            build.build_features(cfg, progress=False)
        with pytest.raises(FeatureStoreError, match="one `features build` or `features "
                                                    "refresh` at a time"):
            build.refresh_features(repo.path, pl.DataFrame({"user_id": [1]}))
    with build.writer_lock(repo):  # released: taken again
        pass
