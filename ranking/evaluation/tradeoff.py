"""Accuracy against diversity for the ranker re-ranked by MMR (ranking.diversity).

The ranker's top `pool` per request, on validation and on test, is re-ranked by MMR. On
validation every setting of the grid (relevance temperature x kept head share x lambda) is
screened for NDCG@10 and ILD@10 (`screened`, numpy; a test holds its figures equal to the
metrics queries', which over every pair of every list of ~70 settings cost minutes and
gigabytes), and the setting is chosen per task: among those that keep NDCG@10 within
`max_ndcg_loss` of the ranker's own (lambda 0), the best NDCG@10 of those whose ILD@10
reaches the floor (`floor`, or the ranker's own validation ILD@10 times 1 + `floor_gain`);
where none reaches it, the most diverse of them (a floor bought with any amount of accuracy
would not be a choice anyone makes). Test figures are never looked at while choosing. On
test, each task's lambda line at its chosen temperature and head share is scored by the
same DuckDB metrics as every model (ranking.evaluation.metrics and .beyond); the chosen
setting's test lists are the model `<ranker>_mmr` of quality.csv (full-ranking metrics
only: MMR re-ranks the ranker's list, not the sampled protocol's 100 candidates).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from ranking.diversity import HEAD_SHARE, POOL, TEMPERATURE, LazySimilarities, mmr_batch
from recdata.cores import usable_cores

CHUNK = 250  # lists re-ranked together (their pools' vectors and similarity rows)
Setting = tuple[float, float, float]  # (temperature, head_share, lambda)
T = TypeVar("T")


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
    temperatures: list[float] = Field(default_factory=lambda: [1.0, TEMPERATURE],
                                      description="relevance temperatures tried "
                                                  "(ranking.diversity.relevance)")
    head_shares: list[float] = Field(default_factory=lambda: [0.3, HEAD_SHARE, 0.7],
                                     description="shares of the first ranks kept in place, "
                                                 "tried")
    pool: int = Field(POOL, ge=10)

    def settings(self) -> list[Setting]:
        """(temperature, head_share, lambda) of the grid; lambda 0 once (it ignores the
        others)."""
        t0, h0 = self.temperatures[0], self.head_shares[0]
        return [(t, h, lam) for t in self.temperatures for h in self.head_shares
                for lam in self.lambdas if lam > 0 or (t, h) == (t0, h0)]


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


def _per_chunk(items: np.ndarray, scores: np.ndarray, item_ids: np.ndarray, unit: np.ndarray,
               settings: list[Setting], k: int,
               work: Callable[[int, LazySimilarities, Setting, np.ndarray], T]) -> Iterator[T]:
    """`work(first list of the chunk, the chunk's similarities, setting, its MMR order)` for
    each chunk of lists and each setting; a chunk's similarities are shared by all its
    settings. Chunks run on a thread per core (MMR's steps are numpy calls over a chunk,
    most of which release the GIL: a 67-setting screen of 1,500 lists 7.5 -> 4.0 s on two);
    the results come in chunk order, then setting order, as one thread would give them."""
    order_ids = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[order_ids]
    unit = np.asarray(unit, dtype=np.float32)

    def chunk(lo: int) -> list[T]:
        its, sc = items[lo:lo + CHUNK], scores[lo:lo + CHUNK]
        pos = np.clip(np.searchsorted(sorted_ids, its), 0, len(sorted_ids) - 1)
        at = np.where(sorted_ids[pos] == its, order_ids[pos], -1)
        vectors = unit[np.maximum(at, 0)]
        vectors[at < 0] = 0.0  # pads
        sims = LazySimilarities(vectors)
        return [work(lo, sims, setting, mmr_batch(sc, None, setting[2], k, sims=sims,
                                                  temperature=setting[0],
                                                  head_share=setting[1]))
                for setting in settings]

    starts = range(0, len(items), CHUNK)
    threads = min(usable_cores(), len(starts))
    with (ThreadPoolExecutor(threads, thread_name_prefix="tradeoff") if threads > 1
          else nullcontext()) as pool:
        for results in (pool.map if pool is not None else map)(chunk, starts):
            yield from results


def reranked(requests: np.ndarray, items: np.ndarray, scores: np.ndarray,
             item_ids: np.ndarray, unit: np.ndarray, settings: list[Setting],
             k: int, keep: int = 20) -> dict[Setting, pl.DataFrame]:
    """Per (temperature, head_share, lambda), the ranking rows (request_id, rank, item_id,
    score) of the lists re-ranked with it, ranks up to `keep` (what the metrics read);
    `unit[j]` is the unit text vector of item `item_ids[j]`."""

    def rows(lo: int, _: LazySimilarities, setting: Setting,
             order: np.ndarray) -> tuple[Setting, pl.DataFrame]:
        order = order[:, :keep]
        hi = lo + len(order)
        new_items = np.take_along_axis(items[lo:hi], order, axis=1)
        new_scores = np.take_along_axis(scores[lo:hi], order, axis=1)
        r, c = np.nonzero(new_items >= 0)
        return setting, pl.DataFrame({
            "request_id": requests[lo:hi][r], "rank": (c + 1).astype(np.int32),
            "item_id": new_items[r, c], "score": new_scores[r, c]})

    frames: dict[Setting, list[pl.DataFrame]] = {s: [] for s in settings}
    for setting, frame in _per_chunk(items, scores, item_ids, unit, settings, k, rows):
        frames[setting].append(frame)
    return {s: pl.concat(parts) for s, parts in frames.items() if parts}


def screened(items: np.ndarray, scores: np.ndarray, targets: np.ndarray,
             item_ids: np.ndarray, unit: np.ndarray, settings: list[Setting],
             k: int) -> pl.DataFrame:
    """NDCG@10 and ILD@10 of every setting over these lists (one target each, `targets`
    aligned with the rows), in numpy: the validation screen that picks each task's
    temperature and head share among the whole grid. The metrics queries compute the same
    two figures (tests hold them equal) but over every pair of every list of every setting
    they cost minutes and gigabytes; the table they fill is each task's lambda line."""
    ranks = min(10, items.shape[1])
    gain = 1.0 / np.log2(np.arange(2, ranks + 2))
    pair = np.triu(np.ones((ranks, ranks), dtype=bool), 1)

    def figures(lo: int, sims: LazySimilarities, setting: Setting,
                order: np.ndarray) -> tuple[Setting, list[float]]:
        top = order[:, :ranks]
        hi = lo + len(order)
        listed = np.take_along_axis(items[lo:hi], top, axis=1)
        ndcg = ((listed == targets[lo:hi, None]) * gain).sum(axis=1)
        cos = sims.block(top).astype(np.float64)
        real = listed >= 0
        both = real[:, :, None] & real[:, None, :] & pair
        n_pairs = both.sum(axis=(1, 2))
        has = n_pairs > 0
        ild = 1.0 - (cos * both).sum(axis=(1, 2))[has] / n_pairs[has]
        return setting, [ndcg.sum(), len(ndcg), ild.sum(), len(ild)]

    sums: dict[Setting, np.ndarray] = {s: np.zeros(4) for s in settings}
    for setting, part in _per_chunk(items, scores, item_ids, unit, settings, k, figures):
        sums[setting] += part  # in chunk order: the same sums as one thread's
    return pl.DataFrame([{"temperature": t, "head_share": h, "lambda": lam,
                          "ndcg@10": v[0] / max(v[1], 1.0),
                          "ild@10": v[2] / v[3] if v[3] else float("nan")}
                         for (t, h, lam), v in sums.items()])


