"""The knowledge-graph baseline: items close, in KG space, to the user's recent items.

It is also the ranker's "KG neighbours" candidate source. The KG comes from the context
(`ScorerContext.kg`), trained on a window that excludes every request it scores.
"""

from __future__ import annotations

import numpy as np

from kg.signals import kg_signals
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
        items = self.fitted.catalogue.items["item_id"].to_numpy()
        recent = recent_item_ids(batch, items, self.config.recent)
        signals = kg_signals(emb, batch.requests["user_id"].to_numpy(),
                             np.broadcast_to(items, (len(batch), len(items))), recent)
        return np.nan_to_num(signals["kg_recent_cosine"], nan=-2.0)


def recent_item_ids(batch: RequestBatch, item_ids: np.ndarray, n: int) -> np.ndarray:
    """(requests x n) ids of each history's most recent items, most recent first, -1 padded."""
    h = batch.history.tocoo()
    out = np.full((len(batch), n), -1, dtype=np.int64)
    keep = h.data <= n
    out[h.row[keep], h.data[keep].astype(np.int64) - 1] = item_ids[h.col[keep]]
    return out
