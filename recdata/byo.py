"""Bring your own data: load interactions and items from CSV or parquet, validated.

Schema
- interactions: `user_id` (integer), `item_id` (integer), `timestamp` (unix seconds or an
  ISO-8601 date-time), optional `rating` (number).
- items: `item_id` (integer), one or more text columns (default `title`), optional
  `genres` (a list, or a `|`-separated string in CSV), optional `year` (integer); any other
  columns are kept as attributes.

Validation collects *every* problem (file, row, column) before refusing: a data scientist
fixes a file once, not once per error. Nothing is silently dropped or coerced.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import polars as pl

from recdata.dataset import Dataset
from recdata.errors import DataValidationError, Problem

ROW = "__row"


def _read(path: Path) -> tuple[pl.DataFrame, int]:
    """All columns as strings plus the row number a person would look up (CSV line, header = 1)."""
    if not path.exists():
        raise DataValidationError([Problem(str(path), None, None, "file does not exist")])
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pl.read_parquet(path)
        frame = frame.with_columns(
            pl.col(c).list.join("|") if isinstance(frame.schema[c], pl.List)
            else pl.col(c).cast(pl.String) for c in frame.columns
        )
        offset = 1
    elif suffix in {".csv", ".tsv"}:
        frame = pl.read_csv(path, infer_schema=False, separator="\t" if suffix == ".tsv" else ",")
        offset = 2
    else:
        raise DataValidationError(
            [Problem(str(path), None, None,
                     f"unsupported format {suffix!r}; use .csv, .tsv or .parquet")]
        )
    return frame.with_row_index(ROW, offset=offset), offset


def _missing(frame: pl.DataFrame, file: str, required: list[str]) -> list[Problem]:
    out = []
    for col in required:
        if col not in frame.columns:
            hint = difflib.get_close_matches(col, frame.columns, n=1, cutoff=0.5)
            extra = f" (found {hint[0]!r}: rename it?)" if hint else ""
            out.append(Problem(file, None, col, f"missing required column {col!r}{extra}"))
    return out


def _row_problems(frame: pl.DataFrame, file: str, mask: pl.Expr, column: str,
                  message: pl.Expr) -> list[Problem]:
    bad = frame.filter(mask).select(ROW, message.alias("msg"))
    return [Problem(file, r, column, m) for r, m in bad.iter_rows()]


def _integer(frame: pl.DataFrame, file: str, column: str) -> list[Problem]:
    value = pl.col(column).str.strip_chars()
    empty = value.is_null() | (value == "")
    return _row_problems(frame, file, empty, column, pl.lit(f"null {column}")) + _row_problems(
        frame, file, ~empty & value.cast(pl.Int64, strict=False).is_null(), column,
        pl.format("{} {} is not an integer", pl.lit(column), value),
    )


def _optional_number(frame: pl.DataFrame, file: str, column: str, dtype: type[pl.DataType],
                     kind: str) -> list[Problem]:
    """An optional column may be absent or empty in a row, but not hold a non-number."""
    if column not in frame.columns:
        return []
    value = pl.col(column).str.strip_chars()
    return _row_problems(
        frame, file, value.is_not_null() & (value != "")
        & value.cast(dtype, strict=False).is_null(), column,
        pl.format("{} {} is not {}", pl.lit(column), value, pl.lit(kind)),
    )


def _timestamp_expr() -> pl.Expr:
    value = pl.col("timestamp").str.strip_chars()
    as_int = value.cast(pl.Int64, strict=False)
    as_date = value.str.to_datetime(strict=False, time_unit="us").dt.epoch("s")
    return pl.coalesce(as_int, as_date)


def load_custom(interactions_path: str | Path, items_path: str | Path, *,
                text_columns: tuple[str, ...] = ("title",), name: str = "custom") -> Dataset:
    """Load and validate a user's own catalogue; raise listing every problem found."""
    inter_file, item_file = str(interactions_path), str(items_path)
    inter, _ = _read(Path(interactions_path))
    items, _ = _read(Path(items_path))
    problems = _missing(inter, inter_file, ["user_id", "item_id", "timestamp"])
    problems += _missing(items, item_file, ["item_id", *text_columns])
    for col in ("user_id", "item_id"):
        if col in inter.columns:
            problems += _integer(inter, inter_file, col)
    if "timestamp" in inter.columns:
        problems += _row_problems(
            inter, inter_file, _timestamp_expr().is_null(), "timestamp",
            pl.format("unparseable timestamp {}", pl.col("timestamp").fill_null("null")),
        )
    problems += _optional_number(inter, inter_file, "rating", pl.Float64, "a number")
    if "item_id" in items.columns:
        problems += _integer(items, item_file, "item_id")
        problems += _row_problems(
            items, item_file, pl.col("item_id").is_not_null()
            & pl.col("item_id").is_duplicated(), "item_id",
            pl.format("duplicate item_id {}", pl.col("item_id")),
        )
    problems += _optional_number(items, item_file, "year", pl.Int32, "an integer")
    if "item_id" in inter.columns and "item_id" in items.columns:
        known = items.select(pl.col("item_id").str.strip_chars())
        problems += _row_problems(
            inter, inter_file,
            pl.col("item_id").is_not_null()
            & ~pl.col("item_id").str.strip_chars().is_in(known["item_id"].implode()),
            "item_id", pl.format("item_id {} is not in the items file", pl.col("item_id")),
        )
    if problems:
        raise DataValidationError(problems)

    interactions = inter.select(
        pl.col("user_id").str.strip_chars().cast(pl.Int64),
        pl.col("item_id").str.strip_chars().cast(pl.Int64),
        _timestamp_expr().alias("timestamp"),
        (pl.col("rating").str.strip_chars().cast(pl.Float64, strict=False)
         if "rating" in inter.columns else pl.lit(None, pl.Float64)).alias("rating"),
    )
    extra = [c for c in items.columns if c not in {ROW, "item_id", "genres", "year", *text_columns}]
    catalogue = items.select(
        pl.col("item_id").str.strip_chars().cast(pl.Int64),
        *[pl.col(c) for c in text_columns],
        (pl.col("genres").fill_null("").str.split("|").list.eval(
            pl.element().str.strip_chars().filter(pl.element() != ""))
         if "genres" in items.columns else pl.lit([], pl.List(pl.String))).alias("genres"),
        (pl.col("year").str.strip_chars().cast(pl.Int32, strict=False)
         if "year" in items.columns else pl.lit(None, pl.Int32)).alias("year"),
        *[pl.col(c) for c in extra],
    ).sort("item_id")
    if "title" not in catalogue.columns:
        catalogue = catalogue.with_columns(pl.col(text_columns[0]).alias("title"))
    return Dataset(name, interactions, catalogue, None, tuple(text_columns), ("item",))
