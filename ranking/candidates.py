"""Candidate generation: the union of cheap retrievers, each a registered scorer.

Every source ranks the catalogue; a request's candidates are the N items with the best
*weighted rank* over sources (rank / weight), so each source contributes roughly in
proportion to its weight and an item any source puts near its top gets in. Items already in
the request's history are never candidates. The share of targets found among the candidates
(recall@N) is the ceiling of any ranker built on them, and the evaluation reports it.

Nothing here grows with requests x items: requests are taken a chunk at a time, and each
source keeps only its top `M` per request (partitioned, not sorted), M being at least
N plus the request's history, which is all the merge can ever pick from. The rank of a
candidate in a source is exact up to `rank_depth` and `rank_depth + 1` beyond it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from encoders.ann import ANNConfig, VectorIndex, index_for, resolve_backend
from ranking.inputs import FitData, RequestBatch
from ranking.scorers.base import Scorer, ScorerContext, scorer_class
from ranking.topk import top_k
from recdata.errors import UnknownNameError

# source -> (scorer name, its config); a source is any registered scorer
SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    "embedding": ("embedding", {}),
    "attribute": ("filter_popularity", {}),
    "transition": ("transition", {}),
    "cf": ("ease_lastn", {"lam": 500.0, "last_n": 5}),
    "itemknn": ("itemknn_lastn", {"neighbours": 100, "last_n": 3}),
    "popularity": ("popularity", {}),
    "kg": ("kg", {}),
}
# what a source becomes where its first choice cannot be fitted on the catalogue
SCALABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "cf": ("als_lastn", {"last_n": 5}),
}
HISTORY_SOURCES = ("transition", "cf", "itemknn", "kg")  # meaningless without a history
SOURCES_FILE = "sources.pkl"
SOURCES_VERSION = 2  # 2: the catalogue carries its domain schema


def source_scorer(name: str, n_items: int) -> tuple[str, dict[str, Any]]:
    """The scorer behind source `name` for a catalogue of `n_items`: collaborative
    filtering is EASE up to EASE_MAX_ITEMS items and ALS beyond."""
    scorer, params = SOURCES[name]
    limit = scorer_class(scorer).max_items
    if limit is not None and n_items > limit and name in SCALABLE:
        return SCALABLE[name]
    return scorer, params


class CandidateConfig(BaseModel):
    """How many candidates, and each source's weight in the merged ranking."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(200, ge=1)
    weights: dict[str, float] = Field(default_factory=lambda: {
        "embedding": 1.0, "attribute": 1.5, "transition": 1.0, "cf": 1.0, "itemknn": 0.5,
        "popularity": 0.25, "kg": 0.5})
    rank_depth: int = Field(2_000, ge=1, description="ranks are exact up to this depth, "
                                                    "rank_depth + 1 beyond")
    ann: ANNConfig = Field(default_factory=ANNConfig, description="the embedding source's "
                                                                  "index (exact when small)")
    ann_depth: int = Field(500, ge=1, description="items the embedding source retrieves "
                                                  "from an approximate index per request")

    @field_validator("weights")
    @classmethod
    def _known_sources(cls, weights: dict[str, float]) -> dict[str, float]:
        for name, w in weights.items():
            if name not in SOURCES:
                raise UnknownNameError("candidate source", name, list(SOURCES))
            if w <= 0:
                raise ValueError(f"weight of candidate source {name!r} must be > 0")
        return weights


@dataclass(frozen=True)
class Candidates:
    """`idx` (requests x N) catalogue indices, best merged rank first; per source, its score
    and its rank at each candidate (NaN where a history source has no history to work
    from). N is the same for every request, so a request scores the same alone or in a
    batch; where fewer than N items are unseen, the tail is padded with seen items marked
    invalid, which nothing ranks or learns from."""

    idx: np.ndarray
    scores: dict[str, np.ndarray]
    ranks: dict[str, np.ndarray]
    valid: np.ndarray  # False only where a catalogue smaller than N forced a seen item in

    def recall(self, targets: np.ndarray) -> np.ndarray:
        """Per request: is the target among the candidates?"""
        return (self.idx == targets[:, None]).any(axis=1)

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        if len(parts) == 1:
            return parts[0]
        return Candidates(
            np.concatenate([p.idx for p in parts]),
            {k: np.concatenate([p.scores[k] for p in parts]) for k in parts[0].scores},
            {k: np.concatenate([p.ranks[k] for p in parts]) for k in parts[0].ranks},
            np.concatenate([p.valid for p in parts]))


