"""A data scientist's own KG (Freebase/Wikidata-style): a triples file (head, relation, tail;
TSV, CSV or parquet) and an item_id -> entity mapping file (item_id, entity).

Validation reports every problem with file, row and column and refuses to go on, as the data
loader does. Items the mapping does not cover are counted and reported, not an error: most
catalogues are only partly linked. Mapped entities become the project's `item:<id>` nodes so
the external graph connects to the interaction graph; other external nodes and relations get
an `ext:` prefix so they never collide with built-in ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kg.triples import TRIPLE_SCHEMA
from recdata.errors import DataValidationError, Problem
from recdata.ids import IdMap

ROW = "__row"


def _read(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise DataValidationError([Problem(str(path), None, None, "file does not exist")])
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path).with_columns(pl.all().cast(pl.String))
        return frame.with_row_index(ROW, offset=1)
    sep = "\t" if path.suffix in {".tsv", ".txt"} else ","
    try:
        frame = pl.read_csv(path, separator=sep, infer_schema=False, quote_char=None)
    except pl.exceptions.ComputeError as exc:
        raise DataValidationError([Problem(str(path), None, None, f"unreadable: {exc}")]) from exc
    return frame.with_row_index(ROW, offset=2)


def _problems(frame: pl.DataFrame, file: str, mask: pl.Expr, column: str,
              message: pl.Expr) -> list[Problem]:
    bad = frame.filter(mask).select(ROW, message.alias("m"))
    return [Problem(file, r, column, m) for r, m in bad.iter_rows()]


def _required(frame: pl.DataFrame, file: str, columns: list[str]) -> list[Problem]:
    out = [Problem(file, None, c, f"missing required column {c!r}; found "
                                  f"{[x for x in frame.columns if x != ROW]}")
           for c in columns if c not in frame.columns]
    if out:
        return out
    for c in columns:
        value = pl.col(c).str.strip_chars()
        out += _problems(frame, file, value.is_null() | (value == ""), c, pl.lit(f"empty {c}"))
    return out


@dataclass(frozen=True)
class ExternalKG:
    triples: pl.DataFrame  # head, relation, tail with project entity names
    mapped_items: int
    unmapped_items: int
    external_triples: int


def load_external(triples_path: str | Path, entity_map_path: str | Path,
                  item_ids: pl.Series, ids: IdMap | None = None) -> ExternalKG:
    """The external triples with mapped entities renamed to catalogue items; `ids` reads
    the entity map's `item_id`s when the catalogue's ids are strings."""
    t_file, m_file = str(triples_path), str(entity_map_path)
    triples = _read(Path(triples_path))
    mapping = _read(Path(entity_map_path))
    problems = _required(triples, t_file, list(TRIPLE_SCHEMA))
    problems += _required(mapping, m_file, ["item_id", "entity"])
    ids = ids or IdMap()
    if "item_id" in mapping.columns:
        item = pl.col("item_id").str.strip_chars()
        encoded = ids.encode(mapping.select("item_id"), "item_id", "item")["item_id"]
        problems += _problems(mapping, m_file, item.is_duplicated(), "item_id",
                              pl.format("item_id {} is mapped more than once", item))
        problems += _problems(
            mapping, m_file, item.is_not_null() & (item != "")
            & ~pl.lit(encoded.is_in(item_ids.implode()).fill_null(False)),
            "item_id", pl.format("item_id {} is not in the catalogue", item))
        mapping = mapping.with_columns(encoded.alias("item_id"))
    if problems:
        raise DataValidationError(problems)

    links = mapping.select(pl.col("entity").str.strip_chars(),
                           pl.format("item:{}", pl.col("item_id")).alias("node"))
    clean = triples.select(pl.col(c).str.strip_chars() for c in TRIPLE_SCHEMA)

    def node(col: str) -> pl.Expr:
        return pl.coalesce(pl.col(f"{col}_node"), pl.format("ext:{}", pl.col(col))).alias(col)

    resolved = clean.join(links.rename({"entity": "head", "node": "head_node"}), on="head",
                          how="left").join(links.rename({"entity": "tail", "node": "tail_node"}),
                                           on="tail", how="left")
    out = resolved.select(node("head"), pl.format("ext:{}", pl.col("relation")).alias(
        "relation"), node("tail"))
    mapped = links["node"].n_unique()
    return ExternalKG(out, mapped, item_ids.n_unique() - mapped, out.height)
