"""Metrics as DuckDB SQL over a rankings table, the only place they are computed.

`rankings(model, task, protocol, request_id, rank, item_id, score)` holds each model's top-k
per request; `requests(request_id, task, target_item_id, ...)` says which requests count. A
request whose target is absent from the top-k counts as a miss, so the denominator is every
request of the task, not only those with a hit. With one target per request, Recall@20 is
the hit rate at 20.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

from featurestore.store import sql_string

METRICS = ("hr@10", "ndcg@10", "mrr@10", "recall@20", "sampled_hr@10", "sampled_ndcg@10")

METRICS_SQL = """
WITH evaluated AS (
    SELECT DISTINCT model, task FROM {rankings}
), targets AS (
    SELECT e.model, e.task, q.request_id, q.target_item_id
    FROM evaluated e JOIN {requests} q ON q.task = e.task
), hit AS (
    SELECT r.model, r.task, r.protocol, r.request_id, min(r.rank) AS rank
    FROM {rankings} r JOIN {requests} q
      ON q.request_id = r.request_id AND q.target_item_id = r.item_id
    GROUP BY ALL
), per_request AS (
    SELECT t.model, t.task, t.request_id, f.rank AS full_rank, s.rank AS sampled_rank
    FROM targets t
    LEFT JOIN hit f ON f.model = t.model AND f.task = t.task
         AND f.request_id = t.request_id AND f.protocol = 'full'
    LEFT JOIN hit s ON s.model = t.model AND s.task = t.task
         AND s.request_id = t.request_id AND s.protocol = 'sampled'
)
SELECT model, task, count(*) AS requests,
    avg(CASE WHEN full_rank <= 10 THEN 1.0 ELSE 0.0 END) AS "hr@10",
    avg(CASE WHEN full_rank <= 10 THEN 1.0 / log2(full_rank + 1) ELSE 0.0 END) AS "ndcg@10",
    avg(CASE WHEN full_rank <= 10 THEN 1.0 / full_rank ELSE 0.0 END) AS "mrr@10",
    avg(CASE WHEN full_rank <= 20 THEN 1.0 ELSE 0.0 END) AS "recall@20",
    avg(CASE WHEN sampled_rank <= 10 THEN 1.0 ELSE 0.0 END) AS "sampled_hr@10",
    avg(CASE WHEN sampled_rank <= 10 THEN 1.0 / log2(sampled_rank + 1) ELSE 0.0 END)
        AS "sampled_ndcg@10"
FROM per_request
GROUP BY model, task
ORDER BY task, model
"""


def compute_metrics(con: duckdb.DuckDBPyConnection, rankings: str = "rankings",
                    requests: str = "requests") -> pl.DataFrame:
    """One row per (model, task) with every metric; tables are named, not interpolated data."""
    return con.execute(METRICS_SQL.format(rankings=rankings, requests=requests)).pl()


@contextmanager
def over_rankings(rankings: pl.DataFrame | Path,
                  **tables: pl.DataFrame) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection where `rankings` is an in-memory frame or a folder of rankings
    parquet files (read by DuckDB as it goes, never loaded whole), beside `tables`."""
    con = duckdb.connect()
    try:
        if isinstance(rankings, Path):
            con.execute("CREATE VIEW rankings AS SELECT * FROM read_parquet("
                        f"{sql_string(str(rankings / '*.parquet'))})")
        else:
            con.register("rankings", rankings.to_arrow())
        for name, frame in tables.items():
            con.register(name, frame.to_arrow())
        yield con
    finally:
        con.close()


def metrics_of(rankings: pl.DataFrame | Path, requests: pl.DataFrame) -> pl.DataFrame:
    """Metrics for a rankings frame or folder (`over_rankings`); tuning on validation uses
    the same SQL."""
    with over_rankings(rankings, requests=requests) as con:
        return compute_metrics(con)
