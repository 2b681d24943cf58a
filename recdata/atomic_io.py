"""Atomic writes: write beside the target, then rename, so a crash never leaves half a file.
Upstream of every stage, so each stage writes its artifacts the same way."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import polars as pl


def atomic_path(target: Path) -> tuple[Path, Path]:
    """A temporary path beside `target`; rename it onto `target` when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp), target


def write_text_atomic(target: Path, text: str) -> None:
    """Replace `target` with `text` in one step; a file that already says exactly that is
    left untouched (a rerun with nothing changed changes nothing, modification times
    included)."""
    target = Path(target)
    if target.is_file() and target.read_text() == text:
        return
    tmp, target = atomic_path(target)
    tmp.write_text(text)
    os.replace(tmp, target)


def write_parquet_atomic(frame: pl.DataFrame, target: Path) -> None:
    tmp, target = atomic_path(target)
    frame.write_parquet(tmp)
    os.replace(tmp, target)


def write_pickle_atomic(obj: object, target: Path) -> None:
    """Streamed to the temporary file: a large artifact is never held twice in memory."""
    import pickle

    tmp, target = atomic_path(target)
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, target)
