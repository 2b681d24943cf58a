"""Baselines that read the instruction: an attribute filter ranked by popularity,
instruction-item embedding similarity, and that similarity blended with EASE."""

from __future__ import annotations

import numpy as np

from ranking.inputs import FitData, RequestBatch
from ranking.intent_parser import parsed_for
from ranking.scorers.base import ENCODING, Scorer, ScorerConfig, register, zscore_rows
from ranking.scorers.history import EASE_MAX_ITEMS, LAMBDAS, ease_weights
from recdata.instructions import item_levels


@register
class FilterPopularity(Scorer):
    """Count of the instruction's constraints an item meets, popularity breaking ties:
    items meeting every constraint come first, most popular first."""

    name = "filter_popularity"
    uses_history = False
    uses_instruction = True

    def _fit_model(self, data: FitData) -> None:
        items = data.catalogue.items
        self.schema = data.catalogue.schema
        self.genres = sorted(set(items["genres"].explode().drop_nulls().to_list()))
        self.item_genre = np.stack(
            [items["genres"].list.contains(g).to_numpy() for g in self.genres], axis=1
        ) if self.genres else np.zeros((items.height, 0), dtype=bool)
        self.item_decade = (items["year"] // 10 * 10).fill_null(-1).to_numpy()
        train = data.interactions.join(items.select("item_idx", "item_id"), on="item_idx")
        levels = item_levels(items, train, self.schema.levels).sort("item_id")
        self.popular = (levels["popularity_level"] == "popular").fill_null(False).to_numpy()
        self.obscure = (levels["popularity_level"] == "obscure").fill_null(False).to_numpy()
        self.acclaimed = levels["acclaimed"].to_numpy()
        pop = self._popularity
        self.tiebreak = pop / (pop.max(initial=0.0) + 1.0)
        self.genre_t = np.ascontiguousarray(self.item_genre.T, dtype=np.float64)  # once

    def _score(self, batch: RequestBatch) -> np.ndarray:
        p = parsed_for(self.context, batch, self.genres, self.schema)
        matches = p.genre_mask.astype(np.float64) @ self.genre_t
        matches += (p.decade[:, None] > 0) & (p.decade[:, None] == self.item_decade[None, :])
        matches += p.popular[:, None] & self.popular[None, :]
        matches += p.obscure[:, None] & self.obscure[None, :]
        matches += p.acclaimed[:, None] & self.acclaimed[None, :]
        return matches + self.tiebreak


def item_vectors(scorer: Scorer, data: FitData) -> np.ndarray:
    encoder = scorer.context.require_encoder()
    return scorer.context.cached(
        data.catalogue, ("item_vectors", encoder.fingerprint),
        lambda: encoder.encode(data.catalogue.text.to_list(), desc="items"))


# the float64 copy of the item vectors is kept (not made per call: ~1 ms a request for
# ML-100k's 1,682 items) up to this size; a larger catalogue is served by the ANN index
WIDE_ITEMS_BYTES = 64 * 2**20


def wide_items(scorer: Scorer, items: np.ndarray) -> np.ndarray:
    """`items.T` in float64, kept in the context's memo while it is small enough."""
    if items.size * 8 > WIDE_ITEMS_BYTES:
        return items.T.astype(np.float64)
    return scorer.context.cached(items, ("wide_items",), lambda: items.T.astype(np.float64),
                                 keep=2)


def instruction_similarity(scorer: Scorer, batch: RequestBatch,
                           items: np.ndarray) -> np.ndarray:
    """Cosine of each instruction with each item, in float64 so that a request scores the
    same alone or in a batch."""
    encoder = scorer.context.require_encoder()

    def compute() -> np.ndarray:
        ahead = scorer.context.peek(batch.requests, ENCODING)
        if ahead is not None:  # these texts are being encoded on another thread right now
            ahead.result()
        queries = encoder.encode(scorer.context.queries(batch), desc="instructions")
        return queries.astype(np.float64) @ wide_items(scorer, items)

    return scorer.context.cached(batch, ("instruction_sim", encoder.fingerprint, id(items)),
                                 compute)


@register
class Embedding(Scorer):
    """Cosine between the instruction and each item's text (all-MiniLM-L6-v2)."""

    name = "embedding"
    uses_history = False
    uses_instruction = True

    def _fit_model(self, data: FitData) -> None:
        self.items = item_vectors(self, data)

    def _score(self, batch: RequestBatch) -> np.ndarray:
        return instruction_similarity(self, batch, self.items)


@register
class EmbeddingTuned(Embedding):
    """Cosine between "instruction | recent titles" and each item's text, both encoded by
    the encoder instruction-tuned on this run's training requests (encoders.tuning)."""

    name = "embedding_tuned"
    uses_tuned_encoder = True


class BlendConfig(ScorerConfig):
    weight: float = 0.5
    lam: float = 250.0
    last_n: int | None = 5


@register
class EmbeddingEASE(Scorer):
    """weight * z(similarity) + (1 - weight) * z(EASE on the last N items); for a request
    with no history the EASE part is popularity (the cold-start path)."""

    name = "embedding_ease"
    Config = BlendConfig
    uses_instruction = True
    grid = {"weight": [0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95],
            "lam": [LAMBDAS[4], LAMBDAS[6]],
            "last_n": [3, 5, 10, None]}
    fit_params = ("lam",)
    max_items = EASE_MAX_ITEMS

    def _fit_model(self, data: FitData) -> None:
        lam = self.config.lam
        self.items = item_vectors(self, data)
        self.weights = self.context.cached(data, ("ease", lam),
                                           lambda: ease_weights(data, lam), keep=1)

    def _score(self, batch: RequestBatch) -> np.ndarray:
        sim = instruction_similarity(self, batch, self.items)
        ease = np.asarray(batch.last_n(self.config.last_n) @ self.weights)
        cold = ~batch.has_history()
        ease[cold] = self._popularity
        w = self.config.weight
        return w * zscore_rows(sim) + (1 - w) * zscore_rows(ease)

