"""What models see: the data they are fitted on and the requests they score.

Both are built here and nowhere else, so the point-in-time rule lives in one place:
- `FitData` for a cut holds only interactions strictly before that cut's targets (train
  when scoring validation, train + validation when scoring test);
- a request's history holds only the user's interactions before the target's position
  (timestamp, then ascending item id); `search` requests carry no history at all.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import polars as pl
import scipy.sparse as sp

from recdata.dataset import Dataset, item_text
from recdata.schema import DomainSchema
from recdata.split import temporal_leave_one_out

CUTS = {"val": ("train",), "test": ("train", "val")}
# Requests x items score matrices are only ever built for a chunk of requests of at most
# this many bytes (float64), so memory follows the catalogue and the chunk, never the run.
SCORE_CHUNK_BYTES = 32 * 2**20


# The ranker's examples (candidates x features) are built for at most this many requests
# at a time; score chunks above it are whole multiples of it, so every model cuts a batch
# at the same places and finds the examples another model already built.
EXAMPLE_ROWS = 1024


def chunk_rows(n_items: int, budget: int = SCORE_CHUNK_BYTES) -> int:
    """Requests per chunk so that one dense (chunk x items) float64 matrix fits `budget`."""
    rows = max(1, budget // (8 * max(n_items, 1)))
    return rows // EXAMPLE_ROWS * EXAMPLE_ROWS if rows >= EXAMPLE_ROWS else rows


@dataclass(frozen=True)
class Catalogue:
    """Items in a fixed order: column j of every score matrix is `item_ids[j]`."""

    items: pl.DataFrame  # item_idx, item_id, and the dataset's item columns
    text: pl.Series
    schema: DomainSchema = field(default_factory=lambda: DomainSchema(dataset="any"))

    @property
    def n_items(self) -> int:
        return self.items.height

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Catalogue:
        items = ds.items.sort("item_id").with_row_index("item_idx").with_columns(
            pl.col("item_idx").cast(pl.Int64))
        return cls(items, item_text(items, ds.text_columns), ds.domain)

    def index(self, frame: pl.DataFrame, id_col: str = "item_id",
              idx_col: str = "item_idx") -> pl.DataFrame:
        return frame.join(
            self.items.select(pl.col("item_id").alias(id_col), pl.col("item_idx").alias(idx_col)),
            on=id_col, how="left")


@dataclass(frozen=True)
class FitData:
    """Interactions a model may learn from (user_id, item_idx, timestamp, rating, seq)."""

    name: str
    interactions: pl.DataFrame
    catalogue: Catalogue
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_items(self) -> int:
        return self.catalogue.n_items

    def user_item(self) -> sp.csr_matrix:
        """Binary users x items matrix (users in ascending id order)."""
        if "ui" not in self._cache:
            users = self.interactions["user_id"].rank("dense").cast(pl.Int64).to_numpy() - 1
            items = self.interactions["item_idx"].to_numpy()
            m = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (users, items)),
                              shape=(int(users.max(initial=-1)) + 1, self.n_items))
            m.data[:] = 1.0
            self._cache["ui"] = m
        return self._cache["ui"]

    def popularity(self) -> np.ndarray:
        counts = np.bincount(self.interactions["item_idx"].to_numpy(), minlength=self.n_items)
        return counts.astype(np.float64)

    def transitions(self) -> sp.csr_matrix:
        """Counts of consecutive (previous item -> next item) pairs within each user's order."""
        pairs = self.interactions.sort("user_id", "seq").select(
            pl.col("item_idx").shift(1).over("user_id").alias("prev"), pl.col("item_idx"),
        ).drop_nulls()
        return sp.csr_matrix(
            (np.ones(pairs.height, dtype=np.float32),
             (pairs["prev"].to_numpy(), pairs["item_idx"].to_numpy())),
            shape=(self.n_items, self.n_items))


