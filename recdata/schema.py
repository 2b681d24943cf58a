"""A dataset's domain schema: what its items are called, which columns mean what, and the
words a request, an explanation and the LLM prompt use for them.

Everything domain-specific lives in a schema file (`configs/schemas/<dataset>.json`), never in
code: the request generator, the request parser, the attribute features, the explanations,
the KG triples and the LLM prompt all read it. A catalogue without a file gets one inferred
from its items table (`infer_schema`, printed by `instructrank data schema`), which a data
scientist then edits: the noun and verb, the phrases people use for each category value.

Two attributes have a role the rest of the system relies on:
- the *categories* (the first `categorical` attribute with `role: "categories"`): the values a
  request asks for ("a jazz artist", "a comedy"); they become the dataset's `genres` column,
  the attribute features and the KG's category relation;
- the *time* attribute (`numeric` with unit `year`): decades in requests ("from the '90s"),
  the dataset's `year` column.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recdata.errors import ConfigError

_VALUE = r'(?:"(?:[^"\\]|\\.)*"|-?[\d.]+(?:e-?\d+)?|true|false|null)'
_FLAT_LIST = re.compile(rf"\[\n\s+({_VALUE}(?:,\n\s+{_VALUE})*)\n\s*\]")
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "configs" / "schemas"

Kind = Literal["categorical", "numeric", "text", "identifier", "ignored"]


class _Part(BaseModel):
    """A schema model that unpickles from an earlier version: fitted sources pickle the
    catalogue with its schema, and a pickled pydantic model restores only the fields it had,
    so a field added since (`Wording.variety`) failed mid-request long after the load. The
    missing ones take their defaults here; fields without a default cannot have been added
    compatibly and stay an error."""

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for name, info in type(self).model_fields.items():
            if name not in self.__dict__ and not info.is_required():
                self.__dict__[name] = info.get_default(call_default_factory=True)


class Attribute(_Part):
    """One column of the items (or users) table and how it is read."""

    model_config = ConfigDict(extra="forbid")
    column: str
    kind: Kind
    role: Literal["categories", "title", "time"] | None = Field(
        None, description="categories: what requests ask for; title: the item's name; "
                          "time: the year an item is from")
    separator: str | None = Field(None, description="categorical stored as one string: "
                                                    "split on this ('|', ' > ', ';')")
    unit: str | None = Field(None, description="numeric: 'year', '$', 'minutes', ...")
    phrases: dict[str, list[str]] = Field(
        default_factory=dict, description="categorical value -> the words people use for it "
                                          "(a value without an entry is its own lower-cased name)")
    min_items: int = Field(1, ge=1, description="categorical: a value on fewer items is not "
                                                "a category (free-text tags: one-off values)")
    relation: str | None = Field(None, description="KG relation name (default has_<column>)")
    entity: str | None = Field(None, description="KG entity prefix (default the column)")
    bands: list[tuple[float, float, str]] | None = Field(
        None, description="numeric: named bands (low, high, name) for KG entities")

    def kg_relation(self) -> str:
        return self.relation or f"has_{self.column}"

    def kg_entity(self) -> str:
        return self.entity or self.column


class Levels(_Part):
    """Item levels a request may ask for. Popular/niche come from interaction counts in the
    training window; acclaimed only where interactions carry ratings, on their own scale."""

    model_config = ConfigDict(extra="forbid")
    popular: list[str] = ["popular", "well-known"]
    obscure: list[str] = ["lesser-known", "obscure"]
    acclaimed: list[str] | None = None
    popular_top_share: float = Field(0.10, gt=0, lt=1)
    obscure_bottom_share: float = Field(0.50, gt=0, lt=1)
    acclaimed_min_mean: float | None = None  # on the data's rating scale
    acclaimed_min_count: int = 10
    rating_scale: tuple[float, float] | None = None


class Wording(_Part):
    """How the domain is spoken of. `{verb}`, `{past}` and `{noun}` in request templates,
    explanations and the prompt are filled from here."""

    model_config = ConfigDict(extra="forbid")
    nouns: list[str] = Field(["item"], min_length=1, description="what an item is called; "
                                                                  "requests vary among them")
    verb: str = "try"  # "listen to", "buy", "read"
    past: str = "tried"  # "listened to", "bought", "read"
    occasion: str = "tonight"  # when a request is for ("tonight", "this week")
    decades: dict[int, str] = Field(default_factory=dict,
                                    description="decade -> its word ('nineties')")
    explanations: dict[str, str] = Field(default_factory=lambda: dict(EXPLANATIONS))
    prompt: str = ("You are a recommender. Does the candidate {noun} suit the user's request "
                   "and recent {noun}s? Answer Yes or No.\n")
    history_label: str = "recently {past}"
    # what asks for variety ("a mix of things", "surprise me"): such a request is
    # re-ranked for variety (ranking.diversity) even when the service is not by default
    variety: list[str] = Field(default_factory=lambda: list(VARIETY))

    def fill(self, text: str, **more: str) -> str:
        return text.format(verb=self.verb, past=self.past, noun=self.nouns[0],
                           occasion=self.occasion, **more)


VARIETY = ("a mix", "mix it up", "mixed bag", "variety", "varied", "surprise me",
           "something different", "all sorts", "eclectic", "diverse", "different kinds")

EXPLANATIONS = {
    "request_match": "matches {terms} in your request",
    "request_meaning": "close in meaning to your request (similarity {similarity})",
    "after_last": "often {past} right after {title}, your latest",
    "similar_rated": "similar to {title}, which you rated {rating}",
    "similar_recent": "similar to {title}, which you {past} recently",
    "taste": "in line with what you usually {verb}",
    "kg": "close to your recent picks in the knowledge graph",
    "popular_lately": "popular lately ({count} recent interactions)",
    "rated": "rated {rating} on average",
    "excluded": "not {terms}, as you asked",
    "excluded_fallback": "shown although it is {terms}: too few items fit your request",
    "in_range": "{range}, as you asked",
    "mentioned": "like {title}, which you mentioned",
    "variety": "added for variety: unlike the {noun}s above it",
}


class DomainSchema(_Part):
    """The whole schema of one dataset (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    attributes: list[Attribute] = Field(default_factory=list)
    user_attributes: list[Attribute] = Field(default_factory=list)
    levels: Levels = Field(default_factory=Levels)
    wording: Wording = Field(default_factory=Wording)

    @model_validator(mode="after")
    def _one_per_role(self) -> DomainSchema:
        for role in ("categories", "title", "time"):
            having = [a.column for a in self.attributes if a.role == role]
            if len(having) > 1:
                raise ConfigError(f"schema {self.dataset!r}: more than one attribute has role "
                                  f"{role!r} ({', '.join(having)})")
        return self

    def by_role(self, role: str) -> Attribute | None:
        return next((a for a in self.attributes if a.role == role), None)

    def of_kind(self, kind: str) -> list[Attribute]:
        return [a for a in self.attributes if a.kind == kind]

    @property
    def text_columns(self) -> tuple[str, ...]:
        """What the encoder reads, in order: the title, then every other text attribute."""
        title = self.by_role("title")
        rest = [a.column for a in self.of_kind("text") if a.role != "title"]
        return tuple(([title.column] if title is not None else []) + rest)

    def phrases(self, value: str) -> list[str]:
        """The words for one category value (its own lower-cased name when unlisted)."""
        cats = self.by_role("categories")
        listed = cats.phrases.get(value) if cats is not None else None
        return listed or [value.lower()]

    def save(self, path: Path) -> Path:
        from recdata.atomic_io import write_text_atomic

        write_text_atomic(Path(path), self.to_json())
        return Path(path)

    def identity(self) -> str:
        """What versions the artifacts derived from this schema (requests, features, the
        models): the whole schema but the variety cues, which only decide how an online
        answer is re-ranked (ranking.diversity) and reach no offline artifact, so editing
        them rebuilds nothing."""
        return self.to_json(exclude={"wording": {"variety"}})

    def to_json(self, exclude: dict | None = None) -> str:
        """Indented JSON with each list of plain values on one line (a phrase list, a band):
        what a person edits."""
        text = json.dumps(self.model_dump(mode="json", exclude_none=True, exclude=exclude),
                          indent=2, ensure_ascii=False)
        return _FLAT_LIST.sub(lambda m: "[" + re.sub(r",\n\s+", ", ", m.group(1)) + "]",
                              text) + "\n"

    @classmethod
    def load(cls, path: Path) -> DomainSchema:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"no schema file {path}; `instructrank data schema` prints one "
                              "inferred from your items to start from")
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValueError) as exc:
            raise ConfigError(f"schema file {path} is not a valid schema: {exc}") from None


