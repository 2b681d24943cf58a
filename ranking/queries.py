"""Request text as the tuned encoder and the LLM reranker read it: the instruction plus the
titles of the user's most recent items.

InstructRec conditions on the instruction *and* the history; a bi-encoder can only do that
through its input text, so the tuned encoder is trained and queried on exactly this string.
One function builds it for training, evaluation and serving alike, so they cannot drift.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ranking.inputs import RequestBatch
from ranking.intent_parser import semantic_text
from recdata.schema import DomainSchema

HISTORY_TITLES = 3
HISTORY_IN_PROMPT = 10  # the LLM reranker's prompt
DEFAULT_LABEL = "recent"


def history_label(schema: DomainSchema) -> str:
    """What the history is called in the query text, in the domain's words ('recently
    listened to'): part of the tuned encoder's input, so training and serving share it."""
    return schema.wording.fill(schema.wording.history_label)


def _recent(batch: RequestBatch, titles: np.ndarray, n: int) -> pl.DataFrame:
    """One row per request (in batch order): `titles`, its last `n` titles, newest first."""
    h = batch.history_coo
    keep = h.data <= n
    past = pl.DataFrame({"row": h.row[keep].astype(np.int64),
                         "recency": h.data[keep].astype(np.float64),
                         "title": titles[h.col[keep]].astype(str)})
    grouped = past.sort("row", "recency").group_by("row").agg("title")
    rows = pl.DataFrame({"row": np.arange(len(batch), dtype=np.int64),
                         "instruction": semantic_text(batch.instructions)})
    return rows.join(grouped, on="row", how="left", maintain_order="left").with_columns(
        pl.col("title").fill_null(pl.lit([], dtype=pl.List(pl.String))).alias("titles"))


def recent_titles(batch: RequestBatch, titles: np.ndarray, n: int = HISTORY_TITLES
                  ) -> list[list[str]]:
    """Per request, the titles of its last `n` items, most recent first (empty without a
    history)."""
    return _recent(batch, titles, n)["titles"].to_list()


def query_texts(batch: RequestBatch, titles: np.ndarray, n: int = HISTORY_TITLES,
                label: str = DEFAULT_LABEL) -> list[str]:
    """`instruction | <label>: a; b; c`, or the bare instruction without history; the
    instruction without what it rules out (intent_parser.semantic_text)."""
    frame = _recent(batch, titles, n)
    return frame.select(
        pl.when(pl.col("titles").list.len() > 0)
        .then(pl.concat_str(pl.col("instruction"), pl.lit(f" | {label}: "),
                            pl.col("titles").list.join("; ")))
        .otherwise(pl.col("instruction"))
    ).to_series().to_list()


def prompt_history(batch: RequestBatch, titles: np.ndarray,
                   n: int = HISTORY_IN_PROMPT) -> list[list[str]]:
    """Each request's last `n` titles, oldest first: the LLM reranker's prompt order (the
    most recent item sits next to the candidate), for its training examples and serving."""
    return [h[::-1] for h in recent_titles(batch, titles, n)]
