"""Human-facing output: the rich metrics table and the NDCG@10 plot."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from ranking.evaluation.metrics import METRICS
from ranking.evaluation.result import atomic_path


def metrics_tables(metrics: pl.DataFrame, dataset: str) -> list[Table]:
    """One table per task: models as rows, metrics as columns, best per column in bold."""
    tables = []
    for task in metrics["task"].unique(maintain_order=True).to_list():
        part = metrics.filter(pl.col("task") == task).sort("ndcg@10", descending=True)
        table = Table(title=f"{dataset} — task '{task}' (test, {part['requests'][0]} requests,"
                            " held-out phrasings)")
        table.add_column("model")
        for m in METRICS:
            table.add_column(m, justify="right")
        best = {m: part[m].max() for m in METRICS}
        for row in part.iter_rows(named=True):
            cells = [f"[bold]{row[m]:.4f}[/bold]" if row[m] == best[m] else f"{row[m]:.4f}"
                     for m in METRICS]
            table.add_row(row["model"], *cells)
        tables.append(table)
    return tables


def print_metrics(metrics: pl.DataFrame, dataset: str, console: Console | None = None) -> None:
    console = console or Console()
    for table in metrics_tables(metrics, dataset):
        console.print(table)


def plot_ndcg(quality: pl.DataFrame, target: Path) -> Path:
    """Grouped bars of NDCG@10 by model and task (quality.csv layout in)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = quality.filter(pl.col("metric") == "ndcg@10")
    models = data["model"].unique(maintain_order=True).to_list()
    tasks = data["task"].unique(maintain_order=True).to_list()
    width = 0.8 / max(len(tasks), 1)
    fig, ax = plt.subplots(figsize=(max(8, len(models) * 0.9), 4.5))
    x = np.arange(len(models))
    for i, task in enumerate(tasks):
        values = data.filter(pl.col("task") == task).join(
            pl.DataFrame({"model": models}), on="model", how="right")
        ax.bar(x + i * width - 0.4 + width / 2, values["value"].fill_null(0).to_numpy(),
               width, label=task)
    ax.set_xticks(x, models, rotation=30, ha="right")
    ax.set_ylabel("NDCG@10 (full ranking, test)")
    dataset = data["dataset"][0] if data.height else ""
    ax.set_title(f"{dataset}: NDCG@10 by model and task")
    ax.legend(title="task")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp, target = atomic_path(target)
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, target)
    return target
