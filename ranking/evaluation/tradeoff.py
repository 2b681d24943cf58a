"""Accuracy against diversity for the ranker re-ranked by MMR (ranking.diversity).

The ranker's top `pool` per request, on validation and on test, is re-ranked for every
lambda of the grid; each re-ranked list is scored by the same DuckDB metrics as every model
(NDCG@10 and the rest, ranking.evaluation.metrics; ILD@10 and the rest,
ranking.evaluation.beyond). Lambda is chosen per task on validation, among the lambdas that
keep NDCG@10 within `max_ndcg_loss` of the ranker's own (lambda 0): the best NDCG@10 of
those whose ILD@10 reaches the floor (`floor`, or the ranker's own validation ILD@10 times
1 + `floor_gain`); where none reaches it, the most diverse of them (a floor bought with
any amount of accuracy would not be a choice anyone makes). Test figures are never looked
at while choosing. The chosen lambda's test lists are the model `<ranker>_mmr` of
quality.csv (full-ranking metrics only: MMR re-ranks the ranker's list, not the sampled
protocol's 100 candidates); the whole grid is the trade-off table and plot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from ranking.diversity import POOL, mmr_batch, similarities

CHUNK = 2_000  # lists re-ranked together (each holds pool x pool similarities)


class DiversityConfig(BaseModel):
    """The optional MMR stage as the evaluation measures it."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field("ltr_full", description="the ranker whose lists are re-ranked")
    lambdas: list[float] = Field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 0.4,
                                                          0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    floor: float | None = Field(None, ge=0, le=2, description="ILD@10 the chosen lambda must "
                                                              "reach on validation")
    floor_gain: float = Field(0.2, ge=0, description="without `floor`: the ranker's own "
                                                     "validation ILD@10 times 1 + this")
    max_ndcg_loss: float = Field(0.03, ge=0, le=1, description="the most validation NDCG@10 "
                                                               "(a share of the ranker's) a "
                                                               "chosen lambda may give up")
    pool: int = Field(POOL, ge=10)


def pooled(rows: pl.DataFrame, pool: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(request ids, lists x pool item ids (-1 pads), lists x pool scores (-inf pads)) of a
    ranking's first `pool` ranks."""
    top = rows.filter(pl.col("rank") <= pool).sort("request_id", "rank")
    requests = top["request_id"].unique(maintain_order=True)
    row = top["request_id"].rank("dense").cast(pl.Int64).to_numpy() - 1
    col = top["rank"].cast(pl.Int64).to_numpy() - 1
    items = np.full((len(requests), pool), -1, dtype=np.int64)
    scores = np.full((len(requests), pool), -np.inf)
    items[row, col] = top["item_id"].to_numpy()
    scores[row, col] = top["score"].to_numpy()
    return requests.to_numpy(), items, scores


def reranked(requests: np.ndarray, items: np.ndarray, scores: np.ndarray,
             item_ids: np.ndarray, unit: np.ndarray, lambdas: list[float], k: int,
             keep: int = 20) -> dict[float, pl.DataFrame]:
    """Per lambda, the ranking rows (request_id, rank, item_id, score) of the lists
    re-ranked with it, ranks up to `keep` (what the metrics read); `unit[j]` is the unit
    text vector of item `item_ids[j]`. Each chunk's similarities are computed once for
    every lambda."""
    frames: dict[float, list[pl.DataFrame]] = {lam: [] for lam in lambdas}
    order_ids = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[order_ids]
    for lo in range(0, len(requests), CHUNK):
        its, sc = items[lo:lo + CHUNK], scores[lo:lo + CHUNK]
        pos = np.clip(np.searchsorted(sorted_ids, its), 0, len(sorted_ids) - 1)
        at = np.where(sorted_ids[pos] == its, order_ids[pos], -1)
        sims = similarities(np.where((at >= 0)[..., None], unit[np.maximum(at, 0)], 0.0))
        for lam in lambdas:
            order = mmr_batch(sc, None, lam, k, sims=sims)[:, :keep]
            new_items = np.take_along_axis(its, order, axis=1)
            new_scores = np.take_along_axis(sc, order, axis=1)
            r, c = np.nonzero(new_items >= 0)
            frames[lam].append(pl.DataFrame({
                "request_id": requests[lo:lo + CHUNK][r], "rank": (c + 1).astype(np.int32),
                "item_id": new_items[r, c], "score": new_scores[r, c]}))
    return {lam: pl.concat(parts) for lam, parts in frames.items() if parts}


def choose(validation: pl.DataFrame, cfg: DiversityConfig) -> dict[str, tuple[float, float]]:
    """Per task: (chosen lambda, the ILD@10 floor it was held to), from validation rows of
    the trade-off table."""
    out = {}
    for task, rows in validation.group_by("task", maintain_order=True):
        base = rows.filter(pl.col("lambda") == 0.0)
        own_ild = float(base["ild@10"][0]) if base.height else float(rows["ild@10"].min())
        own_ndcg = float(base["ndcg@10"][0]) if base.height else float(rows["ndcg@10"].max())
        floor = cfg.floor if cfg.floor is not None else own_ild * (1 + cfg.floor_gain)
        kept = rows.filter(pl.col("ndcg@10") >= own_ndcg * (1 - cfg.max_ndcg_loss))
        if kept.is_empty():
            kept = rows.filter(pl.col("lambda") == rows["lambda"].min())
        ok = kept.filter(pl.col("ild@10") >= floor)
        pick = ok.sort(["ndcg@10", "lambda"], descending=[True, False]) if ok.height else \
            kept.sort(["ild@10", "lambda"], descending=[True, False])
        out[str(task[0])] = (float(pick["lambda"][0]), floor)
    return out


def plot_tradeoff(table: pl.DataFrame, chosen: dict[str, tuple[float, float]],
                  target: Path, title: str) -> Path:
    """NDCG@10 against ILD@10 on test, one line per task through the lambda grid; the ranker
    (lambda 0) and the chosen lambda marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recdata.atomic_io import atomic_path

    test = table.filter(pl.col("split") == "test").sort("task", "lambda")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for task, rows in test.group_by("task", maintain_order=True):
        name = str(task[0])
        x, y = rows["ild@10"].to_numpy(), rows["ndcg@10"].to_numpy()
        line, = ax.plot(x, y, marker="o", label=name)
        for lam, xi, yi in zip(rows["lambda"], x, y, strict=True):
            ax.annotate(f"{lam:g}", (xi, yi), textcoords="offset points", xytext=(3, 3),
                        fontsize=7)
        lam = chosen.get(name, (None, None))[0]
        hit = rows.filter(pl.col("lambda") == lam)
        if hit.height:
            ax.scatter(hit["ild@10"], hit["ndcg@10"], s=120, facecolors="none",
                       edgecolors=line.get_color(), linewidths=2)
    ax.set_xlabel("intra-list diversity@10 (1 - mean pairwise cosine)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title + "\n(labels: lambda; circled: chosen on validation)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, final = atomic_path(target)
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(final)
    return final
