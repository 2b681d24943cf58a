"""Ids as they come: a catalogue's SKUs or ASINs and its users' account names, kept.

Every stage works on integer ids (Feast entity keys, sparse matrix rows, KG entity names);
a dataset whose ids are not all plain integers gets an `IdMap` that numbers its original
ids ("keys") 1..n in key order, so the same files always give the same numbers. The map is
saved beside the feature repo (`<repo>/ids/`), where serving reads it to take a caller's
user key and to answer with item keys, and where `features refresh` appends users it has
not seen (numbers already given never change). Integer ids stay as they are: no map.

A column keeps integers only when every value is a canonical int64 ("42", never "042",
"+42" or a 25-digit number): anything else would not come back out as it went in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from recdata.atomic_io import write_parquet_atomic

Kind = Literal["item", "user"]
Key = int | str
KEY_COLUMN = {"item": "item_key", "user": "user_key"}
ID_COLUMN = {"item": "item_id", "user": "user_id"}
INT64 = (-(2**63), 2**63 - 1)


def canonical_int(value: pl.Expr) -> pl.Expr:
    """True where a (stripped) string is an int64 that prints back as itself."""
    as_int = value.cast(pl.Int64, strict=False)
    return as_int.is_not_null() & (as_int.cast(pl.String) == value)


def needs_keys(values: pl.Series) -> bool:
    """Whether a column of (stripped, non-null) id strings must be kept as keys."""
    if values.dtype.is_integer():
        return False
    strings = values.cast(pl.String)
    return not strings.to_frame("v").select(canonical_int(pl.col("v")).all()).item()


def _numbered(keys: pl.Series, kind: Kind, start: int = 1) -> pl.DataFrame:
    unique = keys.cast(pl.String).unique().sort()
    return pl.DataFrame({KEY_COLUMN[kind]: unique,
                         ID_COLUMN[kind]: pl.int_range(start, start + len(unique),
                                                       dtype=pl.Int64, eager=True)})


@dataclass(frozen=True)
class IdMap:
    """Original keys <-> internal integer ids, for items and users (None: integer ids)."""

    items: pl.DataFrame | None = None  # item_key String, item_id Int64
    users: pl.DataFrame | None = None  # user_key String, user_id Int64
    _lookup: dict[Kind, dict[str, int]] = field(default_factory=dict, compare=False,
                                                repr=False)

    @classmethod
    def build(cls, item_keys: pl.Series, user_keys: pl.Series) -> IdMap:
        """A map for whichever of the two columns is not plain integers."""
        return cls(_numbered(item_keys, "item") if needs_keys(item_keys) else None,
                   _numbered(user_keys, "user") if needs_keys(user_keys) else None)

    @property
    def empty(self) -> bool:
        return self.items is None and self.users is None

    def table(self, kind: Kind) -> pl.DataFrame | None:
        return self.items if kind == "item" else self.users

    def encode(self, frame: pl.DataFrame, column: str, kind: Kind) -> pl.DataFrame:
        """`frame` with its key column `column` (strings) replaced by internal ids; a key
        the map does not hold becomes null (callers report those rows). Without a map the
        column is cast to Int64 (non-integers become null)."""
        table = self.table(kind)
        value = pl.col(column).cast(pl.String).str.strip_chars()
        if table is None:
            return frame.with_columns(value.cast(pl.Int64, strict=False).alias(column))
        key, ident = KEY_COLUMN[kind], ID_COLUMN[kind]
        order = frame.columns
        out = frame.with_columns(value.alias(column)).join(
            table.rename({key: column, ident: "__id"}), on=column, how="left")
        return out.with_columns(pl.col("__id").alias(column)).select(order)

    def known(self, column: str, kind: Kind) -> pl.Expr:
        """True where a key column's (stripped) value is an id this map can encode."""
        value = pl.col(column).cast(pl.String).str.strip_chars()
        table = self.table(kind)
        if table is None:
            return value.cast(pl.Int64, strict=False).is_not_null()
        return value.is_in(table[KEY_COLUMN[kind]].implode())

    def keys(self, ids: Iterable[int] | np.ndarray, kind: Kind) -> list[Key]:
        """The original keys of internal ids (the ids themselves without a map)."""
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        table = self.table(kind)
        if table is None:
            return ids.tolist()
        ident = table[ID_COLUMN[kind]].to_numpy()
        order = np.argsort(ident, kind="stable")
        pos = np.clip(np.searchsorted(ident, ids, sorter=order), 0, max(len(ident) - 1, 0))
        rows = order[pos]
        if len(ident) == 0 or not (ident[rows] == ids).all():
            missing = ids[ident[rows] != ids] if len(ident) else ids
            raise KeyError(f"{kind} ids {missing[:5].tolist()} are not in the id map")
        return table[KEY_COLUMN[kind]].gather(rows).to_list()

    def id_of(self, key: Key | None, kind: Kind) -> int | None:
        """The internal id of one caller-given key, or None when it names no known id
        (an unknown user takes the cold-start path; an out-of-range number is unknown,
        never an error)."""
        if key is None or isinstance(key, bool):
            return None
        table = self.table(kind)
        if table is None:
            if isinstance(key, int):
                return key if INT64[0] <= key <= INT64[1] else None
            text = str(key).strip()
            try:
                value = int(text)
            except ValueError:
                return None
            return value if str(value) == text and INT64[0] <= value <= INT64[1] else None
        lookup = self._lookup.get(kind)
        if lookup is None:
            lookup = dict(zip(table[KEY_COLUMN[kind]].to_list(),
                              table[ID_COLUMN[kind]].to_list(), strict=True))
            self._lookup[kind] = lookup
        return lookup.get(str(key).strip())

    def with_users(self, keys: pl.Series) -> tuple[IdMap, int]:
        """This map with users it does not hold yet appended (numbered after the last);
        existing numbers never change. Returns the map and how many users were added."""
        if self.users is None:
            return self, 0
        keys = keys.cast(pl.String).str.strip_chars()
        new = keys.filter(~keys.is_in(self.users["user_key"].implode()))
        if new.len() == 0:
            return self, 0
        start = int(self.users["user_id"].max() or 0) + 1
        added = _numbered(new, "user", start)
        return IdMap(self.items, pl.concat([self.users, added])), added.height

    def fingerprint(self) -> str:
        """Changes when any key or number does (empty for integer ids)."""
        parts = [str(t.hash_rows(seed=0).sum()) for t in (self.items, self.users)
                 if t is not None]
        return ":".join(parts)

    def save(self, folder: Path) -> None:
        """Write (or, for integer ids, remove) `folder/{items,users}.parquet`, atomically."""
        for kind in ("item", "user"):
            path = folder / f"{kind}s.parquet"
            table = self.table(kind)  # type: ignore[arg-type]
            if table is None:
                path.unlink(missing_ok=True)
            else:
                write_parquet_atomic(table, path)

    @classmethod
    def load(cls, folder: Path) -> IdMap:
        """The map saved in `folder` (an empty map when there is none: integer ids)."""
        tables = {kind: pl.read_parquet(folder / f"{kind}s.parquet")
                  if (folder / f"{kind}s.parquet").exists() else None
                  for kind in ("item", "user")}
        return cls(tables["item"], tables["user"])


def users_file(folder: Path) -> Path:
    return folder / "users.parquet"


def modified(path: Path) -> int:
    """The file's modification time in ns (0 when absent): how serving notices a refresh."""
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0
