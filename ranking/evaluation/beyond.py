"""Beyond accuracy: how varied, how far into the catalogue and how unexpected the top ten
are, in DuckDB SQL over the same rankings table the accuracy metrics read.

A list of ten near-identical items can score well on NDCG and still be a poor answer, so
each model and task also gets, over the full-ranking protocol's top ten:

- `ild@10`: intra-list diversity, 1 - the mean cosine between the text vectors of every
  pair of items in a list (the encoder's item vectors, unit length), averaged over lists.
- `ild_attr@10`: the same with the Jaccard distance of the items' attribute sets (genres,
  tags: the catalogue's `genres` column); two items without attributes are at distance 0.
- `coverage@10`: the share of the catalogue recommended to at least one request.
- `novelty@10`: the mean self-information -log2 p(item) of the listed items, p the item's
  share of the training window's interactions with add-one smoothing
  ((count + 1) / (interactions + items), so an item nobody touched is finite and rarest).
- `popular_share@10`: the share of listed items among the most popular 10% of the
  catalogue in the training window (ties at the cut all count as popular).

Lists of one item have no pairs: they count for coverage, novelty and popularity, not for
the two diversities. Memory follows the rankings (pairs of a list are formed per request in
SQL), never items x items. Each distinct item pair's two distances are computed once and
joined back to the lists that hold it: the lists of one evaluation share most of their
pairs (a diversity trade-off's 3,342 lists x 48 settings: 1.8 M list pairs, 135 k distinct,
10.6 -> 1.5 s), and a pair's distance is the same expression on the same two rows either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from ranking.evaluation.metrics import over_rankings

BEYOND_METRICS = ("ild@10", "ild_attr@10", "coverage@10", "novelty@10", "popular_share@10")
POPULAR_SHARE = 0.10  # the head whose share of the lists is reported

BEYOND_SQL = """
WITH top AS (
    SELECT model, task, request_id, rank, item_id FROM {rankings}
    WHERE protocol = 'full' AND rank <= 10
), listed AS (
    SELECT a.model, a.task, a.request_id, a.item_id AS a_id, b.item_id AS b_id
    FROM top a
    JOIN top b ON a.model = b.model AND a.task = b.task AND a.request_id = b.request_id
        AND a.rank < b.rank
), distances AS (
    -- each (higher-ranked, lower-ranked) item pair once: lists share most of their pairs
    SELECT p.a_id, p.b_id,
        1 - array_cosine_similarity(ia.vec, ib.vec) AS d,
        CASE WHEN len(list_distinct(list_concat(ia.attrs, ib.attrs))) = 0 THEN 0.0
            ELSE 1 - len(list_intersect(ia.attrs, ib.attrs))
                     / len(list_distinct(list_concat(ia.attrs, ib.attrs))) END AS d_attr
    FROM (SELECT DISTINCT a_id, b_id FROM listed) p
    JOIN beyond_items ia ON ia.item_id = p.a_id
    JOIN beyond_items ib ON ib.item_id = p.b_id
), pairs AS (
    SELECT model, task, request_id, avg(d) AS ild, avg(d_attr) AS ild_attr
    FROM listed JOIN distances USING (a_id, b_id)
    GROUP BY ALL
), lists AS (
    SELECT t.model, t.task, t.request_id,
        avg(-log2(p.p)) AS novelty, avg(p.popular::DOUBLE) AS popular_share
    FROM top t JOIN beyond_popularity p ON p.task = t.task AND p.item_id = t.item_id
    GROUP BY ALL
), covered AS (
    SELECT model, task, count(DISTINCT item_id) / {n_items} AS coverage FROM top GROUP BY ALL
)
SELECT l.model, l.task,
    avg(pr.ild) AS "ild@10", avg(pr.ild_attr) AS "ild_attr@10",
    any_value(c.coverage) AS "coverage@10",
    avg(l.novelty) AS "novelty@10", avg(l.popular_share) AS "popular_share@10"
FROM lists l
LEFT JOIN pairs pr USING (model, task, request_id)
JOIN covered c USING (model, task)
GROUP BY l.model, l.task
ORDER BY l.task, l.model
"""


def item_table(item_ids: np.ndarray, vectors: np.ndarray,
               attributes: list[list[str] | None]) -> pl.DataFrame:
    """The items' unit text vectors and attribute sets, as the SQL reads them."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return pl.DataFrame({
        "item_id": item_ids,
        "vec": pl.Series(unit, dtype=pl.Array(pl.Float32, unit.shape[1])),
        "attrs": pl.Series([a or [] for a in attributes], dtype=pl.List(pl.String)),
    })


def popularity_table(task: str, item_ids: np.ndarray, counts: np.ndarray) -> pl.DataFrame:
    """(task, item_id, p, popular) from the training window's interaction counts."""
    n = len(counts)
    p = (counts + 1.0) / (counts.sum() + n)
    head = max(1, int(np.ceil(POPULAR_SHARE * n)))
    cut = np.sort(counts)[::-1][head - 1] if n else 0.0
    return pl.DataFrame({"task": task, "item_id": item_ids, "p": p,
                         "popular": counts >= cut})


def beyond_accuracy_of(rankings: pl.DataFrame | Path, items: pl.DataFrame,
                       popularity: pl.DataFrame, n_items: int) -> pl.DataFrame:
    """One row per (model, task) with every beyond-accuracy metric, for a rankings frame or
    folder (metrics.over_rankings)."""
    with over_rankings(rankings, beyond_items=items, beyond_popularity=popularity) as con:
        return con.execute(BEYOND_SQL.format(rankings="rankings",
                                             n_items=max(1, int(n_items)))).pl()