def setting_label(setting: Setting) -> str:
    """A setting as the `model` column of a metrics query (`setting_columns` reads it)."""
    return "|".join(repr(v) for v in setting)


def setting_columns(label: pl.Expr) -> list[pl.Expr]:
    parts = label.str.split("|")
    return [parts.list.get(0).cast(pl.Float64).alias("temperature"),
            parts.list.get(1).cast(pl.Float64).alias("head_share"),
            parts.list.get(2).cast(pl.Float64).alias("lambda")]


def choose(validation: pl.DataFrame, cfg: DiversityConfig) -> dict[str, dict[str, float]]:
    """Per task: the chosen setting (temperature, head_share, lambda) and the ILD@10 floor it was
    held to (`ild_floor`), from validation rows of the trade-off table."""
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
        # ties: the smaller lambda, then the larger head, then the colder temperature
        order = ["lambda", "head_share", "temperature"]
        pick = ok.sort(["ndcg@10", *order], descending=[True, False, True, False]) \
            if ok.height else kept.sort(["ild@10", *order], descending=[True, False, True,
                                                                          False])
        out[str(task[0])] = {"temperature": float(pick["temperature"][0]),
                             "head_share": float(pick["head_share"][0]),
                             "lambda": float(pick["lambda"][0]),
                             "ild_floor": floor}
    return out


def plot_tradeoff(table: pl.DataFrame, chosen: dict[str, dict[str, float]],
                  target: Path, title: str) -> Path:
    """NDCG@10 against ILD@10 on test, one line per task through the lambda grid at the
    task's chosen temperature and head share (lambda 0: the ranker); the chosen point circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recdata.atomic_io import atomic_path

    test = table.filter(pl.col("split") == "test").sort("task", "lambda")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for task, rows in test.group_by("task", maintain_order=True):
        name = str(task[0])
        pick = chosen.get(name)
        if pick is not None and "temperature" in rows.columns:
            rows = rows.filter((pl.col("lambda") == 0.0) | (
                (pl.col("temperature") == pick["temperature"])
                & (pl.col("head_share") == pick["head_share"])))
        x, y = rows["ild@10"].to_numpy(), rows["ndcg@10"].to_numpy()
        label = f"{name} (T {pick['temperature']:g}, head {pick['head_share']:g})" if pick \
            else name
        line, = ax.plot(x, y, marker="o", label=label)
        for lam, xi, yi in zip(rows["lambda"], x, y, strict=True):
            ax.annotate(f"{lam:g}", (xi, yi), textcoords="offset points", xytext=(3, 3),
                        fontsize=7)
        hit = rows.filter(pl.col("lambda") == pick["lambda"]) if pick else rows.clear()
        if hit.height:
            ax.scatter(hit["ild@10"], hit["ndcg@10"], s=120, facecolors="none",
                       edgecolors=line.get_color(), linewidths=2)
    ax.set_xlabel("intra-list diversity@10 (1 - mean pairwise cosine)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title + "\n(labels: lambda, at each task's chosen temperature and head share; "
                 "circled: chosen on validation)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, final = atomic_path(target)
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(final)
    return final
