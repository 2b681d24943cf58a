"""Frames to arrays: the one conversion the parser, the online reader and the feature
assembly share, so a column reads as the same floats wherever it is read."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl


def float_block(frame: pl.DataFrame, columns: list[str] | None = None
                ) -> tuple[list[str], np.ndarray]:
    """`columns` of `frame` (default: its numeric and boolean ones) as one float64 matrix,
    rows x columns, column-major, NaN where null, and their names. One polars call for all
    of them: a cast and a fill per column cost a one-request answer a call each."""
    if columns is None:
        columns = [c for c, t in frame.schema.items() if t.is_numeric() or t == pl.Boolean]
    if not columns:
        return columns, np.zeros((frame.height, 0))
    return columns, frame.select(to_floats(pl.col(columns))).to_numpy(order="fortran")


def to_floats(expr: pl.Expr) -> pl.Expr:
    """The conversion `float_block` applies, for a query that ends in it."""
    return expr.cast(pl.Float64).fill_null(np.nan)


def python_floats(values: list[Any], dtype: pl.DataType) -> np.ndarray | None:
    """One column given as Python values (an online store's read) as `float_block` would
    convert it from a frame with that `dtype`, without building the frame (a one-user frame
    and its query cost a one-request assembly ~1 ms): numeric or boolean values -> float64,
    NaN for None; numeric lists all of one length -> rows x length, NaN rows for None; None
    for anything else. Values pass through the column's own width first (a Float32
    column's Python floats are rounded to float32 as the frame would store them)."""
    inner = dtype.inner if isinstance(dtype, pl.List) else None  # type: ignore[attr-defined]
    kind = inner if inner is not None else dtype
    if not (kind.is_numeric() or kind == pl.Boolean):
        return None
    width = np.float32 if kind == pl.Float32 else np.float64
    if inner is None:
        return np.array([np.nan if v is None else v for v in values], dtype=width) \
            .astype(np.float64)
    lengths = {len(v) for v in values if v is not None}
    if len(lengths) > 1 or not all(x is not None for v in values if v is not None for x in v):
        return None
    size = lengths.pop() if lengths else 0
    out = np.full((len(values), size), np.nan)
    present = [i for i, v in enumerate(values) if v is not None]
    if present and size:
        out[present] = np.array([values[i] for i in present], dtype=width)
    return out