def schema_file(dataset: str) -> Path:
    return SCHEMA_DIR / f"{dataset}.json"


def known_schema(dataset: str) -> DomainSchema | None:
    """The committed schema of a named dataset, if there is one."""
    path = schema_file(dataset)
    return DomainSchema.load(path) if path.exists() else None


# ------------------------------------------------------------------------------ inference

ID_NAME = re.compile(r"(^|_)(id|uuid|sku|asin|isbn|url|link|href|code)$|Id$|ID$|_?url$", re.I)
TITLE_NAMES = ("title", "name", "artist", "product_name", "headline")
YEAR_NAMES = re.compile(r"(^|_)(year|yr)($|_)", re.I)
UNIT_NAMES = {"price": "$", "cost": "$", "duration": "minutes", "runtime": "minutes",
              "minutes": "minutes", "length": "minutes", "count": "count"}
SEPARATORS = ("|", " > ", ">", ";")
MAX_CATEGORY_SHARE = 0.05  # a single-valued string column with fewer distinct values is one
MIN_TEXT_WORDS = 4.0  # a string column with this many words per value on average is text
MAX_CATEGORIES = 500  # more distinct values than this: only values on several items count


def _string_kind(col: pl.Series, name: str, n: int) -> Attribute:
    values = col.drop_nulls()
    distinct = values.n_unique()
    if name.lower() in TITLE_NAMES:
        return Attribute(column=name, kind="text")
    if ID_NAME.search(name) and distinct >= 0.9 * max(1, values.len()):
        return Attribute(column=name, kind="identifier")
    for sep in SEPARATORS:  # a delimited list: most values split, parts repeat across items
        parts = values.str.split(sep)
        if parts.list.len().mean() >= 1.5:
            flat = parts.explode().str.strip_chars()
            if flat.n_unique() <= max(50, MAX_CATEGORY_SHARE * flat.len()):
                return Attribute(column=name, kind="categorical", separator=sep)
    words = values.str.split(" ").list.len().mean() or 0.0
    if distinct <= max(20, MAX_CATEGORY_SHARE * n) and words < MIN_TEXT_WORDS:
        return Attribute(column=name, kind="categorical")
    if distinct >= 0.9 * max(1, values.len()) and words < 2 and not name.lower().startswith(
            TITLE_NAMES):
        return Attribute(column=name, kind="identifier")  # unique single tokens: codes
    return Attribute(column=name, kind="text")


