"""KG views: `item_kg_embedding` and `user_kg_embedding` from trained KG embeddings.
Static rows: the model is trained on the training window only, so one vector per entity
serves every evaluation request."""

from __future__ import annotations

import numpy as np
import polars as pl

from feature_repo.jobs import static_ts
from feature_repo.jobs.users import vectors_column


def kg_embedding_sources(entities: np.ndarray, vectors: np.ndarray) -> dict[str, pl.DataFrame]:
    """entities: labels like 'user:42' / 'item:50'; vectors: real (n x d) float32."""
    labels = pl.Series("label", entities.astype(str))
    out = {}
    for kind, view in (("user", "user_kg_embedding"), ("item", "item_kg_embedding")):
        mask = labels.str.starts_with(f"{kind}:").to_numpy()
        ids = labels.filter(mask).str.slice(len(kind) + 1).cast(pl.Int64)
        frame = pl.DataFrame({f"{kind}_id": ids}).with_columns(
            vectors_column(vectors[mask]), static_ts(int(mask.sum())))
        out[view] = frame
    return out
