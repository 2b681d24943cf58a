"""The in-memory dataset every stage starts from, whatever the source.

Columns (types are enforced by the loaders):
- interactions: user_id Int64, item_id Int64, timestamp Int64 (unix seconds),
  rating Float64 (nullable)
- items: item_id Int64, title String, genres List[String], year Int32 (nullable), plus any
  further text or attribute columns named in `text_columns`
- users: user_id Int64 plus optional attribute columns (may be absent)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from recdata.ids import IdMap
    from recdata.schema import DomainSchema

INTERACTION_SCHEMA = {
    "user_id": pl.Int64,
    "item_id": pl.Int64,
    "timestamp": pl.Int64,
    "rating": pl.Float64,
}


@dataclass(frozen=True)
class Dataset:
    name: str
    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame | None = None
    text_columns: tuple[str, ...] = ("title",)
    schema: DomainSchema | None = None  # None: inferred from the tables (see `domain`)
    ids: IdMap | None = None  # the original keys of string ids (None: integer ids)

    @cached_property
    def domain(self) -> DomainSchema:
        """The dataset's domain schema: the one it was loaded with, else inferred."""
        if self.schema is not None:
            return self.schema
        from recdata.schema import infer_schema

        return infer_schema(self.name, self.items, self.interactions, self.users)

    @property
    def n_users(self) -> int:
        return self.interactions["user_id"].n_unique()

    @property
    def n_items(self) -> int:
        return self.items.height

    def summary(self) -> dict[str, int | str]:
        return {
            "dataset": self.name,
            "interactions": self.interactions.height,
            "users": self.n_users,
            "items": self.n_items,
        }

    def fingerprint(self) -> str:
        """Content hash of interactions, catalogue and domain schema: what versions every
        derived artifact (a schema edit changes requests, features, reasons: all rebuilt)."""
        import hashlib

        inter = self.interactions.hash_rows(seed=0).sum()
        items = self.items.select(
            pl.col("item_id"), pl.col("title"), pl.col("genres").list.join("|")
        ).hash_rows(seed=0).sum()
        schema = hashlib.sha1(self.domain.identity().encode()).hexdigest()[:8]
        keys = f":{self.ids.fingerprint()}" if self.ids is not None else ""
        return f"{self.name}:{inter}:{items}:{schema}{keys}"

    def sample_users(self, n_users: int, seed: int) -> Dataset:
        """The same dataset restricted to `n_users` random users (all their interactions,
        the whole catalogue), for quick end-to-end runs on real data."""
        users = self.interactions.select(pl.col("user_id").unique().sort())
        keep = users.sample(n=min(n_users, users.height), seed=seed)
        inter = self.interactions.join(keep, on="user_id", how="semi")
        kept_users = None if self.users is None else self.users.join(keep, on="user_id", how="semi")
        return Dataset(
            f"{self.name}[{keep.height} users]", inter, self.items, kept_users,
            self.text_columns, self.domain,  # the whole data's schema, not re-inferred
            self.ids,
        )


def item_text(items: pl.DataFrame, text_columns: tuple[str, ...]) -> pl.Series:
    """The text an encoder sees for each item: its text fields, genres and decade.
    Built from attributes only, never from interactions, so it cannot leak the future."""
    parts: list[pl.Expr] = [pl.col(c).cast(pl.String) for c in text_columns]
    if "genres" in items.columns:
        parts.append(
            pl.when(pl.col("genres").list.len() > 0)
            .then(pl.lit("Genres: ") + pl.col("genres").list.join(", "))
        )
    if "year" in items.columns:
        parts.append(
            pl.when(pl.col("year").is_not_null()).then(
                pl.lit("Released ") + pl.col("year").cast(pl.String)
                + pl.lit(", the ") + (pl.col("year") // 10 * 10).cast(pl.String) + pl.lit("s")
            )
        )
    return items.select(
        pl.concat_str(parts, separator=". ", ignore_nulls=True).alias("item_text")
    )["item_text"]
