"""Training-serving parity and time: the online feature frame of a request equals the offline
(point-in-time) frame of the same (user, instruction, time, candidates), before and after a
`features refresh` reaches a running recommender."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime

import numpy as np
import polars as pl
import pytest

from featurestore import store as fs
from featurestore.build import refresh_features
from ranking.ltr.features import assemble, store_columns
from ranking.ltr.training import offline_rows
from ranking.recommend import Recommender, RecommenderConfig
from recdata.frames import float_block

DAY = 86_400


def _offline_frame(rec: Recommender, repo: fs.FeatureRepo, user_id, now: int):
    """The same request's frame through the offline path: point-in-time rows of the Feast
    sources as of `now`, the same candidates, the same assembly."""
    req = rec._features(user_id, "a light comedy", now, {})
    batch, known, cands, online = req.batch, req.known, req.cands, req.frame
    user_rows, item_rows = offline_rows(repo, batch, rec.item_ids[cands.idx],
                                        store_columns(rec.model.features))
    offline = assemble(batch, cands, user_rows, item_rows, rec.items, kg=rec.context.kg,
                       anonymous=np.array([not known]), features=rec.model.features)
    return online, offline, cands


def _assert_equal_frames(online: pl.DataFrame, offline: pl.DataFrame) -> None:
    assert online.columns == offline.columns
    for name in online.columns:
        a, b = online[name].to_numpy(), offline[name].to_numpy()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True,
                                   err_msg=f"feature {name} differs online and offline")


@pytest.fixture
def served(trained, tmp_path):
    """A private copy of the trained repo and models (refresh writes to them)."""
    repo, data = tmp_path / "repo", tmp_path / "data"
    shutil.copytree(trained["repo"], repo)
    shutil.copytree(trained["data"], data, symlinks=True)
    return repo, data


@pytest.mark.slow
def test_online_equals_offline_and_a_refresh_reaches_the_running_recommender(served,
                                                                               synthetic):
    repo_path, data = served
    repo = fs.FeatureRepo(repo_path)
    rec = Recommender.load(RecommenderConfig(repo=repo_path, data_dir=data))
    as_of = int(datetime.fromisoformat(
        json.loads((repo.sources / "meta.json").read_text())["as_of"]).timestamp())
    log = synthetic.interactions
    user = int(log["user_id"].value_counts().sort("count")["user_id"][-1])
    now = as_of + 2 * DAY
    # a known user, an id the store has never seen (cold), and an anonymous request
    for user_id in (user, 10**9, None):
        online, offline, _ = _offline_frame(rec, repo, user_id, now)
        _assert_equal_frames(online, offline)
    before = rec.feature_frame(user, "a light comedy", now=now)

    # the user interacts with an item that was a candidate, after the build; refresh
    new_item = int(before["item_id"][0])
    t = as_of + 3600
    refresh_features(repo_path, pl.DataFrame({"user_id": [user], "item_id": [new_item],
                                              "timestamp": [t], "rating": [5.0]}),
                     data_dir=data)
    # the same running recommender, no restart: the new interaction is excluded...
    after = rec.feature_frame(user, "a light comedy", now=now)
    assert new_item not in after["item_id"].to_list()
    # ...and its features are the refreshed ones: day counts from the new last interaction
    assert after["user_days_since_last"].to_list() == pytest.approx([(now - t) / DAY]
                                                                    * after.height)
    assert (after["user_days_since_last"] >= 0).all() and (after["item_days_since_last"]
                                                           .drop_nans() >= 0).all()
    assert after["user_interactions"][0] == before["user_interactions"][0] + 1
    # and still equal to the offline path over the refreshed sources
    for user_id in (user, 10**9, None):
        online, offline, _ = _offline_frame(rec, repo, user_id, now)
        _assert_equal_frames(online, offline)


@pytest.mark.slow
def test_request_time_is_the_clock_unless_given(recommender):
    import time

    before = int(time.time())
    frame = recommender.feature_frame(None, "a comedy")
    assert recommender.request_time(None) >= before
    assert recommender.request_time("data-end") == recommender.data_end() > 0
    assert recommender.request_time("2001-09-09T01:46:40+00:00") == 1_000_000_000
    assert recommender.request_time(1_000_000_000) == 1_000_000_000
    # the clock is long after the synthetic log: day counts are large and never negative
    assert (frame["item_days_since_last"].drop_nans() > 0).all()
    from recdata.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="ISO 8601"):
        recommender.request_time("yesterday-ish")


@pytest.mark.slow
def test_serving_starts_and_answers_without_the_raw_sources(served, synthetic):
    """Start-up reads the store and artifacts only: with the feature repo's `sources/`
    moved away (raw interactions, items, offline sources), the recommender loads, and a
    known user still gets history-based candidates with their seen items excluded."""
    repo_path, data = served
    sources = repo_path / "data" / "sources"
    sources.rename(repo_path / "data" / "moved-away")
    rec = Recommender.load(RecommenderConfig(repo=repo_path, data_dir=data))
    user = int(synthetic.interactions["user_id"][0])
    seen = set(synthetic.interactions.filter(pl.col("user_id") == user)["item_id"].to_list())
    got = rec.recommend(user, "a light comedy", 10, now="data-end")
    assert len(got.items) == 10 and not got.cold_start
    assert not {i.item_id for i in got.items} & seen
    assert not sources.exists()


def test_kept_item_rows_are_the_stores_until_it_is_materialized_again(served):
    """cached_items answers from rows kept since the last materialization; a new one (the
    registry file rewritten) drops them all."""
    repo_path, data = served
    rec = Recommender.load(RecommenderConfig(repo=repo_path, data_dir=data))
    reader = rec.reader
    ids = rec.item_ids[:30].tolist()
    assert reader.cached_items(ids).equals(reader.read_items(ids))
    assert reader.cached_items(ids[::-1]).equals(reader.read_items(ids[::-1]))
    assert set(ids) <= set(reader._items.at)  # (with the load's warm-up request's)
    # the kept float columns, converted once, are the conversion of the rows asked for
    rows, floats = reader.cached_item_block(ids[::-1] + ids[:4])
    names, block = float_block(reader.read_items(ids[::-1] + ids[:4]))
    assert rows.equals(reader.read_items(ids[::-1] + ids[:4])) and list(floats) == names
    assert all(np.array_equal(floats[c], block[:, i], equal_nan=True)
               for i, c in enumerate(names))
    registry = reader._registry
    stat = registry.stat()  # a materialization rewrites the registry file
    os.utime(registry, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert reader.cached_items(ids[:3]).equals(reader.read_items(ids[:3]))
    assert set(reader._items.at) == set(ids[:3]), "a new materialization drops every row"


def test_user_values_are_what_a_frame_of_the_read_converts_to(served, synthetic):
    """The assembly reads the user columns as arrays made straight from the store's answer
    (a one-user frame and its query cost ~1 ms): the same floats, to the bit, as the frame
    path's conversion, for users with a history and one the store does not know."""
    repo_path, data = served
    rec = Recommender.load(RecommenderConfig(repo=repo_path, data_dir=data))
    reader = rec.reader
    users = reader.read_users([*synthetic.interactions["user_id"].unique().sort()
                               .head(5).to_list(), 10**9])
    columns = [c for c in reader.user_columns if c in rec._user_reads]
    values = reader.user_values(users, columns)
    assert values is not None and set(values) == set(columns)
    frame = pl.DataFrame([{c: u.get(c) for c in columns} for u in users],
                         schema={c: reader.types[c] for c in columns})
    names, block = float_block(frame)
    for i, c in enumerate(names):
        assert np.array_equal(values[c], block[:, i], equal_nan=True), c
    for c in set(columns) - set(names):  # the list columns
        rows = frame[c].to_list()
        width = values[c].shape[1]
        expected = np.array([r if r is not None else [np.nan] * width for r in rows],
                            dtype=np.float64)
        assert np.array_equal(values[c], expected, equal_nan=True), c
        assert np.isnan(values[c][-1]).all()  # the unknown user
    # lists of several lengths are not an array: the caller builds the frame instead
    listed = [c for c in columns if c not in names]
    if listed:
        ragged = [{**users[0], listed[0]: [0.5] * n} for n in (1, 2)]
        assert reader.user_values(ragged, listed) is None


