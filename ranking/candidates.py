"""Candidate generation: the union of cheap retrievers, each a registered scorer.

Every source ranks the whole catalogue; a request's candidates are the N items with the best
*weighted rank* over sources (rank / weight), so each source contributes roughly in
proportion to its weight and an item any source puts near its top gets in. Items already in
the request's history are never candidates. The share of targets found among the candidates
(recall@N) is the ceiling of any ranker built on them, and the evaluation reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ranking.inputs import FitData, RequestBatch
from ranking.scorers.base import Scorer, ScorerContext, scorer_class
from recdata.errors import UnknownNameError

# source -> (scorer name, its config); a source is any registered scorer
SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    "embedding": ("embedding", {}),
    "attribute": ("filter_popularity", {}),
    "transition": ("transition", {}),
    "ease": ("ease_lastn", {"lam": 500.0, "last_n": 5}),
    "itemknn": ("itemknn_lastn", {"neighbours": 100, "last_n": 3}),
    "popularity": ("popularity", {}),
    "kg": ("kg", {}),
}
HISTORY_SOURCES = ("transition", "ease", "itemknn", "kg")  # meaningless without a history


class CandidateConfig(BaseModel):
    """How many candidates, and each source's weight in the merged ranking."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(200, ge=1)
    weights: dict[str, float] = Field(default_factory=lambda: {
        "embedding": 1.0, "attribute": 1.5, "transition": 1.0, "ease": 1.0, "itemknn": 0.5,
        "popularity": 0.25, "kg": 0.5})

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
    and its rank in the whole catalogue at each candidate (NaN where a history source has
    no history to work from). N is the same for every request, so a request scores the same
    alone or in a batch; where fewer than N items are unseen, the tail is padded with seen
    items marked invalid, which nothing ranks or learns from."""

    idx: np.ndarray
    scores: dict[str, np.ndarray]
    ranks: dict[str, np.ndarray]
    valid: np.ndarray  # False only where a catalogue smaller than N forced a seen item in

    def recall(self, targets: np.ndarray) -> np.ndarray:
        """Per request: is the target among the candidates?"""
        return (self.idx == targets[:, None]).any(axis=1)


def ranks_of(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every item per row (ties: lower index first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(1, scores.shape[1] + 1)
    return ranks


class CandidateGenerator:
    """Fitted sources; `generate(batch)` gives the merged candidates with per-source values."""

    def __init__(self, cfg: CandidateConfig, context: ScorerContext) -> None:
        self.cfg = cfg
        self.context = context
        self.sources: dict[str, Scorer] = {}

    def fit(self, data: FitData) -> CandidateGenerator:
        for name in self.cfg.weights:
            scorer_name, params = SOURCES[name]
            cls = scorer_class(scorer_name)
            self.sources[name] = cls(cls.Config(**params), self.context).fit(data)
        return self

    def generate(self, batch: RequestBatch) -> Candidates:
        seen = batch.history.toarray() > 0
        n = min(self.cfg.n, batch.n_items)
        cold = ~batch.has_history()
        key = np.full((len(batch), batch.n_items), np.inf)
        dense_scores, dense_ranks = {}, {}
        for name, scorer in self.sources.items():
            s = scorer.score(batch)
            r = ranks_of(s)
            key = np.minimum(key, r / self.cfg.weights[name])
            dense_scores[name], dense_ranks[name] = s, r
        key[seen] = np.inf
        part = np.argpartition(key, n - 1, axis=1)[:, :n]
        rows = np.arange(len(batch))[:, None]
        order = np.lexsort((part, key[rows, part]), axis=1)
        idx = part[rows, order]
        valid = np.isfinite(key[rows, idx])
        scores, ranks = {}, {}
        for name in self.sources:
            sc = dense_scores[name][rows, idx].astype(np.float64)
            rk = dense_ranks[name][rows, idx].astype(np.float64)
            if name in HISTORY_SOURCES:
                sc[cold] = np.nan
                rk[cold] = np.nan
            scores[name], ranks[name] = sc, rk
        return Candidates(idx, scores, ranks, valid)
