"""Reasons for a recommendation, in words, from what each family of features adds to its score.

Features are grouped into families that a person understands ("matches your request",
"similar to something you rated"). A family's contribution to an item is measured one of
two ways (`ATTRIBUTIONS`, chosen by name):
- `occlusion` (the default): the item's score less its score with that family's features
  set to the median of the request's candidates: what the family gives this item over a
  typical candidate of this request. One LightGBM call over k x families rows, ~0.5 ms
  for ten items.
- `shap`: LightGBM's `pred_contrib` (TreeSHAP) summed over the family: additive, exact
  Shapley values, at ~1.1 ms per item on one core (a third of a request's budget for ten).
The families that pushed the item up most are rendered
with the item's own values: the category words it matched, the history title it is close
to, its recent interactions. A reason is only said when its family's contribution is
positive. The sentences are the domain schema's (`wording.explanations`), so a music
catalogue says "listened to" where another says "bought".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ranking.intent_parser import ParsedIntents
from ranking.ltr.features import families
from recdata.schema import EXPLANATIONS

if TYPE_CHECKING:
    from ranking.inputs import RequestBatch
    from ranking.recommend import Recommender

ATTRIBUTIONS = ("occlusion", "shap")
MIN_CONTRIBUTION = 0.02
MAX_REASONS = 3
MENTION_SIMILARITY = 0.5  # item-text cosine above which an item is 'like' a named one


def _range_words(column: str, lo: float, hi: float, items: object) -> str:
    """'from 1970 to 1985', 'from 1979 or earlier', 'price $20 or less'."""
    schema = items.schema  # type: ignore[attr-defined]
    time_ = schema.by_role("time")
    if time_ is not None and time_.column == column:
        label, more, less, pre, post = "from", "later", "earlier", "", ""
    else:
        attr = next((a for a in schema.attributes if a.column == column), None)
        unit = attr.unit if attr is not None and attr.unit else ""
        label, more, less = column, "more", "less"
        pre, post = ("$", "") if unit == "$" else ("", f" {unit}" if unit else "")
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{label} {pre}{lo:g} to {pre}{hi:g}{post}"
    if np.isfinite(hi):
        return f"{label} {pre}{hi:g}{post} or {less}"
    return f"{label} {pre}{lo:g}{post} or {more}"


@dataclass(frozen=True)
class Reason:
    family: str
    text: str
    contribution: float
    features: dict[str, float]  # the family's features: this item's values


class Explainer:
    def __init__(self, rec: Recommender) -> None:
        self.rec = rec
        self.wording = rec.items.schema.wording
        self.scale = rec.items.schema.levels.rating_scale
        # family -> the model's feature positions in it (declared in feature_repo/ranker.py)
        names = rec.model.features
        self.members = {family: [j for j, f in enumerate(names) if f in members]
                        for family, members in families().items()}

    def contributions(self, x: np.ndarray, top: np.ndarray, valid: np.ndarray,
                      how: str = "occlusion") -> np.ndarray:
        """len(top) x families (in `self.members` order): what each family adds to the
        score of rows `top` of `x` (the request's candidates x the model's features, `valid`
        marking real candidates); see the module's docstring for `how`."""
        model, fams = self.rec.model, list(self.members.values())
        if how == "shap":
            shap = model.contributions(x[top], threads=1)
            return np.stack([shap[:, cols].sum(axis=1) for cols in fams], axis=1)
        if how != "occlusion":
            from recdata.errors import UnknownNameError

            raise UnknownNameError("attribution", how, list(ATTRIBUTIONS))
        pool = x[valid] if valid.any() else x
        typical = column_medians(pool)  # a feature no candidate has stays missing
        items = x[top]
        occluded = np.repeat(items[None], len(fams), axis=0)  # families x items x features
        for f, cols in enumerate(fams):
            occluded[f][:, cols] = typical[cols]
        scores = model.predict_array(np.concatenate([items, occluded.reshape(-1, x.shape[1])]),
                                     threads=1)
        full, without = scores[:len(top)], scores[len(top):].reshape(len(fams), len(top))
        return (full[None, :] - without).T

    def reasons(self, batch: RequestBatch, x: np.ndarray, contrib: np.ndarray,
                idx: np.ndarray, user_id: int | None, parsed: ParsedIntents,
                rated: dict[int, float] | None = None) -> list[list[Reason]]:
        """For each row of `x` (item `idx[i]`'s features, in the model's order): its top
        families, best first. `contrib`: rows x families, from `contributions`; `rated`: the
        user's ratings by catalogue index."""
        rated = rated or {}
        names = self.rec.model.features
        recent = batch.history_coo
        order = np.argsort(recent.data)
        history = recent.col[order]  # most recent first
        named = set(parsed.mentions(1)[0]) if parsed.mentioned else set()
        families = [(f, family, cols) for f, (family, cols) in enumerate(self.members.items())
                    if cols]
        out = []
        for i, item in enumerate(idx):
            # best first (ties: declaration order), and only until MAX_REASONS are said: a
            # family with nothing to say (None) gives way to the next
            row = contrib[i].tolist()
            ranked = sorted((-row[f], n) for n, (f, _, _) in enumerate(families)
                            if not row[f] < MIN_CONTRIBUTION)
            features = x[i].tolist()
            said: list[Reason] = []
            for negative, n in ranked:
                _, family, cols = families[n]
                values = {names[j]: features[j] for j in cols}
                text = self._say(family, int(item), values, parsed, history, user_id, rated,
                                 named)
                if text:
                    said.append(Reason(family, text, round(-negative, 4), values))
                    if len(said) == MAX_REASONS:
                        break
            out.append(said)
        return out

    def request_reasons(self, parsed: ParsedIntents, idx: np.ndarray, bad: np.ndarray,
                        varied: list[bool] | None = None) -> list[list[Reason]]:
        """Per item, what it owes to the request's own constraints: the values it avoids,
        the range it lies in, the named item it is like (text similarity at least
        MENTION_SIMILARITY); and, for an item shown only because too few fit, that it
        breaks the request (`bad`, per item: ranking.constraints.violations). Not from the
        model's contributions: these are the request's. `varied`, per item: the diversity
        stage brought it up past items the ranker put above it."""
        t = self.rec.items
        excluded = [g.lower() for g, x in zip(t.genres, parsed.exclusions[0], strict=True) if x]
        ranges = [(c, lo[0], hi[0]) for c, (lo, hi) in parsed.ranges.items()
                  if (np.isfinite(lo[0]) or np.isfinite(hi[0])) and c in t.numeric]
        named = list(parsed.mentions(1)[0])
        sims = None
        if named and t.vectors is not None:
            sims = t.vectors[idx].astype(np.float64) @ t.vectors[named].astype(np.float64).T
        out = []
        for i, item in enumerate(idx):
            said: list[Reason] = []
            if varied is not None and varied[i]:  # brought up by the diversity stage
                text = self._sentence("variety")
                if text:
                    said.append(Reason("variety", text, 0.0, {}))
            if excluded:
                has = [g.lower() for g, x, h in zip(t.genres, parsed.exclusions[0], t.genre[item],
                                                    strict=True) if x and h]
                key, terms = ("excluded_fallback", has) if has else ("excluded", excluded)
                text = self._sentence(key, terms=" or ".join(terms))
                if text:
                    said.append(Reason("request_constraint", text, 0.0, {}))
            for column, lo, hi in ranges:
                value = t.numeric[column][item]
                if not bad[i] and np.isfinite(value):
                    text = self._sentence("in_range", range=_range_words(column, lo, hi, t))
                    if text:
                        said.append(Reason("request_constraint", text, 0.0, {column: value}))
            if sims is not None:
                best = int(np.argmax(sims[i]))
                if sims[i, best] >= MENTION_SIMILARITY:
                    text = self._sentence("mentioned", title=self.rec.titles[named[best]])
                    if text:
                        said.append(Reason("request_mention", text, 0.0,
                                           {"similarity": round(float(sims[i, best]), 4)}))
            out.append(said)
        return out

    def understood(self, parsed: ParsedIntents) -> dict[str, object]:
        """The typed intent of a one-request batch, in the catalogue's words: what a client
        can show back ('no horror; before 1980; like Alien')."""
        t = self.rec.items
        out: dict[str, object] = {
            "wanted": [g for g, m in zip(t.genres, parsed.genre_mask[0], strict=True) if m],
            "excluded": [g for g, m in zip(t.genres, parsed.exclusions[0], strict=True) if m],
        }
        if parsed.decade[0] > 0:
            out["decade"] = int(parsed.decade[0])
        out["ranges"] = {c: [None if not np.isfinite(lo[0]) else float(lo[0]),
                             None if not np.isfinite(hi[0]) else float(hi[0])]
                         for c, (lo, hi) in parsed.ranges.items()
                         if np.isfinite(lo[0]) or np.isfinite(hi[0])}
        out["mentioned"] = [self.rec.item_keys[r] for r in parsed.mentions(1)[0]]
        if parsed.variety is not None and bool(parsed.variety[0]):
            out["variety"] = True
        if parsed.remainder is not None:
            out["remainder"] = parsed.remainder[0]
        return out

    def _say(self, family: str, item: int, values: dict[str, float], parsed: ParsedIntents,
             history: np.ndarray, user_id: int | None,
             rated: dict[int, float], named: set[int]) -> str | None:
        t = self.rec.items
        title = self.rec.titles
        say = self._sentence
        if family == "request_match":
            terms = [g.lower() for g, asked, has in zip(
                t.genres, parsed.genre_mask[0], t.genre[item], strict=True) if asked and has]
            if parsed.decade[0] > 0 and t.decade[item] == parsed.decade[0]:
                terms.append(f"the {parsed.decade[0]}s")
            levels = t.schema.levels
            for flag, arr, words in ((parsed.popular, t.popular, levels.popular),
                                     (parsed.obscure, t.obscure, levels.obscure),
                                     (parsed.acclaimed, t.acclaimed, levels.acclaimed)):
                word = words[0] if words else None
                if word and flag[0] and arr[item]:
                    terms.append(word)
            if not terms:
                return None
            return say("request_match", terms=", ".join(f"'{w}'" for w in terms))
        if family == "request_meaning":
            sim = values.get("src_embedding")
            return say("request_meaning", similarity=f"{sim:.2f}") \
                if sim is not None and np.isfinite(sim) else None
        # an item the request named sits in its history, but the person did not take it:
        # "like X, which you mentioned" (request_reasons) says it, not "your latest"
        if family == "after_last" and len(history):
            return None if int(history[0]) in named else say("after_last",
                                                             title=title[history[0]])
        if family == "similar" and len(history):
            cf = self.rec.generator.sources.get("cf")
            last = history[:5]
            weights = cf.affinity(last, item) if cf is not None else np.zeros(len(last))
            source = int(last[int(np.argmax(weights))])
            if source in named:
                return None
            rating = rated.get(source)
            if rating is not None:
                return say("similar_rated", title=title[source], rating=f"{rating:g}")
            return say("similar_recent", title=title[source])
        if family == "taste" and user_id is not None:
            return say("taste")
        if family == "kg" and len(history):
            return say("kg")
        if family == "item":
            views = values.get("item_pop_30d")
            rating = values.get("item_mean_rating")
            parts = []
            if views is not None and np.isfinite(views):
                parts.append(say("popular_lately", count=f"{views:.0f}"))
            if rating is not None and np.isfinite(rating):
                scale = f"{self.scale[1]:g}" if self.scale else ""
                parts.append(say("rated", rating=f"{rating:.1f}", scale=scale))
            return ", ".join(p for p in parts if p) or None
        return None

    def _sentence(self, key: str, **values: str) -> str | None:
        """The schema's sentence `key` with `values` in; a schema may leave a reason out
        (an empty sentence is never said)."""
        template = self.wording.explanations.get(key, EXPLANATIONS.get(key, ""))
        return self.wording.fill(template, **values) or None


def column_medians(values: np.ndarray) -> np.ndarray:
    """np.nanmedian(values, axis=0), NaN for an all-NaN column, without its masked arrays
    (~0.7 ms for a request's 200 candidates, a twentieth of that sorted): NaN sorts last,
    so each column's median is the middle of its first `count` sorted values."""
    ordered = np.sort(values, axis=0)
    count = (~np.isnan(values)).sum(axis=0)
    if ordered.shape[0] == 0:
        return np.full(values.shape[1], np.nan)
    cols = np.arange(values.shape[1])
    low = ordered[np.maximum(count - 1, 0) // 2, cols]
    high = ordered[np.maximum(count, 1) // 2, cols]
    return np.where(count > 0, (low + high) / 2, np.nan)