def _numeric_kind(col: pl.Series, name: str) -> Attribute:
    values = col.drop_nulls()
    if ID_NAME.search(name) and values.n_unique() >= 0.9 * max(1, values.len()):
        return Attribute(column=name, kind="identifier")
    if YEAR_NAMES.search(name) or (
            col.dtype.is_integer() and values.len() and values.min() >= 1800
            and values.max() <= 2100 and "year" in name.lower()):
        return Attribute(column=name, kind="numeric", unit="year")
    unit = next((u for key, u in UNIT_NAMES.items() if key in name.lower()), None)
    return Attribute(column=name, kind="numeric", unit=unit)


def infer_attributes(table: pl.DataFrame, key: str) -> list[Attribute]:
    """A kind for every column but `key`, from its type and values (see the constants)."""
    out = []
    for name, dtype in table.schema.items():
        if name == key:
            continue
        col = table[name]
        if col.null_count() == col.len():
            out.append(Attribute(column=name, kind="ignored"))
        elif isinstance(dtype, pl.List):
            out.append(Attribute(column=name, kind="categorical"))
        elif dtype == pl.String:
            out.append(_string_kind(col, name, table.height))
        elif dtype.is_numeric():
            out.append(_numeric_kind(col, name))
        else:
            out.append(Attribute(column=name, kind="ignored"))
    return out


