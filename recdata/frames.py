"""Frames to arrays: the one conversion the parser, the online reader and the feature
assembly share, so a column reads as the same floats wherever it is read."""

from __future__ import annotations

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
