"""The result of an evaluation run, which saves itself.

`save()` writes the run's artifacts under `data_dir/runs/<fingerprint>/`: a DuckDB file with
the requests, rankings, metrics and tuning tables a data scientist can open and query (and,
for string-id data, `item_ids`/`user_ids` to join for the original ids), the request file as
parquet, the resolved config and library versions; and it updates the committed
`quality.csv` and its plot. Every write goes to a temporary file first and is renamed into
place, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from featurestore.store import sql_string
from ranking.evaluation.beyond import BEYOND_METRICS
from ranking.evaluation.config import EvalConfig
from ranking.evaluation.metrics import METRICS
from recdata.atomic_io import atomic_path, write_parquet_atomic, write_text_atomic
from recdata.ids import IdMap

LIBRARIES = ("polars", "duckdb", "numpy", "scipy", "sentence-transformers", "torch",
             "lightgbm", "feast", "pykeen")


def library_versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def long_metrics(metrics: pl.DataFrame, dataset: str) -> pl.DataFrame:
    """quality.csv layout: dataset, task, model, metric, value (a metric a model has no
    value for, as the MMR model's sampled ones, is left out)."""
    names = [m for m in (*METRICS, *BEYOND_METRICS) if m in metrics.columns]
    return metrics.unpivot(index=["model", "task"], on=names, variable_name="metric",
                           value_name="value").drop_nulls("value").select(
        pl.lit(dataset).alias("dataset"), "task", "model", "metric", pl.col("value").round(6))


def merge_quality(quality: Path, rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` replace the old rows of the same (dataset, model); other models' rows stay, so
    an explicit job (the LLM reranker's paired evaluation) survives a re-run of the rest."""
    if not quality.exists():
        return rows
    old = pl.read_csv(quality).join(rows.select("dataset", "model").unique(),
                                    on=["dataset", "model"], how="anti")
    return pl.concat([old, rows], how="vertical_relaxed")


@dataclass
class EvalResult:
    config: EvalConfig
    dataset_summary: dict[str, Any]
    fingerprint: str
    requests: pl.DataFrame
    items: pl.DataFrame
    rankings: pl.LazyFrame  # the run's rankings parquet files, scanned (never loaded whole)
    metrics: pl.DataFrame
    tuning: pl.DataFrame
    chosen: dict[str, dict[str, Any]]
    seconds: float
    candidate_recall: pl.DataFrame | None = None  # task, candidates, recall, requests
    skipped: dict[str, str] = field(default_factory=dict)  # model -> why it was left out
    stages: list[dict[str, Any]] = field(default_factory=list)  # stage, seconds, peak RSS
    trained: str | None = None  # the manifest of train() whose artifacts were read
    ids: IdMap | None = None  # the dataset's own ids, for string-id data (recdata.ids)
    # the ranker re-ranked by MMR per setting (split, task, temperature, head_share, lambda,
    # metrics: validation's whole grid, NDCG@10 and ILD@10; test's chosen lambda line, every
    # metric), and per task the setting chosen on validation with its ILD floor
    # (ranking.evaluation.tradeoff)
    tradeoff: pl.DataFrame | None = None
    diversity_chosen: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return str(self.dataset_summary["dataset"])

    @property
    def run_dir(self) -> Path:
        return self.config.data_dir / "runs" / self.fingerprint

    def save(self, update_quality: bool = True) -> dict[str, Path]:
        """Write every artifact; returns their paths by name."""
        run = self.run_dir
        run.mkdir(parents=True, exist_ok=True)
        paths = {"run_dir": run, "duckdb": run / "eval.duckdb",
                 "requests": run / "requests.parquet"}
        tmp, target = atomic_path(paths["duckdb"])
        tmp.unlink()
        con = duckdb.connect(str(tmp))
        try:
            tables = [("requests", self.requests), ("metrics", self.metrics),
                      ("tuning", self.tuning)]
            if self.candidate_recall is not None:
                tables.append(("candidate_recall", self.candidate_recall))
            if self.tradeoff is not None:
                tables.append(("diversity_tradeoff", self.tradeoff))
            for kind in ("item", "user"):  # join on these to read the dataset's own ids
                table = None if self.ids is None else self.ids.table(kind)  # type: ignore[arg-type]
                if table is not None:
                    tables.append((f"{kind}_ids", table))
            for name, frame in tables:
                con.register("_frame", frame.to_arrow())
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM _frame")
                con.unregister("_frame")
            glob = str(self.run_dir / "rankings" / "*.parquet")
            con.execute(f"CREATE TABLE rankings AS SELECT * FROM read_parquet({sql_string(glob)})")
        finally:
            con.close()
        os.replace(tmp, target)
        write_parquet_atomic(self.requests, paths["requests"])
        write_text_atomic(run / "result.json", json.dumps({
            "config": self.config.model_dump(mode="json"),
            "dataset": self.dataset_summary,
            "chosen_configs": self.chosen,
            "skipped_models": self.skipped,
            "versions": library_versions(),
            "seconds": round(self.seconds, 1),
            "stages": self.stages,
            "trained": self.trained,
        }, indent=2))
        if update_quality:
            from ranking.evaluation.report import plot_ndcg

            quality = self.config.results_dir / "quality.csv"
            rows = long_metrics(self.metrics, self.dataset)
            if self.candidate_recall is not None:
                rows = pl.concat([rows, self.candidate_recall.select(
                    pl.lit(self.dataset).alias("dataset"), "task",
                    pl.lit("candidates").alias("model"),
                    pl.format("recall@{}", "candidates").alias("metric"),
                    pl.col("recall").round(6).alias("value"))])
            rows = merge_quality(quality, rows)
            write_text_atomic(quality, rows.write_csv())
            paths["quality"] = quality
            mine = rows.filter(pl.col("dataset") == self.dataset)
            # one plot per dataset, and quality.png: the latest evaluation's
            plot_ndcg(mine, self.config.results_dir / f"quality-{self.dataset}.png")
            paths["plot"] = plot_ndcg(mine, self.config.results_dir / "quality.png")
            if self.tradeoff is not None:
                paths.update(self._save_tradeoff())
        return paths

    def _save_tradeoff(self) -> dict[str, Path]:
        """diversity.csv (this dataset's rows replaced, the others kept) and the NDCG@10
        against ILD@10 plot beside quality.png (one per dataset, and the latest run's)."""
        from ranking.evaluation.tradeoff import plot_tradeoff

        assert self.tradeoff is not None and self.config.diversity is not None
        target = self.config.results_dir / "diversity.csv"

        def chosen(task: str, pick: dict[str, float]) -> pl.Expr:
            hit = (pl.col("task") == task) & (pl.col("lambda") == pick["lambda"])
            if pick["lambda"] > 0:  # lambda 0 is one row, whatever the temperature and head share
                hit &= (pl.col("temperature") == pick["temperature"]) \
                    & (pl.col("head_share") == pick["head_share"])
            return hit

        flags = [chosen(t, p) for t, p in self.diversity_chosen.items()]
        rows = self.tradeoff.with_columns(
            (pl.any_horizontal(flags) if flags else pl.lit(False)).alias("chosen")).select(
            pl.lit(self.dataset).alias("dataset"), pl.lit(self.config.diversity.model)
            .alias("model"), pl.all()).with_columns(
            pl.col(pl.Float64).round(6))
        if target.exists():
            rows = pl.concat([pl.read_csv(target).filter(pl.col("dataset") != self.dataset),
                              rows], how="diagonal_relaxed")
        write_text_atomic(target, rows.write_csv())
        title = f"{self.dataset}: {self.config.diversity.model} re-ranked by MMR (test)"
        plot_tradeoff(self.tradeoff, self.diversity_chosen,
                      self.config.results_dir / f"diversity-{self.dataset}.png", title)
        plot = plot_tradeoff(self.tradeoff, self.diversity_chosen,
                             self.config.results_dir / "diversity.png", title)
        return {"diversity": target, "diversity_plot": plot}
