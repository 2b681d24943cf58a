"""The knowledge-graph baseline: items close, in KG space, to the user's recent items.

It is also the ranker's "KG neighbours" candidate source. The KG comes from the context
(`ScorerContext.kg`), trained on a window that excludes every request it scores.
"""

from __future__ import annotations

import numpy as np

from kg.signals import entity_rows
from ranking.inputs import RequestBatch
from ranking.scorers.base import Scorer, ScorerConfig, register
from recdata.errors import ConfigError

RECENT = 5


class KGNeighboursConfig(ScorerConfig):
    recent: int = RECENT


@register
class KGNeighbours(Scorer):
    """Cosine between each item and the mean KG vector of the user's last `recent` items;
    items outside the graph score lowest."""

    name = "kg"
    Config = KGNeighboursConfig
    uses_kg = True

    def _score(self, batch: RequestBatch) -> np.ndarray:
        emb = self.context.kg
        if emb is None:
            raise ConfigError("the 'kg' scorer needs KG embeddings: run `instructrank kg "
                              "train` or evaluate with KG enabled")
        unit = emb.unit_vectors()
        rows = self.context.cached(emb, ("item_rows", id(self.fitted.catalogue)), lambda: (
            entity_rows(emb, "item", self.fitted.catalogue.items["item_id"].to_numpy())))
        # the catalogue's vectors in catalogue order, laid out for the product, once
        items_t = self.context.cached(emb, ("item_vectors_t", id(self.fitted.catalogue)),
                                      lambda: np.ascontiguousarray(
                                          unit[np.maximum(rows, 0)].T.astype(np.float64)))
        # profile = sum of the unit vectors of the last `recent` items that are in the graph
        h = batch.last_n(self.config.recent).tocoo()
        known = rows[h.col] >= 0
        profile = np.zeros((len(batch), unit.shape[1]))
        np.add.at(profile, h.row[known], unit[rows[h.col[known]]])
        norm = np.linalg.norm(profile, axis=1, keepdims=True)
        profile = profile / np.maximum(norm, 1e-12)
        scores = profile @ items_t
        scores[:, rows < 0] = -2.0
        scores[norm[:, 0] == 0] = -2.0
        return scores


def recent_item_ids(batch: RequestBatch, item_ids: np.ndarray, n: int) -> np.ndarray:
    """(requests x n) ids of each history's most recent items, most recent first, -1 padded."""
    h = batch.history_coo
    out = np.full((len(batch), n), -1, dtype=np.int64)
    keep = h.data <= n
    out[h.row[keep], h.data[keep].astype(np.int64) - 1] = item_ids[h.col[keep]]
    return out
