"""Synthetic data with planted structure, for tests and scale benchmarks.

Each user has a taste over genres (a Dirichlet draw concentrated on a few) and each item a
genre set and a year; a user picks items whose genres match their taste, with popularity
skew, in time order. A model that learns tastes should beat popularity on it: that is the
planted signal tests can assert on.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recdata.dataset import Dataset

SYNTHETIC_GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Documentary",
                    "Animation")


CHUNK = 2_000
CHUNK_CELLS = 20_000_000  # users x items per chunk: ~160 MB per float64 array at any size


def _user_chunk(rng: np.random.Generator, lo: int, hi: int, item_genre: np.ndarray,
                popularity: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    n = hi - lo
    taste = rng.dirichlet(np.full(item_genre.shape[1], 0.3), n)
    affinity = taste @ item_genre.T.astype(float)  # users x items
    weight = (affinity + 0.01) * popularity[None, :] ** 0.5
    prob = weight / weight.sum(axis=1, keepdims=True)
    # Sampling without replacement per user via Gumbel top-k: vectorised, no row loop.
    gumbel = np.log(prob) - np.log(-np.log(rng.random(prob.shape)))
    chosen = np.argpartition(-gumbel, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    items = chosen.ravel()
    start = rng.integers(1_000_000_000, 1_050_000_000, n)
    gaps = rng.integers(60, 86_400, (n, k)).cumsum(axis=1)
    ratings = np.clip(np.rint(2.5 + 2.5 * affinity[rows, items]
                              + rng.normal(0, 0.7, rows.size)), 1, 5)
    return rows + lo, items, (start[:, None] + gaps).ravel(), ratings


def make_synthetic(n_users: int = 200, n_items: int = 300, interactions_per_user: int = 30,
                   seed: int = 0) -> Dataset:
    """A dataset of `n_users * interactions_per_user` interactions with planted genre tastes."""
    rng = np.random.default_rng(seed)
    n_genres = len(SYNTHETIC_GENRES)
    primary = rng.integers(0, n_genres, n_items)
    secondary = rng.integers(0, n_genres, n_items)
    has_second = rng.random(n_items) < 0.4
    item_genre = np.zeros((n_items, n_genres), dtype=bool)
    item_genre[np.arange(n_items), primary] = True
    item_genre[np.arange(n_items)[has_second], secondary[has_second]] = True
    years = rng.integers(1950, 2020, n_items)
    popularity = rng.zipf(1.6, n_items).clip(max=200).astype(float)

    k = min(interactions_per_user, n_items)
    # Users are drawn in chunks so memory stays ~chunk x items, whatever the size asked for.
    chunk = max(1, min(CHUNK, CHUNK_CELLS // n_items))
    parts = [_user_chunk(rng, lo, min(lo + chunk, n_users), item_genre, popularity, k)
             for lo in range(0, n_users, chunk)]
    user_idx, item_idx, timestamps, ratings = (np.concatenate(p) for p in zip(*parts,
                                                                              strict=True))
    interactions = pl.DataFrame({
        "user_id": (user_idx + 1).astype(np.int64),
        "item_id": (item_idx + 1).astype(np.int64),
        "timestamp": timestamps.astype(np.int64),
        "rating": ratings.astype(np.float64),
    })
    genre_names = np.array(SYNTHETIC_GENRES)
    items = pl.DataFrame({
        "item_id": np.arange(1, n_items + 1, dtype=np.int64),
        "genre_mask": item_genre,
        "year": years.astype(np.int32),
    }).select(
        "item_id",
        pl.col("genre_mask").arr.to_list().list.eval(
            pl.element().cum_count().filter(pl.element()) - 1
        ).list.eval(pl.element().replace_strict(
            list(range(n_genres)), list(genre_names), return_dtype=pl.String
        )).alias("genres"),
        "year",
    ).with_columns(
        pl.format("Item {} — a {} story", pl.col("item_id"), pl.col("genres").list.join(" and "))
        .str.to_lowercase().alias("title")
    ).select("item_id", "title", "genres", "year")
    users = pl.DataFrame({"user_id": np.arange(1, n_users + 1, dtype=np.int64)})
    return Dataset(f"synthetic-{n_users}x{n_items}", interactions, items, users, ("title",),
                   ("title", "pick"))