class CandidateGenerator:
    """Fitted sources; `generate(batch)` gives the merged candidates with per-source values."""

    def __init__(self, cfg: CandidateConfig, context: ScorerContext) -> None:
        self.cfg = cfg
        self.context = context
        self.sources: dict[str, Scorer] = {}
        self.index: VectorIndex | None = None  # the embedding source's, when approximate

    def fit(self, data: FitData) -> CandidateGenerator:
        for name in self.cfg.weights:
            scorer_name, params = source_scorer(name, data.n_items)
            cls = scorer_class(scorer_name)
            self.sources[name] = cls(cls.Config(**params), self.context).fit(data)
        emb = self.sources.get("embedding")
        if emb is not None and resolve_backend(data.n_items, self.cfg.ann) != "exact":
            vectors = emb.items  # type: ignore[attr-defined]
            self.index = self.context.cached(
                data.catalogue, ("ann", self.cfg.ann.model_dump_json()),
                lambda: index_for(vectors, self.cfg.ann, self.context.artifacts))
        return self

    def save(self, folder: Path) -> Path:
        """The fitted sources as one artifact (atomic), so serving loads them instead of
        fitting them on the raw log at start-up. Pickle, as scikit-learn models are saved:
        each scorer keeps its learned arrays and the catalogue, never the interactions
        (`Scorer.__getstate__`); the ANN index is saved by `encoders.ann` on its own."""
        from recdata.atomic_io import write_pickle_atomic

        write_pickle_atomic({"version": SOURCES_VERSION, "config": self.cfg.model_dump(
            mode="json"), "sources": self.sources}, folder / SOURCES_FILE)
        return folder

    @classmethod
    def load(cls, folder: Path, context: ScorerContext) -> CandidateGenerator:
        """Sources saved by `save`, attached to `context` (encoder, KG, artifacts)."""
        import pickle

        from recdata.errors import ConfigError

        path = folder / SOURCES_FILE
        if not path.exists():
            raise ConfigError(f"no fitted candidate sources at {path}; rerun `instructrank "
                              "evaluate` (training saves them for serving)")
        with open(path, "rb") as f:
            saved = pickle.load(f)  # our own artifact, keyed by its inputs
        if saved.get("version") != SOURCES_VERSION:
            raise ConfigError(f"{path} was saved by another version of instructrank; rerun "
                              "`instructrank train`")
        gen = cls(CandidateConfig.model_validate(saved["config"]), context)
        gen.sources = saved["sources"]
        for scorer in gen.sources.values():
            scorer.context = context
        emb = gen.sources.get("embedding")
        if emb is not None and resolve_backend(emb.fitted.n_items, gen.cfg.ann) != "exact":
            gen.index = index_for(emb.items, gen.cfg.ann, context.artifacts)  # type: ignore[attr-defined]
        return gen

    def _retrieve(self, name: str, scorer: Scorer, batch: RequestBatch, m: int
                  ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """(top m per request, best first; a function giving the source's score of any
        (request, item) cells). Dense sources score the chunk against every item; the
        embedding source, above the ANN limit, asks the index for its top `ann_depth`."""
        rows = np.arange(len(batch))[:, None]
        if name == "embedding" and self.index is not None:
            encoder = self.context.require_encoder()
            queries = encoder.encode(self.context.queries(batch), desc="instructions")
            top, _ = self.index.search(queries, min(self.cfg.ann_depth, batch.n_items))
            items = scorer.items  # type: ignore[attr-defined]
            return top, lambda idx: np.einsum(
                "nd,nkd->nk", queries.astype(np.float64), items[idx].astype(np.float64))
        s = scorer.score(batch)
        return top_k(s, m), lambda idx: s[rows, idx]

    def generate(self, batch: RequestBatch) -> Candidates:
        parts = []
        for chunk in batch.chunks():
            parts.append(self._generate(chunk))
            if chunk is not batch:
                self.context.forget(chunk)
        return Candidates.concat(parts) if parts else self._generate(batch)

    def _generate(self, batch: RequestBatch) -> Candidates:
        n_items, rows = batch.n_items, np.arange(len(batch))[:, None]
        n = min(self.cfg.n, n_items)
        depth = self.cfg.rank_depth
        seen_count = np.diff(batch.history.indptr)
        m = min(n_items, max(depth, n + int(seen_count.max(initial=0))))
        key = np.full((len(batch), n_items), np.inf)
        pair_scores, dense_ranks = {}, {}
        # the sources that read the request's text last: online, a lone request's text is
        # encoded on a second thread meanwhile (the merge below does not depend on order)
        for name, scorer in sorted(self.sources.items(), key=lambda s: s[1].uses_instruction):
            top, pair_scores[name] = self._retrieve(name, scorer, batch, m)  # ties: index
            rank = np.arange(1, top.shape[1] + 1, dtype=np.float64)[None, :]
            # each item's rank in this source (inf past its top list) by one scatter, then
            # dense arithmetic in place: not a gather and two scatters of the top lists'
            # cells (one chunk-sized array more while it lasts, beside the ~11 held here)
            at = np.full((len(batch), n_items), np.inf)
            np.put_along_axis(at, top, rank, axis=1)
            dense_ranks[name] = np.minimum(at.astype(np.float32), depth + 1)  # ranks exact
            at /= self.cfg.weights[name]
            np.minimum(key, at, out=key)
        seen = batch.history_coo
        key[seen.row, seen.col] = np.inf
        idx = top_k(-key, n)  # best (smallest) merged rank, ties by index
        valid = np.isfinite(key[rows, idx])
        cold = np.diff(batch.history.indptr) == 0
        scores, ranks = {}, {}
        for name in self.sources:
            sc = pair_scores[name](idx).astype(np.float64)
            rk = dense_ranks[name][rows, idx].astype(np.float64)
            if name in HISTORY_SOURCES:
                sc[cold] = np.nan
                rk[cold] = np.nan
            scores[name], ranks[name] = sc, rk
        return Candidates(idx, scores, ranks, valid)
