"""Bring your own data: load interactions and items from CSV or parquet, validated.

Schema
- interactions: `user_id`, `item_id`, `timestamp` (unix seconds or an ISO-8601 date-time),
  optional `rating` (number). Ids may be integers or any strings (SKUs, ASINs, account
  names): string ids are numbered internally and every output speaks them (recdata.ids).
- items: `item_id`, one or more text columns (default `title`), optional
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
from recdata.ids import IdMap
from recdata.schema import Attribute, DomainSchema, category_values, infer_schema

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
    # one chunk per column: the CSV reader returns several, the row index one, and polars
    # 2.1 panics filtering a frame whose columns are chunked differently (a 20,000-row
    # items file with duplicated ids did: bench/validation.py)
    return frame.with_row_index(ROW, offset=offset).rechunk(), offset


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


def _present(frame: pl.DataFrame, file: str, column: str) -> list[Problem]:
    """An id may be any string, but not a missing one."""
    value = pl.col(column).str.strip_chars()
    return _row_problems(frame, file, value.is_null() | (value == ""), column,
                         pl.lit(f"null {column}"))


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


def _typed(path: Path, strings: pl.DataFrame) -> pl.DataFrame:
    """The items table with the types its file gives (parquet) or polars infers (CSV), for
    schema inference only; the string frame where inference fails."""
    try:
        if path.suffix.lower() == ".parquet":
            return pl.read_parquet(path)
        return pl.read_csv(path, infer_schema_length=10_000,
                           separator="\t" if path.suffix.lower() == ".tsv" else ",")
    except (pl.exceptions.PolarsError, OSError):
        return strings.drop(ROW)


def _schema_problems(items: pl.DataFrame, file: str, schema: DomainSchema) -> list[Problem]:
    """Every schema column present; numeric attributes numbers (a year an integer)."""
    out = []
    for attr in schema.attributes:
        if attr.kind == "ignored":
            continue
        if attr.column not in items.columns:
            out.append(Problem(file, None, attr.column, f"the schema's {attr.kind} column "
                                                        f"{attr.column!r} is not in the file"))
        elif attr.kind == "numeric":
            year = attr.role == "time"
            out += _optional_number(items, file, attr.column, pl.Int32 if year else pl.Float64,
                                    "an integer" if year else "a number")
    return out


def load_custom(interactions_path: str | Path, items_path: str | Path, *,
                text_columns: tuple[str, ...] | None = None, name: str = "custom",
                schema: DomainSchema | str | Path | None = None) -> Dataset:
    """Load and validate a user's own catalogue; raise listing every problem found.

    `schema` (a DomainSchema or its file) says what each items column is; without one it is
    inferred from the items table (recdata.schema.infer_schema). `text_columns` overrides
    the schema's text columns."""
    inter_file, item_file = str(interactions_path), str(items_path)
    inter, _ = _read(Path(interactions_path))
    items, _ = _read(Path(items_path))
    lists = _list_columns(Path(items_path))
    if schema is None:  # ratings decide whether 'acclaimed' is a level
        ratings = inter.select(pl.col("rating").str.strip_chars().cast(pl.Float64, strict=False)
                               if "rating" in inter.columns else pl.lit(None, pl.Float64)
                               .alias("rating"))
        schema = infer_schema(name, _typed(Path(items_path), items), ratings)
    elif not isinstance(schema, DomainSchema):
        schema = DomainSchema.load(Path(schema))
    if text_columns:
        schema = _with_text_columns(schema, tuple(text_columns))
    text_columns = schema.text_columns
    if not text_columns:
        raise DataValidationError([Problem(item_file, None, None,
                                           "no text column (a title or a description) to "
                                           "encode; mark one 'text' in the schema")])
    problems = _missing(inter, inter_file, ["user_id", "item_id", "timestamp"])
    problems += _missing(items, item_file, ["item_id", *text_columns])
    for col in ("user_id", "item_id"):
        if col in inter.columns:
            problems += _present(inter, inter_file, col)
    if "timestamp" in inter.columns:
        problems += _row_problems(
            inter, inter_file, _timestamp_expr().is_null(), "timestamp",
            pl.format("unparseable timestamp {}", pl.col("timestamp").fill_null("null")),
        )
    problems += _optional_number(inter, inter_file, "rating", pl.Float64, "a number")
    if "item_id" in items.columns:
        problems += _present(items, item_file, "item_id")
        problems += _row_problems(
            items, item_file, pl.col("item_id").is_not_null()
            & pl.col("item_id").str.strip_chars().is_duplicated(), "item_id",
            pl.format("duplicate item_id {}", pl.col("item_id")),
        )
    problems += _schema_problems(items, item_file, schema)
    if "item_id" in inter.columns and "item_id" in items.columns:
        known = items.select(pl.col("item_id").str.strip_chars())
        value = pl.col("item_id").str.strip_chars()
        problems += _row_problems(  # an empty id is reported once, as null, above
            inter, inter_file, value.is_not_null() & (value != "")
            & ~value.is_in(known["item_id"].implode()),
            "item_id", pl.format("item_id {} is not in the items file", pl.col("item_id")),
        )
    if problems:
        raise DataValidationError(problems)

    ids = IdMap.build(items["item_id"].str.strip_chars(), inter["user_id"].str.strip_chars())
    interactions = inter.select(
        "user_id", "item_id", _timestamp_expr().alias("timestamp"),
        (pl.col("rating").str.strip_chars().cast(pl.Float64, strict=False)
         if "rating" in inter.columns else pl.lit(None, pl.Float64)).alias("rating"),
    )
    interactions = ids.encode(ids.encode(interactions, "user_id", "user"), "item_id", "item")
    catalogue = _catalogue(ids.encode(items.drop(ROW), "item_id", "item"), schema, lists)
    return Dataset(name, interactions, catalogue, None, text_columns, schema,
                   None if ids.empty else ids)


