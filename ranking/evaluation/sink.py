"""Rankings written as they are produced, one parquet file per model, so a run holds one
chunk of them in memory however many requests, models and protocols it scores. DuckDB
reads the folder for the metrics and for the run's database."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq


class RankingSink:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        shutil.rmtree(folder, ignore_errors=True)  # a rerun of the same run starts clean
        folder.mkdir(parents=True, exist_ok=True)
        self._writers: dict[str, tuple[pq.ParquetWriter, Path]] = {}

    def add(self, model: str, rows: pl.DataFrame) -> None:
        if rows.height == 0:
            return
        table = rows.to_arrow()
        if model not in self._writers:
            tmp = self.folder / f".{model}.parquet.tmp"
            self._writers[model] = (pq.ParquetWriter(tmp, table.schema), tmp)
        self._writers[model][0].write_table(table)

    def finish(self, model: str) -> None:
        """Close `model`'s file and rename it into place (readers never see half of one)."""
        if model in self._writers:
            writer, tmp = self._writers.pop(model)
            writer.close()
            os.replace(tmp, self.folder / f"{model}.parquet")

    def scan(self) -> pl.LazyFrame:
        return pl.scan_parquet(self.folder / "*.parquet")