def _phrase_variants(value: str) -> list[str]:
    """The lower-cased value and its hyphen/space variant ('sci-fi' and 'sci fi')."""
    low = value.lower().strip()
    variants = [low]
    for a, b in (("-", " "), (" ", "-")):
        if a in low and low.replace(a, b) not in variants:
            variants.append(low.replace(a, b))
    return variants


def infer_schema(dataset: str, items: pl.DataFrame,
                 interactions: pl.DataFrame | None = None,
                 users: pl.DataFrame | None = None, *, max_phrases: int = 200) -> DomainSchema:
    """A starting schema from the data: kinds by column, roles by name and shape, phrases for
    the most common category values, levels for what the data supports (acclaimed only with
    ratings, on their scale). Wording is generic ('item', 'try'): edit it for your domain."""
    attrs = infer_attributes(items, "item_id")
    names = {a.column: a for a in attrs}
    title = next((names[n] for n in TITLE_NAMES if n in names and names[n].kind == "text"),
                 next((a for a in attrs if a.kind == "text"), None))
    if title is not None:
        title.role = "title"
    categorical = [a for a in attrs if a.kind == "categorical"]
    if categorical:
        cats = max(categorical, key=lambda a: _coverage(items, a))
        cats.role = "categories"
        values = category_values(items, cats).explode().drop_nulls()
        if values.n_unique() > MAX_CATEGORIES:  # free-text tags: keep the shared ones
            counts = values.value_counts(sort=True)["count"]
            cats.min_items = max(2, int(counts[MAX_CATEGORIES - 1]))
            values = category_values(items, cats).explode().drop_nulls()
        common = values.value_counts(sort=True).head(max_phrases)
        cats.phrases = {v: _phrase_variants(v) for v in common[values.name]}
    year = next((a for a in attrs if a.kind == "numeric" and a.unit == "year"), None)
    if year is not None:
        year.role = "time"
    levels = Levels()
    if interactions is not None and "rating" in interactions.columns:
        ratings = interactions["rating"].drop_nulls()
        if ratings.len():
            lo, hi = float(ratings.min()), float(ratings.max())
            levels.acclaimed = ["highly rated", "acclaimed", "top-rated"]
            levels.rating_scale = (lo, hi)
            levels.acclaimed_min_mean = lo + 0.75 * (hi - lo)
    user_attrs = infer_attributes(users, "user_id") if users is not None else []
    user_attrs = [a for a in user_attrs if a.kind in ("categorical", "numeric")]
    return DomainSchema(dataset=dataset, attributes=attrs, user_attributes=user_attrs,
                        levels=levels)


def _coverage(items: pl.DataFrame, attr: Attribute) -> float:
    """Share of items with a value, less a penalty for near-unique values (not categories)."""
    values = category_values(items, attr)
    has = float((values.list.len() > 0).mean() or 0.0)
    distinct = values.explode().n_unique()
    return has - (1.0 if distinct > 0.5 * max(1, items.height) else 0.0)


def category_values(items: pl.DataFrame, attr: Attribute) -> pl.Series:
    """The attribute's values per item as a list of strings, whatever its storage."""
    col = items[attr.column]
    if isinstance(col.dtype, pl.List):
        out = col.cast(pl.List(pl.String))
    elif attr.separator:
        out = col.cast(pl.String).str.split(attr.separator)
    else:
        out = items.select(pl.concat_list(pl.col(attr.column).cast(pl.String)))[attr.column]
    out = out.list.eval(pl.element().str.strip_chars().filter(
        pl.element().is_not_null() & (pl.element() != ""))).fill_null([]).alias(attr.column)
    if attr.min_items > 1:
        counts = out.list.unique().explode().drop_nulls().value_counts()
        kept = counts.filter(pl.col("count") >= attr.min_items)[out.name]
        out = out.list.eval(pl.element().filter(pl.element().is_in(kept.implode())))
    return out