def _list_columns(path: Path) -> set[str]:
    if path.suffix.lower() != ".parquet":
        return set()
    return {c for c, t in pl.read_parquet_schema(path).items() if isinstance(t, pl.List)}


def _with_text_columns(schema: DomainSchema, columns: tuple[str, ...]) -> DomainSchema:
    """`schema` with exactly `columns` as its text attributes, the first the title."""
    kept = [a for a in schema.attributes if a.column not in columns and a.kind != "text"]
    text = [Attribute(column=c, kind="text", role="title" if i == 0 else None)
            for i, c in enumerate(columns)]
    for a in kept:
        if a.role == "title":
            a.role = None
    return schema.model_copy(update={"attributes": text + kept})


def _catalogue(items: pl.DataFrame, schema: DomainSchema, lists: set[str]) -> pl.DataFrame:
    """The items with the columns every stage reads: `item_id`, `title`, `genres` (the
    schema's categories as a list) and `year` (its time attribute), numeric attributes as
    numbers, every other column kept."""
    for col in lists:  # parquet lists arrive joined with '|' (see _read)
        items = items.with_columns(pl.col(col).str.split("|"))
    cats, time_ = schema.by_role("categories"), schema.by_role("time")
    numeric = [a.column for a in schema.of_kind("numeric") if a.column in items.columns]
    out = items.with_columns(
        *[pl.col(c).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
          for c in numeric],
    )
    genres = category_values(out, cats) if cats is not None else pl.Series(
        "genres", [[]] * out.height, dtype=pl.List(pl.String))
    out = out.with_columns(
        genres.alias("genres"),
        (pl.col(time_.column).cast(pl.Int32, strict=False) if time_ is not None
         else pl.lit(None, pl.Int32)).alias("year"),
    )
    if "title" not in out.columns:
        out = out.with_columns(pl.col(schema.text_columns[0]).cast(pl.String).alias("title"))
    return out.sort("item_id")
