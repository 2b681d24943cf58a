"""Triples from the data, as a polars job: item attributes, user attributes and
collaborative edges, the last **from the training window only**.

Entities are typed by a prefix (`user:42`, `item:50`, `genre:Comedy`, `decade:1990s`, ...),
so an id never collides across types and a KG entity maps back to its row. Collaborative
edges come from the split's `train` rows: no user's validation or test interaction (nor
anything after it) reaches the graph, so KG features are safe for evaluation requests.
"""

from __future__ import annotations

import polars as pl

from recdata.dataset import Dataset
from recdata.split import temporal_leave_one_out, training_targets_removed

LIKED_MIN_RATING = 4.0
AGE_BANDS = [(0, 17, "under 18"), (18, 24, "18-24"), (25, 34, "25-34"), (35, 44, "35-44"),
             (45, 49, "45-49"), (50, 55, "50-55"), (56, 200, "56+")]
USER_ATTRIBUTES = {"occupation": "has_occupation", "gender": "has_gender"}
TRIPLE_SCHEMA = {"head": pl.String, "relation": pl.String, "tail": pl.String}


def item_entity(expr: pl.Expr) -> pl.Expr:
    return pl.format("item:{}", expr)


def user_entity(expr: pl.Expr) -> pl.Expr:
    return pl.format("user:{}", expr)


def _triples(frame: pl.DataFrame, head: pl.Expr, relation: str, tail: pl.Expr) -> pl.DataFrame:
    return frame.select(head.alias("head"), pl.lit(relation).alias("relation"),
                        tail.alias("tail")).drop_nulls()


def item_triples(items: pl.DataFrame, text_columns: tuple[str, ...]) -> pl.DataFrame:
    """has_genre, released_in, in_decade, and `attr:<column>` for other string columns."""
    item = item_entity(pl.col("item_id"))
    parts = [
        _triples(items.explode("genres"), item, "has_genre",
                 pl.format("genre:{}", pl.col("genres"))),
        _triples(items, item, "released_in", pl.format("year:{}", pl.col("year"))),
        _triples(items, item, "in_decade", pl.format("decade:{}s", pl.col("year") // 10 * 10)),
    ]
    skip = {"item_id", "title", "genres", "year", *text_columns}
    for col, dtype in items.schema.items():
        if col not in skip and dtype == pl.String:
            parts.append(_triples(items, item, f"attr:{col}",
                                  pl.format("{}:{}", pl.lit(col), pl.col(col))))
    return pl.concat(parts)


def user_triples(users: pl.DataFrame | None) -> pl.DataFrame:
    """Occupation, gender and age band where the data has them (ML-100k does)."""
    if users is None:
        return pl.DataFrame(schema=TRIPLE_SCHEMA)
    user = user_entity(pl.col("user_id"))
    parts = [_triples(users, user, rel, pl.format("{}:{}", pl.lit(col), pl.col(col)))
             for col, rel in USER_ATTRIBUTES.items() if col in users.columns]
    if "age" in users.columns:
        band = pl.lit(None, pl.String)
        for lo, hi, name in reversed(AGE_BANDS):
            band = pl.when(pl.col("age").is_between(lo, hi)).then(pl.lit(name)).otherwise(band)
        parts.append(_triples(users, user, "in_age_band", pl.format("age:{}", band)))
    return pl.concat(parts) if parts else pl.DataFrame(schema=TRIPLE_SCHEMA)


def collaborative_triples(train: pl.DataFrame) -> pl.DataFrame:
    """user -interacted-> item for every training interaction; -liked-> for high ratings."""
    user, item = user_entity(pl.col("user_id")), item_entity(pl.col("item_id"))
    liked = train.filter(pl.col("rating") >= LIKED_MIN_RATING)
    return pl.concat([_triples(train, user, "interacted", item),
                      _triples(liked, user, "liked", item)])


def build_triples(ds: Dataset, external: pl.DataFrame | None = None, *,
                  hold_out_last: int = 0, max_edges: int | None = None,
                  seed: int = 42) -> pl.DataFrame:
    """Every triple of the graph (head, relation, tail), unique, in a stable order.
    `hold_out_last` also keeps each user's last training positions out of the graph: the
    ranker's training requests sit there, and its KG features must not have seen them.
    `max_edges` samples (seeded) the training interactions that become collaborative edges
    before any label is formatted: 10^7 interactions as strings took 8 GB, and training
    keeps a few hundred thousand edges anyway (KGConfig.max_triples)."""
    train = training_targets_removed(temporal_leave_one_out(ds.interactions), hold_out_last)
    if max_edges is not None and train.height > max_edges:
        train = train.sample(n=max_edges, seed=seed)
    parts = [item_triples(ds.items, ds.text_columns), user_triples(ds.users),
             collaborative_triples(train)]
    if external is not None:
        parts.append(external.select(list(TRIPLE_SCHEMA)))
    return pl.concat(parts).unique().sort("relation", "head", "tail")


def relation_counts(triples: pl.DataFrame) -> dict[str, int]:
    counts = triples.group_by("relation").len().sort("len", descending=True)
    return dict(zip(counts["relation"], counts["len"], strict=True))
