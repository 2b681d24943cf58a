"""Human-facing output: the rich metrics table and the NDCG@10 plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from rich.console import Console
from rich.table import Table

from ranking.evaluation.metrics import METRICS
from recdata.atomic_io import atomic_path

if TYPE_CHECKING:
    from recdata.ids import IdMap

# Short headers keep the table inside an 80-column terminal.
HEADERS = {"hr@10": "HR@10", "ndcg@10": "NDCG@10", "mrr@10": "MRR@10", "recall@20": "R@20",
           "sampled_hr@10": "sHR@10", "sampled_ndcg@10": "sNDCG@10", "ild@10": "ILD@10",
           "coverage@10": "Cov@10"}
SHOWN = (*METRICS, "ild@10", "coverage@10")  # the rest of beyond accuracy: quality.csv


def metrics_tables(metrics: pl.DataFrame, dataset: str) -> list[Table]:
    """One table per task: models as rows, metrics as columns, best per column in bold."""
    tables = []
    for task in metrics["task"].unique(maintain_order=True).to_list():
        part = metrics.filter(pl.col("task") == task).sort("ndcg@10", descending=True)
        table = Table(title=f"{dataset} — task '{task}' (test, {part['requests'][0]} requests,"
                            " held-out phrasings; s = sampled 1+99; ILD = intra-list "
                            "diversity, Cov = catalogue coverage)")
        table.add_column("model", no_wrap=True)
        shown = [m for m in SHOWN if m in part.columns]
        for m in shown:
            table.add_column(HEADERS[m], justify="right")
        best = {m: part[m].max() for m in shown}
        for row in part.iter_rows(named=True):
            cells = ["–" if row[m] is None else f"[bold]{row[m]:.3f}[/bold]"
                     if row[m] == best[m] else f"{row[m]:.3f}" for m in shown]
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


def sample_recommendations(rankings: pl.LazyFrame, requests: pl.DataFrame,
                           items: pl.DataFrame, metrics: pl.DataFrame, *, task: str = "intent",
                           n_requests: int = 3, k: int = 5,
                           ids: IdMap | None = None) -> pl.DataFrame:
    """Top-k titles of the task's best model (by test NDCG@10) for a few test requests;
    `hit` marks the held-out target, so a reader sees what the figures mean."""
    best = metrics.filter(pl.col("task") == task).sort("ndcg@10", descending=True)
    if best.height == 0:
        return pl.DataFrame()
    model = best["model"][0]
    chosen = requests.filter((pl.col("split") == "test") & (pl.col("task") == task)).sort(
        "user_id").head(n_requests)
    if ids is not None and ids.users is not None:  # shown as the dataset's own user ids
        chosen = chosen.with_columns(pl.Series("user_id", ids.keys(
            chosen["user_id"].to_numpy(), "user"), pl.String))
    return rankings.filter(
        (pl.col("model") == model) & (pl.col("protocol") == "full") & (pl.col("rank") <= k)
    ).collect().join(chosen.select("request_id", "user_id", "instruction", "target_item_id"),
                     on="request_id").join(items.select("item_id", "title"),
                                           on="item_id").select(
        pl.lit(model).alias("model"), "user_id", "instruction", "rank", "title",
        (pl.col("item_id") == pl.col("target_item_id")).alias("hit"),
    ).sort("user_id", "rank")


def print_samples(samples: pl.DataFrame, console: Console | None = None) -> None:
    console = console or Console()
    if samples.height == 0:
        return
    table = Table(title=f"sample recommendations ({samples['model'][0]}, test requests; "
                        "* = the held-out target)")
    table.add_column("user")
    table.add_column("request")
    table.add_column("top titles")
    for (user, instruction), part in samples.group_by(["user_id", "instruction"],
                                                      maintain_order=True):
        titles = [f"{r}. {t}{' *' if h else ''}" for r, t, h in
                  part.select("rank", "title", "hit").iter_rows()]
        table.add_row(str(user), str(instruction), "\n".join(titles))
    console.print(table)
