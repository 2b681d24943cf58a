"""Triples from the data, as a polars job: item attributes, user attributes and
collaborative edges, the last **from the training window only**.

Which attributes become relations, and their names, come from the dataset's domain schema
(recdata/schema.py). Entities are typed by a prefix (`user:42`, `item:50`, `genre:Comedy`,
`decade:1990s`, `price:q3`, ...),
so an id never collides across types and a KG entity maps back to its row. Collaborative
edges come from the split's `train` rows: no user's validation or test interaction (nor
anything after it) reaches the graph, so KG features are safe for evaluation requests.
"""

from __future__ import annotations

import polars as pl

from recdata.dataset import Dataset
from recdata.schema import Attribute, DomainSchema, category_values
from recdata.split import temporal_leave_one_out, training_targets_removed

LIKED_MIN_RATING = 4.0
NUMERIC_BINS = 5  # a numeric attribute without named bands becomes its quantile bin
TRIPLE_SCHEMA = {"head": pl.String, "relation": pl.String, "tail": pl.String}


def item_entity(expr: pl.Expr) -> pl.Expr:
    return pl.format("item:{}", expr)


def user_entity(expr: pl.Expr) -> pl.Expr:
    return pl.format("user:{}", expr)


def _triples(frame: pl.DataFrame, head: pl.Expr, relation: str, tail: pl.Expr) -> pl.DataFrame:
    return frame.select(head.alias("head"), pl.lit(relation).alias("relation"),
                        tail.alias("tail")).drop_nulls()


def _numeric_tail(frame: pl.DataFrame, attr: Attribute) -> pl.Expr:
    """A numeric value as an entity: its named band, else its quantile bin (q1..q5), so a
    price or a duration links items of the same range, not each item to its own value."""
    value = pl.col(attr.column).cast(pl.Float64)
    if attr.bands:
        band = pl.lit(None, pl.String)
        for lo, hi, name in reversed(attr.bands):
            band = pl.when(value.is_between(lo, hi)).then(pl.lit(name)).otherwise(band)
        return pl.format("{}:{}", pl.lit(attr.kg_entity()), band)
    edges = frame[attr.column].cast(pl.Float64).drop_nulls().quantile
    cuts = sorted({edges(q / NUMERIC_BINS) for q in range(1, NUMERIC_BINS)} - {None})
    bin_ = pl.lit(1, pl.Int32)
    for cut in cuts:
        bin_ = bin_ + (value > cut).cast(pl.Int32)
    return pl.when(value.is_not_null()).then(
        pl.format("{}:q{}", pl.lit(attr.kg_entity()), bin_))


def _attribute_triples(frame: pl.DataFrame, head: pl.Expr,
                       attributes: list[Attribute]) -> list[pl.DataFrame]:
    """Triples of categorical and numeric attributes (identifiers, free text and ignored
    columns never become entities: one entity per item teaches the graph nothing)."""
    parts = []
    for attr in attributes:
        if attr.column not in frame.columns:
            continue
        if attr.kind == "categorical":
            values = frame.select(head.alias("head"),
                                  category_values(frame, attr).alias("value")).explode("value")
            parts.append(_triples(values, pl.col("head"), attr.kg_relation(),
                                  pl.format("{}:{}", pl.lit(attr.kg_entity()), pl.col("value"))))
        elif attr.kind == "numeric" and attr.unit == "year" and attr.role == "time":
            parts.append(_triples(frame, head, attr.kg_relation(),
                                  pl.format("{}:{}", pl.lit(attr.kg_entity()),
                                            pl.col(attr.column))))
            parts.append(_triples(frame, head, "in_decade", pl.format(
                "decade:{}s", pl.col(attr.column) // 10 * 10)))
        elif attr.kind == "numeric":
            parts.append(_triples(frame, head, attr.kg_relation(), _numeric_tail(frame, attr)))
    return parts


def item_triples(items: pl.DataFrame, schema: DomainSchema) -> pl.DataFrame:
    """One relation per categorical or numeric attribute of the schema (the categories,
    the year and its decade, a brand, a price band, ...)."""
    parts = _attribute_triples(items, item_entity(pl.col("item_id")), schema.attributes)
    return pl.concat(parts) if parts else pl.DataFrame(schema=TRIPLE_SCHEMA)


def user_triples(users: pl.DataFrame | None, schema: DomainSchema) -> pl.DataFrame:
    """The schema's user attributes where the data has them (ML-100k: occupation, gender,
    age band)."""
    if users is None:
        return pl.DataFrame(schema=TRIPLE_SCHEMA)
    parts = _attribute_triples(users, user_entity(pl.col("user_id")), schema.user_attributes)
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
    parts = [item_triples(ds.items, ds.domain), user_triples(ds.users, ds.domain),
             collaborative_triples(train)]
    if external is not None:
        parts.append(external.select(list(TRIPLE_SCHEMA)))
    return pl.concat(parts).unique().sort("relation", "head", "tail")


def relation_counts(triples: pl.DataFrame) -> dict[str, int]:
    counts = triples.group_by("relation").len().sort("len", descending=True)
    return dict(zip(counts["relation"], counts["len"], strict=True))
