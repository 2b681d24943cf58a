"""Reasons for a recommendation, in words, from LightGBM's per-feature contributions.

`pred_contrib` splits each item's score into one contribution per feature (SHAP values).
Features are grouped into families that a person understands ("matches your request",
"similar to something you rated"); the families that pushed the item up most are rendered
with the item's own values: the genre words it matched, the history title it is close to,
its recent views. A reason is only said when its family's contribution is positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ranking.intent_parser import ParsedIntents
from ranking.ltr.features import families

if TYPE_CHECKING:
    from ranking.inputs import RequestBatch
    from ranking.recommend import Recommender

MIN_CONTRIBUTION = 0.02
MAX_REASONS = 3


@dataclass(frozen=True)
class Reason:
    family: str
    text: str
    contribution: float
    features: dict[str, float]  # the family's features: this item's values


class Explainer:
    def __init__(self, rec: Recommender) -> None:
        self.rec = rec
        # family -> the model's feature positions in it (declared in feature_repo/ranker.py)
        names = rec.model.features
        self.members = {family: [j for j, f in enumerate(names) if f in members]
                        for family, members in families().items()}

    def reasons(self, batch: RequestBatch, frame: pl.DataFrame, contrib: np.ndarray,
                idx: np.ndarray, user_id: int | None, parsed: ParsedIntents,
                rated: dict[int, float] | None = None) -> list[list[Reason]]:
        """For each row of `frame` (item `idx[i]`): its top families, best first. `rated`:
        the user's ratings by catalogue index."""
        rated = rated or {}
        names = self.rec.model.features
        recent = batch.history.tocoo()
        order = np.argsort(recent.data)
        history = recent.col[order]  # most recent first
        out = []
        for i, item in enumerate(idx):
            per_family = []
            for family, cols in self.members.items():
                if not cols:
                    continue
                total = float(contrib[i, cols].sum())
                if total < MIN_CONTRIBUTION:
                    continue
                values = {names[j]: float(frame[names[j]][i]) for j in cols}
                text = self._say(family, int(item), values, parsed, history, user_id, rated)
                if text:
                    per_family.append(Reason(family, text, round(total, 4), values))
            per_family.sort(key=lambda r: -r.contribution)
            out.append(per_family[:MAX_REASONS])
        return out

    def _say(self, family: str, item: int, values: dict[str, float], parsed: ParsedIntents,
             history: np.ndarray, user_id: int | None,
             rated: dict[int, float]) -> str | None:
        t = self.rec.items
        title = self.rec.titles
        if family == "request_match":
            terms = [g.lower() for g, asked, has in zip(
                t.genres, parsed.genre_mask[0], t.genre[item], strict=True) if asked and has]
            if parsed.decade[0] > 0 and t.decade[item] == parsed.decade[0]:
                terms.append(f"the {parsed.decade[0]}s")
            for flag, arr, word in ((parsed.popular, t.popular, "popular"),
                                    (parsed.obscure, t.obscure, "little-known"),
                                    (parsed.acclaimed, t.acclaimed, "acclaimed")):
                if flag[0] and arr[item]:
                    terms.append(word)
            if not terms:
                return None
            return "matches " + ", ".join(f"'{w}'" for w in terms) + " in your request"
        if family == "request_meaning":
            sim = values.get("src_embedding")
            return f"close in meaning to your request (similarity {sim:.2f})" \
                if sim is not None and np.isfinite(sim) else None
        if family == "after_last" and len(history):
            return f"often watched right after {title[history[0]]}, your latest"
        if family == "similar" and len(history):
            cf = self.rec.generator.sources.get("cf")
            last = history[:5]
            weights = cf.affinity(last, item) if cf is not None else np.zeros(len(last))
            source = int(last[int(np.argmax(weights))])
            rating = rated.get(source)
            said = f"which you rated {rating:g}" if rating is not None else \
                "which you watched recently"
            return f"similar to {title[source]}, {said}"
        if family == "taste" and user_id is not None:
            return "in line with what you usually watch"
        if family == "kg" and len(history):
            return "close to your recent picks in the knowledge graph"
        if family == "item":
            views = values.get("item_pop_30d")
            rating = values.get("item_mean_rating")
            parts = []
            if views is not None and np.isfinite(views):
                parts.append(f"popular lately ({views:.0f} recent views)")
            if rating is not None and np.isfinite(rating):
                parts.append(f"rated {rating:.1f}/5 on average")
            return ", ".join(parts) or None
        return None