@dataclass(frozen=True)
class RequestBatch:
    """Requests of one task and cut, with each request's history as a sparse matrix whose
    value is the recency rank (1 = the item just before the target)."""

    requests: pl.DataFrame  # request_id, user_id, task, instruction, target_idx, seq, ...
    history: sp.csr_matrix
    n_items: int
    # names the batch a slice was cut from, and where: results computed for the same rows
    # by several models are found again under (uid, offset, length)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False)
    offset: int = 0

    def __len__(self) -> int:
        return self.requests.height

    @property
    def key(self) -> tuple[str, int, int]:
        return self.uid, self.offset, len(self)

    def slice(self, lo: int, hi: int) -> RequestBatch:
        return RequestBatch(self.requests.slice(lo, hi - lo), self.history[lo:hi],
                            self.n_items, self.uid, self.offset + lo)

    def chunks(self, rows: int | None = None) -> Iterator[RequestBatch]:
        """Slices of at most `rows` requests (default: `chunk_rows`), cut at multiples of
        `rows` counted from the start of the batch this one was sliced from, so the same
        rows always fall in the same chunk; the batch itself when it is one chunk."""
        rows = rows or chunk_rows(self.n_items)
        start, end = self.offset, self.offset + len(self)
        cuts = [start, *range((start // rows + 1) * rows, end, rows), end]
        if len(cuts) <= 2:
            yield self
            return
        for lo, hi in itertools.pairwise(cuts):
            yield self.slice(lo - start, hi - start)

    @property
    def instructions(self) -> list[str]:
        return self.requests["instruction"].to_list()

    def last_n(self, n: int | None) -> sp.csr_matrix:
        """Binary matrix of the last `n` items of each history (all when n is None)."""
        h = self.history.copy()
        if n is not None:
            h.data[h.data > n] = 0
            h.eliminate_zeros()
        h.data[:] = 1.0
        return h

    def has_history(self) -> np.ndarray:
        return np.diff(self.history.indptr) > 0

    @cached_property
    def history_coo(self) -> sp.coo_matrix:
        """`history` as (row, column, recency) triplets, made once and read-only: the
        candidate merge, the KG source, the explanations and the named-item seeding each
        read it, and scipy's conversion cost a one-request answer ~0.1 ms each time."""
        h = self.history.tocoo()
        for part in (h.row, h.col, h.data):
            part.flags.writeable = False
        return h

    def last_item(self) -> np.ndarray:
        """Index of each request's most recent item, -1 where the history is empty."""
        h = self.history_coo
        out = np.full(self.history.shape[0], -1, dtype=np.int64)
        last = h.data == 1
        out[h.row[last]] = h.col[last]
        return out


def split_interactions(ds: Dataset, catalogue: Catalogue) -> pl.DataFrame:
    return catalogue.index(temporal_leave_one_out(ds.interactions))


def fit_data(split: pl.DataFrame, catalogue: Catalogue, cut: str) -> FitData:
    return FitData(cut, split.filter(pl.col("split").is_in(CUTS[cut])), catalogue)


def request_batch(requests: pl.DataFrame, split: pl.DataFrame,
                  catalogue: Catalogue) -> RequestBatch:
    """Attach to each request the user's interactions strictly before its target."""
    reqs = catalogue.index(requests, "target_item_id", "target_idx").with_row_index("row")
    with_history = reqs.filter(pl.col("task") != "search").select("row", "user_id", "seq")
    past = with_history.join(
        split.select("user_id", pl.col("seq").alias("s"), "item_idx"), on="user_id",
    ).filter(pl.col("s") < pl.col("seq"))
    history = sp.csr_matrix(
        ((past["seq"] - past["s"]).to_numpy().astype(np.float32),
         (past["row"].to_numpy().astype(np.int64), past["item_idx"].to_numpy())),
        shape=(reqs.height, catalogue.n_items))
    return RequestBatch(reqs.drop("row"), history, catalogue.n_items)