def test_start_up_reads_the_most_popular_items_rows_into_memory(served, synthetic):
    """`keep_items`: the rows of that many items, most interacted-with first, are read at
    start-up (no request waits on the store for them); 0 reads only what requests name."""
    repo_path, data = served
    everything = Recommender.load(RecommenderConfig(repo=repo_path, data_dir=data))
    assert set(everything.reader._items.at) == set(everything.item_ids.tolist())
    rec = Recommender.load(RecommenderConfig(repo=repo_path, data_dir=data, keep_items=0))
    reader = rec.reader
    reader._items.reset(None)  # what the warm-up request read, forgotten
    counts = synthetic.interactions.group_by("item_id").len().sort(
        ["len", "item_id"], descending=[True, False])
    rec.keep_item_rows(3)
    assert set(reader._items.at) == set(counts["item_id"].head(3).to_list())
    rec.keep_item_rows(0)
    assert len(reader._items.at) == 3
    ids = rec.item_ids.tolist()
    assert reader.cached_items(ids).equals(reader.read_items(ids))


@pytest.mark.slow
def test_a_refresh_under_load_fails_no_request_tears_no_read_and_is_idempotent(served,
                                                                              synthetic):
    """`instructrank features refresh` (its own process, as an operator runs it) while this
    process reads users and answers requests without pause: no request fails; every read
    of a user is wholly the state before or wholly the state after (Feast writes view by
    view: a read mixing them would be a user who never existed); the new state is served
    afterwards without a restart; the same refresh run again changes nothing."""
    import subprocess
    import sys
    import threading

    repo_path, data = served
    repo = fs.FeatureRepo(repo_path)
    rec = Recommender.load(RecommenderConfig(repo=repo_path, data_dir=data))
    as_of = int(datetime.fromisoformat(
        json.loads((repo.sources / "meta.json").read_text())["as_of"]).timestamp())
    counts = synthetic.interactions["user_id"].value_counts().sort("count", descending=True)
    users = [int(u) for u in counts["user_id"][:12]]
    items = synthetic.items["item_id"].to_list()
    before = {u: rec.reader.read_user(u) for u in users}
    new = pl.DataFrame({"user_id": users, "item_id": [int(items[i]) for i in
                                                      range(len(users))],
                        "timestamp": [as_of + 60 * (i + 1) for i in range(len(users))],
                        "rating": [4.0] * len(users)})
    file = repo_path.parent / "new.csv"
    new.write_csv(file)

    reads: list[tuple[int, dict]] = []
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def read_users() -> None:
        while not stop.is_set():
            for u in users:
                reads.append((u, rec.reader.read_user(u)))

    def ask() -> None:
        while not stop.is_set():
            for u in users[:4]:
                try:
                    rec.recommend(u, "something light", 5)
                    answered[0] += 1
                except Exception as exc:  # every failure is reported, none hidden
                    failures.append(f"{type(exc).__name__}: {exc}")

    def refresh() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "serve.cli", "features", "refresh", "--interactions",
             str(file), "--repo", str(repo_path), "--data-dir", str(data)],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

    threads = [threading.Thread(target=read_users), threading.Thread(target=ask)]
    for t in threads:
        t.start()
    try:
        done = refresh()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert done.returncode == 0, done.stderr[-2000:]
    after = {u: rec.reader.read_user(u) for u in users}
    assert all(after[u] != before[u] for u in users), "the refresh did not reach the store"
    assert all(after[u]["user_history__n_interactions"]
               == before[u]["user_history__n_interactions"] + 1 for u in users)
    torn = [(u, r) for u, r in reads if r != before[u] and r != after[u]]
    assert not torn, f"{len(torn)} of {len(reads)} reads mixed the two states"
    assert not failures and answered[0] > 0, failures[:3]
    assert len(reads) > 100

    # the same refresh again: nothing to do, nothing rewritten
    online_db = repo_path / "data" / "online.db"
    stamp = (online_db.stat().st_ino, online_db.stat().st_mtime_ns)
    again = refresh()
    assert again.returncode == 0, again.stderr[-2000:]
    assert (online_db.stat().st_ino, online_db.stat().st_mtime_ns) == stamp
    assert {u: rec.reader.read_user(u) for u in users} == after


def test_a_failed_materialization_leaves_the_live_store_and_registry_as_they_were(served):
    """A refresh that fails half-way (after Feast recorded some views as materialized in
    the registry) leaves the served file untouched and the registry as it was, so the next
    incremental refresh does not skip rows that never reached the live store."""
    repo_path, _ = served
    repo = fs.FeatureRepo(repo_path)
    live, registry = repo_path / "data" / "online.db", repo_path / "data" / "registry.db"
    before = (live.read_bytes(), registry.read_bytes(), live.stat().st_ino)
    with pytest.raises(RuntimeError, match="failed"), fs.swapped_in(repo, repo.store()):
        registry.write_bytes(b"intervals of a materialization that will not land")
        raise RuntimeError("materialization failed")
    assert (live.read_bytes(), registry.read_bytes(), live.stat().st_ino) == before
    assert not list((repo_path / "data").glob("*.next")) and \
        not list((repo_path / "data").glob("*.before"))
