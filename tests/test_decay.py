"""Decayed counts over any span: exact against a direct sum, on logs far longer than the
1,000 half-lives a single cumulative sum survives."""

import numpy as np
import polars as pl

from feature_repo.jobs.decay import decayed_cumsum
from feature_repo.jobs.items import HALF_LIVES, item_stats
from feature_repo.jobs.users import user_profile_embedding

DAY = 86_400


def direct(values, group, age, h):
    """y_i = sum over earlier rows j of the same group of v_j 2^-(a_i - a_j)/h, row by row."""
    out = np.zeros(values.shape)
    for i in range(len(values)):
        same = (group[: i + 1] == group[i])
        w = np.exp2(-(age[i] - age[: i + 1][same]) / h)
        out[i] = (values[: i + 1][same] * (w if values.ndim == 1 else w[:, None])).sum(axis=0)
    return out


def test_matches_direct_sum_with_gaps_of_thousands_of_half_lives():
    rng = np.random.default_rng(0)
    group = np.repeat([3, 5, 9], [40, 1, 60])
    age = np.concatenate([np.sort(rng.integers(0, 40_000, 40)), [7],
                          np.sort(rng.integers(0, 200, 60)) * 300])  # bursts and huge gaps
    values = rng.integers(1, 5, len(group)).astype(float)
    got = decayed_cumsum(values, group, age, 7)
    np.testing.assert_allclose(got, direct(values, group, age, 7), rtol=1e-10, atol=0)
    vectors = rng.normal(size=(len(group), 3))
    np.testing.assert_allclose(decayed_cumsum(vectors, group, age, 7),
                               direct(vectors, group, age, 7), rtol=1e-9, atol=1e-300)


def test_item_stats_on_a_sixty_year_log():
    """One item touched in 1960 and again every few years until 2020: built without error,
    and every decayed count equals the direct sum (the old job refused spans > 7,000 days)."""
    rng = np.random.default_rng(1)
    start = -315_619_200  # 1960-01-01
    days = np.sort(rng.integers(0, 60 * 365, 300))
    log = pl.DataFrame({
        "user_id": np.arange(300), "item_id": np.r_[np.ones(250, int), np.full(50, 2)],
        "timestamp": start + days * DAY + 3600, "rating": rng.integers(1, 6, 300) * 1.0})
    stats = item_stats(log)
    assert stats["event_timestamp"].dt.year().min() == 1960
    assert stats["event_timestamp"].dt.year().max() >= 2019
    daily = log.with_columns((pl.col("timestamp") // DAY).alias("day")).group_by(
        "item_id", "day").len().sort("item_id", "day")
    for name, h in HALF_LIVES.items():
        want = direct(daily["len"].to_numpy().astype(float), daily["item_id"].to_numpy(),
                      daily["day"].to_numpy().astype(float), h)
        np.testing.assert_allclose(stats[name].to_numpy(), want.astype(np.float32), rtol=1e-6)
    assert np.isfinite(stats["popularity_7d"].to_numpy()).all()


def test_profile_of_a_very_long_history():
    """A user with 30,000 interactions (the old recurrence stopped at 18,000): the profile
    at sampled positions equals the directly weighted, normalised sum."""
    n, d = 30_000, 4
    rng = np.random.default_rng(2)
    item_ids = np.arange(1, 51)
    vectors = rng.normal(size=(50, d)).astype(np.float32)
    log = pl.DataFrame({"user_id": np.ones(n, int), "item_id": rng.integers(1, 51, n),
                        "timestamp": np.arange(n) * 100, "rating": np.ones(n)})
    got = user_profile_embedding(log, item_ids, vectors)
    assert got.height == n
    emb = np.array(got["embedding"].to_list())
    x = vectors[log["item_id"].to_numpy() - 1].astype(np.float64)
    for i in (0, 17, 19_999, n - 1):
        w = np.exp2(-(i - np.arange(i + 1)) / 20)
        v = (x[: i + 1] * w[:, None]).sum(axis=0)
        np.testing.assert_allclose(emb[i], v / np.linalg.norm(v), rtol=1e-5, atol=1e-6)
