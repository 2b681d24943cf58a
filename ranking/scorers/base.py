"""The contract every scorer follows, and the registry that picks them by name.

A scorer is fitted on `FitData` and returns a dense (requests x items) score matrix for a
`RequestBatch`; ranking, masking of seen items and tie-breaking are the harness's job, so a
scorer is pure computation. Requests with an empty history (cold start) get popularity from
the fit data unless the scorer reads the instruction itself.
"""

from __future__ import annotations

import itertools
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import BaseModel, ConfigDict

from ranking.inputs import FitData, RequestBatch
from recdata.errors import ConfigError, UnknownNameError


class ScorerConfig(BaseModel):
    """Hyperparameters of a scorer; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# memo key (on a batch's requests frame) of a Future: the batch's texts being encoded on
# another thread (ranking.recommend's encode-ahead); what reads the encoder waits for it
ENCODING = ("encoding",)


@dataclass
class ScorerContext:
    """Shared, expensive resources: a text encoder and a memo so that configurations that
    differ only in cheap parameters (N of last-N, a blend weight) reuse the heavy part."""

    encoder: Any = None
    kg: Any = None  # kg.embeddings.KGEmbeddings, for scorers that read the knowledge graph
    ltr: Any = None  # ranking.ltr.training.LTRResources, for the LTR scorers
    # set where the encoder is instruction-tuned: it reads "instruction | recent titles"
    # (ranking.queries), so its query text needs the catalogue's titles
    query_titles: np.ndarray | None = None
    query_label: str = "recent"  # ranking.queries.history_label of the dataset's schema
    tuned: ScorerContext | None = None  # the same resources with the tuned encoder
    llm: Any = None  # ranking.rerank.llm.LLMReranker, for the reranked LTR scorer
    artifacts: Path | None = None  # where artifacts built once are kept (ANN indexes)
    memo: dict = field(default_factory=dict)

    def cached(self, owner: object, key: tuple, compute: Callable[[], Any],
               keep: int | None = None) -> Any:
        """`compute()` once per (owner object, key). The owner is held and compared by
        identity, so a new object that happens to reuse a freed one's id never gets its
        stale result. `keep` bounds how many results of the same kind (`key[0]`) stay
        memoised, oldest dropped first, for results as large as the catalogue squared."""
        slot = (id(owner), *key)
        hit = self.memo.get(slot)
        if hit is None or hit[0] is not owner:
            if keep is not None:
                same = [s for s in self.memo if len(s) > 1 and s[1] == key[0]]
                for stale in same[:max(0, len(same) - keep + 1)]:
                    del self.memo[stale]  # before computing: never two at the peak
            hit = (owner, compute())
            self.memo[slot] = hit
        else:  # most recently used last
            self.memo[slot] = self.memo.pop(slot)
        return hit[1]

    def peek(self, owner: object, key: tuple) -> Any:
        """What `cached(owner, key, ...)` holds, or None: nothing is computed."""
        hit = self.memo.get((id(owner), *key))
        return hit[1] if hit is not None and hit[0] is owner else None

    def forget(self, owner: object) -> None:
        """Drop every memo entry of `owner` (and of its `requests` frame, which owns what
        depends on the requests alone and is shared by a batch and its seeded copy), here
        and in the tuned context (the online path calls this per request, the evaluation per
        chunk of requests; a tuned model memoises in the tuned context, and a chunk's
        similarities left there once grew a 10^4-item evaluation by 10 GB)."""
        requests = getattr(owner, "requests", None)
        for slot, hit in list(self.memo.items()):
            if hit[0] is owner or (requests is not None and hit[0] is requests):
                self.memo.pop(slot, None)
        if self.tuned is not None and self.tuned is not self:
            self.tuned.forget(owner)

    def require_encoder(self) -> Any:
        if self.encoder is None:
            raise ConfigError("this scorer reads instructions and needs a text encoder")
        return self.encoder

    def queries(self, batch: RequestBatch) -> list[str]:
        """The text the encoder reads for each request of `batch`: the instruction without
        its negated clauses (the embedding of 'no horror' is close to horror)."""
        if self.query_titles is None:
            from ranking.intent_parser import remainder_for

            return remainder_for(self, batch)
        from ranking.queries import query_texts

        return query_texts(batch, self.query_titles, label=self.query_label)

    def require_tuned(self) -> ScorerContext:
        if self.tuned is None:
            raise ConfigError("this scorer reads the instruction-tuned encoder, which "
                              "`instructrank train` tunes; evaluate it with `instructrank "
                              "evaluate` after that")
        return self.tuned


class Scorer(ABC):
    """Base for every model in the harness. Subclasses set `name`, `Config` and `grid`."""

    name: ClassVar[str]
    Config: ClassVar[type[ScorerConfig]] = ScorerConfig
    grid: ClassVar[dict[str, list[Any]]] = {}
    uses_history: ClassVar[bool] = True
    uses_instruction: ClassVar[bool] = False
    uses_kg: ClassVar[bool] = False
    uses_feature_store: ClassVar[bool] = False
    uses_tuned_encoder: ClassVar[bool] = False  # reads `context.tuned` instead of `context`
    uses_llm: ClassVar[bool] = False
    # config fields that decide what `fit` learns; configurations agreeing on them are
    # tuned side by side, a chunk of requests at a time (None: every field does)
    fit_params: ClassVar[tuple[str, ...] | None] = None
    # the largest catalogue the model can be fitted on (None: any); the harness leaves
    # the model out, saying why, beyond it
    max_items: ClassVar[int | None] = None

    def __init__(self, config: ScorerConfig | None = None,
                 context: ScorerContext | None = None) -> None:
        self.config = config if config is not None else self.Config()
        context = context or ScorerContext()
        self.context = context.require_tuned() if self.uses_tuned_encoder else context
        self._fit: FitData | None = None
        self._popularity: np.ndarray | None = None

    def fit(self, data: FitData) -> Self:
        self._fit = data
        self._popularity = data.popularity()
        self._fit_model(data)
        return self

    def __getstate__(self) -> dict[str, Any]:
        """What a fitted scorer saves (`CandidateGenerator.save`): its learned arrays and
        the catalogue, not the interactions it was fitted on, nor the shared context (the
        encoder and KG are artifacts of their own, attached again at load)."""
        state = dict(self.__dict__)
        state.pop("context", None)
        if self._fit is not None:
            state["_fit"] = FitData(self._fit.name, self._fit.interactions.head(0),
                                    self._fit.catalogue)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.context = ScorerContext()

    def _fit_model(self, data: FitData) -> None:  # noqa: B027 - optional hook
        """Learn from `data`; scorers without a learned part leave it as is."""

    @property
    def fitted(self) -> FitData:
        if self._fit is None:
            raise ConfigError(f"scorer {self.name!r} must be fitted before scoring")
        return self._fit

    def score(self, batch: RequestBatch) -> np.ndarray:
        """Scores (len(batch) x n_items), float64; higher is better."""
        if batch.n_items != self.fitted.n_items:
            raise ConfigError(
                f"batch has {batch.n_items} items but {self.name!r} was fitted on "
                f"{self.fitted.n_items}")
        scores = np.asarray(self._score(batch), dtype=np.float64)
        if self.uses_history and not self.uses_instruction:
            cold = ~batch.has_history()
            scores[cold] = self._popularity
        return scores

    @abstractmethod
    def _score(self, batch: RequestBatch) -> np.ndarray: ...

    def affinity(self, sources: np.ndarray, item: int) -> np.ndarray:
        """How much each of the catalogue indices `sources` pulls `item` up, for
        explanations ("similar to X"); zeros for models without item-to-item weights."""
        return np.zeros(len(sources))

    @classmethod
    def fit_key(cls, config: ScorerConfig) -> str:
        dump = config.model_dump(mode="json")
        if cls.fit_params is not None:
            dump = {k: dump[k] for k in cls.fit_params}
        return json.dumps(dump, sort_keys=True)

    @classmethod
    def configs(cls) -> Iterator[ScorerConfig]:
        """Every configuration of the tuning grid (the default alone when no grid)."""
        keys = list(cls.grid)
        for values in itertools.product(*(cls.grid[k] for k in keys)):
            yield cls.Config(**dict(zip(keys, values, strict=True)))


REGISTRY: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    REGISTRY[cls.name] = cls
    return cls


def scorer_class(name: str) -> type[Scorer]:
    from ranking import scorers  # noqa: F401 - populates the registry

    if name not in REGISTRY:
        raise UnknownNameError("model", name, list(REGISTRY))
    return REGISTRY[name]


def available_scorers() -> list[str]:
    from ranking import scorers  # noqa: F401

    return list(REGISTRY)


def zscore_rows(x: np.ndarray) -> np.ndarray:
    """Per-request standardisation, so scores of different models can be blended."""
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return (x - mu) / np.where(sd > 0, sd, 1.0)
