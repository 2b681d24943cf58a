"""The ranker's features for (request, candidate) pairs, offline and online alike.

The features are declared once, in `feature_repo/ranker.py`; this module binds each
declaration's `compute` name to a function and turns a request batch, its candidates, the
feature store's rows and the in-process item tables into the feature frame. Training and
serving cannot drift apart: the offline path feeds `assemble()` Feast point-in-time rows,
the online path Feast online rows, with the same column names
(`user_history__n_interactions`, `item_stats__popularity_7d`, ...).

A feature whose inputs are missing (a store column not read, a candidate source not
configured, no KG, no item vectors) raises `FeatureContractError` naming it: a column of
NaN would train and serve silently. Anonymous requests (search, unknown users) get nulls for
every user feature: that is a value, not a missing input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import polars as pl

from feature_repo import ranker as declared
from feature_repo.ranker import RankerFeature
from kg.signals import kg_score
from ranking.candidates import Candidates
from ranking.inputs import RequestBatch
from ranking.intent_parser import ParsedIntents, TitleIndex, parse_instructions
from recdata.errors import FeatureStoreError, UnknownNameError
from recdata.frames import float_block
from recdata.schema import DomainSchema

SECONDS_PER_DAY = 86_400.0

ABLATIONS = declared.ABLATIONS
FEATURES: list[str] = [f.name for f in declared.FEATURES]  # the frame's column order


class FeatureContractError(FeatureStoreError):
    """A declared feature that cannot be computed from what is there."""


def column(ref: str) -> str:
    """The frame column of a Feast reference: `view:feature` -> `view__feature`."""
    return ref.replace(":", "__", 1)


@cache
def _ref_entities() -> dict[str, str]:
    """Every declared store reference -> the entity of its view ('user' or 'item'); an
    unknown view or field is an error naming the feature that reads it."""
    from featurestore.store import feature_views

    views = feature_views()
    out = {}
    for f in declared.FEATURES:
        for ref in f.reads:
            view, _, name = ref.partition(":")
            if view not in views or name not in {x.name for x in views[view].features}:
                raise FeatureContractError(
                    f"ranker feature {f.name!r} reads {ref!r}, which feature_repo/"
                    f"definitions.py does not declare")
            out[ref] = views[view].entities[0]
    return out


@cache
def _specs() -> dict[str, RankerFeature]:
    """Declarations by name, built once: `assemble` runs on the request path."""
    return declared.by_name()


def check_contract() -> None:
    """Each declaration reads declared Feast features and computes with a registered
    function; raises naming the first that does not."""
    _ref_entities()
    for f in declared.FEATURES:
        if f.compute not in COMPUTE:
            raise FeatureContractError(
                f"ranker feature {f.name!r} is computed by {f.compute!r}, which is not "
                f"registered; registered: {', '.join(sorted(COMPUTE))}")


def store_columns(features: list[str]) -> tuple[list[str], list[str]]:
    """(user columns, item columns) of the feature store that `features` read."""
    entity = _ref_entities()
    specs = _specs()
    refs = declared.store_refs([specs[f] for f in features])
    return ([column(r) for r in refs if entity[r] == "user"],
            [column(r) for r in refs if entity[r] != "user"])


def feature_names(ablation: str = "full") -> list[str]:
    if ablation not in ABLATIONS:
        raise UnknownNameError("ablation", ablation, list(ABLATIONS))
    return [f.name for f in declared.ablation_features(ablation)]


def families() -> dict[str, tuple[str, ...]]:
    """Explanation family -> its features, in declaration order."""
    out: dict[str, list[str]] = {}
    for f in declared.FEATURES:
        if f.family is not None:
            out.setdefault(f.family, []).append(f.name)
    return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True)
class Available:
    """What a run or a service has to compute features from."""

    sources: frozenset[str]
    served: frozenset[str]   # store columns (`view__feature`)
    kg: bool
    vectors: bool


def missing_input(f: RankerFeature, have: Available) -> str | None:
    """Why `f` cannot be computed from `have` (None: it can)."""
    unserved = [r for r in f.reads if column(r) not in have.served]
    if unserved:
        return f"the feature store does not serve {', '.join(unserved)}"
    if f.compute in ("source_score", "source_rank") and f.arg not in have.sources:
        return f"candidate source {f.arg!r} is not configured"
    if f.compute == "kg_user_score" and not have.kg:
        return "no knowledge-graph embeddings were loaded"
    if f.compute in ("vector_cosine", "mention_similarity") and not have.vectors:
        return "no item text vectors were loaded"
    return None


def available_features(have: Available) -> list[str]:
    """The declared features computable from `have`, in frame order."""
    return [f.name for f in declared.FEATURES if missing_input(f, have) is None]


def require(features: list[str], have: Available, what: str) -> None:
    """Raise naming every feature of `features` that `have` cannot compute."""
    specs = _specs()
    unknown = [f for f in features if f not in specs]
    if unknown:
        raise FeatureContractError(f"{what} expects features feature_repo/ranker.py does not "
                                   f"declare: {', '.join(unknown)}")
    problems = [f"{f} ({why})" for f in features
                if (why := missing_input(specs[f], have)) is not None]
    if problems:
        raise FeatureContractError(f"{what} needs features that cannot be computed: "
                                   + "; ".join(problems))


@dataclass(frozen=True)
class ItemTables:
    """In-process, static item data the features read (catalogue order)."""

    item_ids: np.ndarray
    genres: list[str]
    genre: np.ndarray        # items x genres, bool
    decade: np.ndarray       # items, -1 unknown
    popular: np.ndarray
    obscure: np.ndarray
    acclaimed: np.ndarray
    year: np.ndarray         # float, NaN unknown
    vectors: np.ndarray | None  # items x d, unit norm (text encoder)
    schema: DomainSchema
    # numeric attributes a request may bound ('before 1980', 'under $20'), NaN unknown
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    titles: TitleIndex | None = None  # for linking items a request names

    @classmethod
    def from_attribute_source(cls, source: Any, vectors: np.ndarray | None) -> ItemTables:
        """From a fitted `filter_popularity` scorer, which already holds the attribute arrays
        (and, once built, the title index)."""
        items = source.fitted.catalogue.items
        schema = source.schema
        time_ = schema.by_role("time")
        bounded = [a.column for a in schema.of_kind("numeric")
                   if a.column in items.columns and (a.unit or a.role == "time")]
        numeric = {c: items[c].cast(pl.Float64, strict=False).to_numpy() for c in bounded}
        if time_ is not None:
            numeric[time_.column] = items["year"].cast(pl.Float64).to_numpy()
        if getattr(source, "title_index", None) is None and "title" in items.columns:
            words = schema.wording
            source.title_index = TitleIndex(items["title"].cast(pl.String).to_list(),
                                            (*words.nouns, words.verb, words.past))
        return cls(items["item_id"].to_numpy(), source.genres, source.item_genre,
                   source.item_decade, source.popular, source.obscure, source.acclaimed,
                   items["year"].cast(pl.Float64).to_numpy(), vectors, schema, numeric,
                   getattr(source, "title_index", None))


def _attribute_match(p: ParsedIntents, t: ItemTables, idx: np.ndarray) -> dict[str, np.ndarray]:
    genre_hits = (p.genre_mask[:, None, :] & t.genre[idx]).sum(axis=2)
    genre_asked = p.genre_mask.sum(axis=1)[:, None]
    decade_asked = (p.decade > 0)[:, None]
    decade = decade_asked & (t.decade[idx] == p.decade[:, None])
    level = ((p.popular[:, None] & t.popular[idx]) + (p.obscure[:, None] & t.obscure[idx])
             + (p.acclaimed[:, None] & t.acclaimed[idx]))
    asked = genre_asked + decade_asked + p.popular[:, None] + p.obscure[:, None] \
        + p.acclaimed[:, None]
    shape = idx.shape
    return {
        "attr_asked": np.broadcast_to(asked, shape),
        "attr_genre_asked": np.broadcast_to(genre_asked, shape),
        "attr_genre_match": genre_hits,
        "attr_decade_match": decade,
        "attr_level_match": level,
        "attr_all_match": (genre_hits + decade + level) == asked,
    }


def _gather_dot(rows: np.ndarray, items: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """rows[r] . items[idx[r, j]] for every (r, j). A (requests x items) product would be
    cheaper per value on a small catalogue but grows with the catalogue; this gathers each
    request's candidates' vectors instead, a block of requests at a time so the
    (block x candidates x dim) copy stays under GATHER_BLOCK values."""
    n, k = idx.shape
    out = np.empty((n, k))
    block = max(1, GATHER_BLOCK // max(1, k * items.shape[1]))
    for lo in range(0, n, block):
        part = items[idx[lo:lo + block]].astype(np.float64)
        out[lo:lo + block] = np.einsum("nkd,nd->nk", part,
                                       rows[lo:lo + block].astype(np.float64))
    return out


GATHER_BLOCK = 4_000_000


@dataclass
class Inputs:
    """What one assembly reads; request-time functions take it with their declaration."""

    batch: RequestBatch
    cands: Candidates
    user_rows: pl.DataFrame
    item_rows: pl.DataFrame
    items: ItemTables
    kg: Any
    anon: np.ndarray
    parsed: ParsedIntents | None
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.cands.idx.shape

    @property
    def now(self) -> np.ndarray:
        return self.batch.requests["timestamp"].cast(pl.Float64).to_numpy()[:, None]

    def store_value(self, ref: str) -> np.ndarray:
        """A store column as (requests x candidates) floats, NaN where null."""
        n, k = self.shape
        name = column(ref)
        if _ref_entities()[ref] == "user":
            values = self._floats("user", self.user_rows, name)
            return np.broadcast_to(np.where(self.anon, np.nan, values)[:, None], (n, k))
        return self._floats("item", self.item_rows, name).reshape(n, k)

    def _floats(self, entity: str, frame: pl.DataFrame, name: str) -> np.ndarray:
        """Column `name` of `frame` as float64, NaN where null: every numeric column is
        converted in one pass on first use (a cast and a fill per feature cost a one-request
        assembly ~3 ms of polars calls)."""
        key = f"floats:{entity}"
        if key not in self.memo:
            numeric, block = float_block(frame)
            self.memo[key] = {c: block[:, i] for i, c in enumerate(numeric)}
        found = self.memo[key].get(name)
        if found is None:  # not a numeric column: as its own cast
            return frame[name].cast(pl.Float64).fill_null(np.nan).to_numpy()
        return found

    def user_array(self, ref: str, width: int) -> np.ndarray:
        """A user list column as a (requests x width) matrix, NaN rows where null or
        anonymous."""
        given = self.memo.get("lists:user", {}).get(column(ref))
        if given is not None:
            if given.shape[1] == 0:  # no request's user has this list
                return np.full((len(given), width), np.nan)
            if given.shape[1] != width:
                raise ValueError(f"user column {column(ref)} holds lists of "
                                 f"{given.shape[1]} values; its feature reads {width}")
            return np.where(self.anon[:, None], np.nan, given)
        col = self.user_rows[column(ref)]
        out = np.full((len(col), width), np.nan)
        ok = col.is_not_null().to_numpy() & ~self.anon
        if ok.any():
            out[ok] = np.array(col.filter(pl.Series(ok)).to_list(), dtype=np.float64)
        return out


Compute = Callable[[Inputs, RankerFeature], np.ndarray]
COMPUTE: dict[str, Compute] = {}


def computes(name: str) -> Callable[[Compute], Compute]:
    """Register a request-time function under the name declarations use in `compute`."""
    def register(fn: Compute) -> Compute:
        COMPUTE[name] = fn
        return fn
    return register


@computes("value")
def _value(x: Inputs, f: RankerFeature) -> np.ndarray:
    return x.store_value(f.reads[0])


@computes("days_since")
def _days_since(x: Inputs, f: RankerFeature) -> np.ndarray:
    return (x.now - x.store_value(f.reads[0])) / SECONDS_PER_DAY


@computes("genre_affinity")
def _genre_affinity(x: Inputs, f: RankerFeature) -> np.ndarray:
    share = x.user_array(f.reads[0], len(x.items.genres))
    return _gather_dot(share, x.items.genre, x.cands.idx)


@computes("vector_cosine")
def _vector_cosine(x: Inputs, f: RankerFeature) -> np.ndarray:
    vectors = x.items.vectors
    assert vectors is not None  # `missing_input` refuses the feature first
    return _gather_dot(x.user_array(f.reads[0], vectors.shape[1]), vectors, x.cands.idx)


@computes("source_score")
def _source_score(x: Inputs, f: RankerFeature) -> np.ndarray:
    return x.cands.scores[str(f.arg)]


@computes("source_rank")
def _source_rank(x: Inputs, f: RankerFeature) -> np.ndarray:
    return x.cands.ranks[str(f.arg)]


@computes("attribute_match")
def _attribute(x: Inputs, f: RankerFeature) -> np.ndarray:
    if "attribute_match" not in x.memo:
        parsed = x.parsed if x.parsed is not None else \
            parse_instructions(x.batch.instructions, x.items.genres, x.items.schema)
        x.memo["attribute_match"] = _attribute_match(parsed, x.items, x.cands.idx)
    return x.memo["attribute_match"][f"attr_{f.arg}"]


def _named(x: Inputs) -> list[tuple[int, ...]]:
    n = x.shape[0]
    return x.parsed.mentions(n) if x.parsed is not None else [()] * n


@computes("mention_similarity")
def _mention_similarity(x: Inputs, f: RankerFeature) -> np.ndarray:
    """Each candidate's highest text cosine with an item the request names; NaN where it
    names none. Only the (few) requests that name items are computed."""
    out = np.full(x.shape, np.nan)
    named = _named(x)
    vectors = x.items.vectors
    if vectors is None:
        return out
    for r in np.flatnonzero([len(m) > 0 for m in named]):
        sims = vectors[x.cands.idx[r]].astype(np.float64) @ \
            vectors[list(named[r])].astype(np.float64).T
        out[r] = sims.max(axis=1)
    return out


@computes("mention_count")
def _mention_count(x: Inputs, f: RankerFeature) -> np.ndarray:
    counts = np.asarray([len(m) for m in _named(x)], dtype=np.float64)
    return np.broadcast_to(counts[:, None], x.shape).copy()


@computes("kg_user_score")
def _kg_user_score(x: Inputs, f: RankerFeature) -> np.ndarray:
    users = np.where(x.anon, -1, x.batch.requests["user_id"].to_numpy())
    score = kg_score(x.kg, users, x.items.item_ids[x.cands.idx])
    return np.where(x.anon[:, None], np.nan, score)


@computes("catalogue")
def _catalogue(x: Inputs, f: RankerFeature) -> np.ndarray:
    return getattr(x.items, str(f.arg))[x.cands.idx]


def assemble(batch: RequestBatch, cands: Candidates, user_rows: pl.DataFrame,
             item_rows: pl.DataFrame, items: ItemTables, *, kg: Any = None,
             anonymous: np.ndarray | None = None, parsed: ParsedIntents | None = None,
             features: list[str] | None = None) -> pl.DataFrame:
    """The frame of `features` (default: every declared one), one row per (request,
    candidate) in row-major order.

    `user_rows`: one row per request with the user store columns the features read (null
    for unknown users); `item_rows`: one row per (request, candidate) with the item store
    columns, as of the request time.
    """
    return pl.DataFrame(dict(_computed(batch, cands, user_rows, item_rows, items, kg,
                                       anonymous, parsed, features)))


def assemble_array(batch: RequestBatch, cands: Candidates, user_rows: pl.DataFrame,
                   item_rows: pl.DataFrame, items: ItemTables, *, kg: Any = None,
                   anonymous: np.ndarray | None = None, parsed: ParsedIntents | None = None,
                   features: list[str] | None = None,
                   item_floats: dict[str, np.ndarray] | None = None,
                   user_values: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """`assemble` as a float32 matrix, rows x `features` in their order: what the online
    path scores (a polars frame of ~40 columns built and read back cost a one-request
    answer ~1 ms). `item_floats`: `item_rows`' numeric columns as `float_block` gives
    them, when the caller has them already (the online reader keeps them converted).
    `user_values`: the user columns as `recdata.frames.python_floats` gives them (1-D for
    a value, 2-D for a list), read instead of `user_rows`, which then need only name
    its columns."""
    features = FEATURES if features is None else features
    out = np.empty((cands.idx.size, len(features)), dtype=np.float32)
    for j, (_, values) in enumerate(_computed(batch, cands, user_rows, item_rows, items, kg,
                                              anonymous, parsed, features, item_floats,
                                              user_values)):
        out[:, j] = values
    return out


def _computed(batch: RequestBatch, cands: Candidates, user_rows: pl.DataFrame,
              item_rows: pl.DataFrame, items: ItemTables, kg: Any,
              anonymous: np.ndarray | None, parsed: ParsedIntents | None,
              features: list[str] | None,
              item_floats: dict[str, np.ndarray] | None = None,
              user_values: dict[str, np.ndarray] | None = None
              ) -> Iterator[tuple[str, np.ndarray]]:
    """Each feature's float32 values, flat in row-major (request, candidate) order."""
    features = FEATURES if features is None else features
    n = cands.idx.shape[0]
    anon = np.zeros(n, dtype=bool) if anonymous is None else np.asarray(anonymous, bool)
    have = Available(frozenset(cands.scores), frozenset(user_rows.columns)
                     | frozenset(item_rows.columns), kg is not None, items.vectors is not None)
    require(features, have, "assembling the ranker's features")
    x = Inputs(batch, cands, user_rows, item_rows, items, kg, anon, parsed)
    if item_floats is not None:
        x.memo["floats:item"] = item_floats
    if user_values is not None:
        x.memo["floats:user"] = {c: v for c, v in user_values.items() if v.ndim == 1}
        x.memo["lists:user"] = {c: v for c, v in user_values.items() if v.ndim == 2}
    specs = _specs()
    for f in features:
        yield f, np.asarray(COMPUTE[specs[f].compute](x, specs[f]), dtype=np.float32).ravel()
