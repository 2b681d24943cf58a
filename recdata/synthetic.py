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
from recdata.schema import Attribute, DomainSchema, Levels, Wording

SYNTHETIC_GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Documentary",
                    "Animation")




def synthetic_schema(name: str) -> DomainSchema:
    """The synthetic catalogue's words: neutral nouns, categories named as they are."""
    return DomainSchema(
        dataset=name,
        attributes=[Attribute(column="title", kind="text", role="title"),
                    Attribute(column="genres", kind="categorical", role="categories",
                              relation="has_genre", entity="genre"),
                    Attribute(column="year", kind="numeric", role="time", unit="year",
                              relation="released_in", entity="year")],
        levels=Levels(popular=["popular", "well-known", "crowd-pleasing", "much-loved"],
                      obscure=["lesser-known", "obscure", "under-the-radar", "little-known"],
                      acclaimed=["highly rated", "acclaimed", "top-rated", "well-reviewed"],
                      acclaimed_min_mean=4.0, rating_scale=(1, 5)),
        wording=Wording(nouns=["title", "pick"], verb="try", past="tried"))


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


def _interactions(rng: np.random.Generator, n_users: int, item_taste: np.ndarray,
                  popularity: np.ndarray, per_user: int) -> pl.DataFrame:
    """Each user's picks by their planted taste over the items' categories (`item_taste`,
    items x categories), drawn in chunks of users so memory stays ~chunk x items."""
    n_items = item_taste.shape[0]
    k = min(per_user, n_items)
    chunk = max(1, min(CHUNK, CHUNK_CELLS // n_items))
    parts = [_user_chunk(rng, lo, min(lo + chunk, n_users), item_taste, popularity, k)
             for lo in range(0, n_users, chunk)]
    user_idx, item_idx, timestamps, ratings = (np.concatenate(p) for p in zip(*parts,
                                                                              strict=True))
    return pl.DataFrame({
        "user_id": (user_idx + 1).astype(np.int64),
        "item_id": (item_idx + 1).astype(np.int64),
        "timestamp": timestamps.astype(np.int64),
        "rating": ratings.astype(np.float64),
    })


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

    interactions = _interactions(rng, n_users, item_genre, popularity, interactions_per_user)
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
    name = f"synthetic-{n_users}x{n_items}"
    return Dataset(name, interactions, items, users, ("title",), synthetic_schema(name))


# ------------------------------------------------------------------ a second domain: products

PRODUCT_TREE = {  # leaf category -> its path; brands are drawn per top-level department
    "Knives": "Home > Kitchen > Knives", "Cookware": "Home > Kitchen > Cookware",
    "Bedding": "Home > Bedroom > Bedding", "Lamps": "Home > Lighting > Lamps",
    "Headphones": "Electronics > Audio > Headphones", "Speakers": "Electronics > Audio > Speakers",
    "Laptops": "Electronics > Computers > Laptops", "Running": "Sports > Footwear > Running",
    "Yoga": "Sports > Fitness > Yoga", "Tents": "Sports > Outdoor > Tents",
}
BRANDS = {"Home": ["Hearthly", "Nordvik", "Casa Bella"],
          "Electronics": ["Voltra", "Sonique", "Kubit"],
          "Sports": ["Stridewell", "Peakline", "Asana Co"]}


def make_product_tables(n_users: int = 200, n_items: int = 300, interactions_per_user: int = 30,
                        seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(interactions, items) of a product catalogue with planted category tastes, as a shop
    exports them: string SKUs, a category path ('Home > Kitchen > Knives'), a brand, a price,
    a description, ratings 1-5: another domain than the catalogue above. The tests load it
    through the bring-your-own path with an inferred schema."""
    rng = np.random.default_rng(seed)
    leaves = list(PRODUCT_TREE)
    leaf = rng.integers(0, len(leaves), n_items)
    item_cat = np.zeros((n_items, len(leaves)), dtype=bool)
    item_cat[np.arange(n_items), leaf] = True
    popularity = rng.zipf(1.6, n_items).clip(max=200).astype(float)
    interactions = _interactions(rng, n_users, item_cat, popularity, interactions_per_user)
    paths = np.array([PRODUCT_TREE[x] for x in leaves])[leaf]
    departments = [p.split(" > ")[0] for p in paths]
    brands = [BRANDS[d][i] for d, i in zip(departments, rng.integers(0, 3, n_items),
                                              strict=True)]
    names = np.array(leaves)[leaf]
    items = pl.DataFrame({
        "item_id": np.arange(1, n_items + 1, dtype=np.int64),
        "sku": [f"SKU-{i:06d}" for i in rng.permutation(n_items) + 1],
        "name": [f"{b} {n.lower().rstrip('s')} {i}" for b, n, i in zip(
            brands, names, range(1, n_items + 1), strict=True)],
        "category": paths, "brand": brands,
        "price": np.round(rng.lognormal(3.5, 0.8, n_items), 2),
        "description": [f"A {n.lower()} product from {b} for everyday use, item {i}" for n, b, i
                        in zip(names, brands, range(1, n_items + 1), strict=True)],
    })
    return interactions, items
