"""A request, read into a typed intent: what is wanted, what is not, ranges, named items.

The parser knows the dataset's domain schema (`recdata.schema`: the phrases of each
category value, the decade words, the level phrases, the numeric attributes and their
units) and, when given one, the catalogue's titles. From each request it reads:
- wanted category values, decade and levels ("a popular 90s comedy");
- excluded category values: a value inside a negated clause ("no horror please", "nothing
  too scary", "anything but a romance") is excluded and not wanted;
- numeric ranges on the time attribute, absolute or relative to the request's time
  ("before 1980", "between 1970 and 1985", "recent", "from the last couple of years"), and
  on numeric attributes with a unit ("under $20", "less than 90 minutes");
- mentioned catalogue items, linked by fuzzy title match after a cue ("like Alien but
  funnier", "I loved Fargo"), with rapidfuzz;
- the remainder: the text without its negated clauses, which is what semantic matching
  reads (the embedding of "no horror" is close to horror).
Everything it does not understand stays in the remainder, which is why embedding models
exist. Vectorised with polars over a batch; only the fuzzy title step runs per cue found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl

from recdata.frames import to_floats
from recdata.schema import DomainSchema

_DECADE_FULL = r"\b(1[89]\d0|20\d0)s\b"
_DECADE_SHORT = r"(?:^|[^\d])'?(\d)0s\b"
# "a man in his 50s" is an age, not a decade
_AGES = r"\b(their|his|her|my|our|your|whose)\s+((?:early|mid|late)[- ]?)?'?\d0s\b"
# a negated clause: a cue, then everything up to a clause boundary
_NEGATION = (r"no|not|nothing|none|without|except|avoid|skip|hate|never|nor|"
             r"don'?t want|do not want|don'?t like|do not like|not into|tired of|sick of|"
             r"can'?t stand|cannot stand|no more|enough of")
# a negated clause runs from its cue to the next clause boundary: punctuation or a linking
# word between spaces ('song-and-dance' and 'drum and bass' outside a negation stay whole)
_STOP = (r"(?:\s(?:but|instead|rather|though|although|however|and|yet|just|maybe|perhaps|"
         r"something|preferably|ideally|please|so|more like)\s|[.,;:!?]|$)")
_NEG_SPAN = rf"\b(?:{_NEGATION})(?:\s[^.,;:!?]*?)?{_STOP}"  # 'no-frills' negates nothing
_MENTION_CUES = (r"like|similar to|such as|as good as|reminds? me of|in the vein of|"
                 r"along the lines of|in the spirit of|loved|liked|enjoyed|adored|"
                 r"fan of|more of|same vibe as|the vibe of|style of|kind of like")
_MENTION = rf"(?:[\w']+\s+)?\b(?:{_MENTION_CUES})\s+[^.,;:!?]{{2,80}}"
# "I feel like a comedy", "I'd like...": 'like' as a verb names nothing
_NOT_CUED = re.compile(r"^(?:feel|feels|felt|would|i'd|we'd|you'd|id|i|we|you|they|look|"
                       r"looks|seem|seems|sound|sounds|just|really)\s+like\s")
_OPENING = r"^\s*([^.,;:!?]{2,60}?)\s+but\b"  # "Twelve Monkeys but even stranger"
_NAMING = re.compile(rf"{_MENTION_CUES}|but")  # what a text needs for either to match
_NOT_TITLES = {"a", "an", "the", "that", "this", "it", "one", "something", "anything",
               "those", "these", "what", "i", "me", "to", "some", "more", "stuff", "them",
               "him", "her", "you"}  # plus the schema's nouns and verb (TitleIndex)
_RELATIVE = {"couple": 2, "couple of": 2, "few": 3, "two": 2, "three": 3, "four": 4,
             "five": 5, "several": 5, "ten": 10}
_UNIT_WORDS = {"$": ["dollars?", "bucks", "usd"], "minutes": ["min", "mins", "minutes?"]}
NO_BOUND = np.nan


@dataclass(frozen=True)
class ParsedIntents:
    """The typed intent of each request of a batch (arrays are requests-first)."""

    genres: list[str]           # vocabulary order of `genre_mask` columns
    genre_mask: np.ndarray      # requests x genres, bool: values asked for
    decade: np.ndarray          # requests, int (0 = none asked)
    popular: np.ndarray         # bool
    obscure: np.ndarray         # bool
    acclaimed: np.ndarray       # bool
    excluded: np.ndarray | None = None  # requests x genres, bool: values asked against
    # column -> (low, high) bounds per request, NaN where none (the time attribute included)
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    mentioned: list[tuple[int, ...]] | None = None  # catalogue rows named in each request
    remainder: list[str] | None = None  # the text semantic matching reads
    variety: np.ndarray | None = None  # bool per request: it asks for variety

    @cached_property
    def exclusions(self) -> np.ndarray:
        return self.excluded if self.excluded is not None else np.zeros_like(self.genre_mask)

    def mentions(self, n: int) -> list[tuple[int, ...]]:
        return self.mentioned if self.mentioned is not None else [()] * n

    def rows(self, lo: int, hi: int) -> ParsedIntents:
        """The intents of requests lo..hi (a chunk of the batch they were parsed from)."""
        return ParsedIntents(
            self.genres, self.genre_mask[lo:hi], self.decade[lo:hi], self.popular[lo:hi],
            self.obscure[lo:hi], self.acclaimed[lo:hi], self.exclusions[lo:hi],
            {c: (a[lo:hi], b[lo:hi]) for c, (a, b) in self.ranges.items()},
            None if self.mentioned is None else self.mentioned[lo:hi],
            None if self.remainder is None else self.remainder[lo:hi],
            None if self.variety is None else self.variety[lo:hi])


# words are runs of letters and hyphens; any other character is a word of its own ('kids''
# ends in one, so 'kids' alone is not that phrase; '80s' is three)
_OWN_WORD = r"([^a-z\s-])"


def _spaced(text: pl.Expr) -> pl.Expr:
    """Lower case, words one space apart, a space at each end: a phrase spaced the same way
    then matches whole words by plain substring search, as the pattern
    `(^|[^a-z-])phrase($|[^a-z-])` did."""
    words = text.str.to_lowercase().str.replace_all(_OWN_WORD, " $1 ")
    return pl.lit(" ") + words.str.replace_all(r"\s+", " ").str.strip_chars() + pl.lit(" ")


def _spaced_phrase(phrase: str) -> str:
    words = re.sub(_OWN_WORD, r" \1 ", phrase.lower()).split()
    return " " + " ".join(words) + " "


def _phrase_table(groups: tuple[tuple[str, ...], ...]) -> tuple[list[str], np.ndarray]:
    """The spaced phrases of all groups, and which groups each belongs to (phrases x groups,
    bool; a phrase shared by groups marks them all)."""
    keys = [[_spaced_phrase(p) for p in phrases] for phrases in groups]
    patterns = sorted({k for ks in keys for k in ks if k.strip()})
    at = {k: i for i, k in enumerate(patterns)}
    owner = np.zeros((len(patterns), len(groups)), dtype=bool)
    for g, ks in enumerate(keys):
        owner[[at[k] for k in ks if k.strip()], g] = True
    return patterns, owner


def _phrases_in(column: str, patterns: list[str]) -> pl.Expr:
    """The patterns found in `column`, as whole words: one Aho-Corasick pass over every
    group's phrases (a regular expression per group cost a one-request batch ~0.2 ms each
    to compile and run, 40 of them per request)."""
    if not patterns:
        return pl.lit(None, pl.List(pl.String)).alias(f"{column}_hits")
    return _spaced(pl.col(column)).str.extract_many(patterns, overlapping=True) \
        .alias(f"{column}_hits")


def _hit_matrix(found: list[list[str] | None], at: dict[str, int],
                owner: np.ndarray) -> np.ndarray:
    """rows x groups, bool, from each row's list of patterns found (`at`: a pattern's row of
    `owner`). Array work over the matches, from the column read out once: each polars call
    on the result (a length, an explode) cost a one-request parse ~0.15 ms."""
    lengths = np.fromiter((len(f) if f else 0 for f in found), dtype=np.int64, count=len(found))
    matched = [at[p] for f in found if f for p in f]
    counts = np.zeros((len(found), owner.shape[1]), dtype=np.int32)
    np.add.at(counts, np.repeat(np.arange(len(found)), lengths),
              owner[np.asarray(matched, dtype=np.int64)])
    return counts > 0


def _cued(text: pl.Expr) -> pl.Expr:
    """'anything but X' is a negation cue, not a clause boundary."""
    return text.str.replace_all(r"(?i)\b(?:anything|everything|all) but\b", "except")


def _semantic(text: pl.Expr) -> pl.Expr:
    cued = _cued(text)
    # the clause and who says it: "I'm not into horror" leaves nothing behind
    cleaned = cued.str.replace_all(rf"(?i)(?:\b(?:i'?m|i am|i|we|we're|i'd|we'd)\s+)?{_NEG_SPAN}",
                                   " ").str.replace_all(r"\s+", " ")
    cleaned = cleaned.str.strip_chars(" ,.;").str.replace(r"(?i)\s+(but|and|or)$", "")
    negated = cued.str.to_lowercase().str.contains(rf"\b(?:{_NEGATION})(?:\s|$)")
    return pl.when(negated).then(
        pl.when(cleaned == "").then(pl.lit("something")).otherwise(cleaned)).otherwise(text)


def semantic_text(texts: list[str]) -> list[str]:
    """The request without its negated clauses: what an embedding should match ('something'
    when nothing else is left). A request with nothing negated comes back byte for byte."""
    frame = pl.DataFrame({"t": texts}, schema={"t": pl.String})
    return frame.select(_semantic(pl.col("t"))).to_series().to_list()


def _lookup(word: pl.Expr, table: dict[str, Any]) -> pl.Expr:
    """`table[word]` as Int32, null for a word not in it: an enum's index into the values
    (replace_strict built its mapping on every call, ~0.3 ms of a one-request parse)."""
    values = pl.Series([int(v) for v in table.values()], dtype=pl.Int32)
    index = word.cast(pl.Enum(list(table)), strict=False).to_physical()
    return pl.lit(values).gather(index)


# every pattern of `_year_exprs` needs a digit or one of these in the lowercased text
# ('golden age' and 'oldies' have 'old'); tests/test_requests fails without any one of them
_YEAR_CUES = ("year", "recent", "newest", "latest", "brand", "release", "came out", "old",
              "classic", "vintage")


def _year_exprs(nouns: tuple[str, ...] = ()) -> list[pl.Expr]:
    """The years asked for, as columns `year_hi`, `year_lo`, `year_back` (a look-back in
    years) and `year_old`: 'before 1980', 'after the 80s', 'between 1970 and 1985', 'recent',
    'the last couple of years', 'an older one' (`nouns`: the schema's)."""
    p = pl.col("low")
    decade = r"(?:the\s+)?'?(\d0)s"
    year = r"(1[89]\d\d|20\d\d)"

    def four(short: pl.Expr) -> pl.Expr:
        short = short.cast(pl.Int32)
        return pl.when(short >= 20).then(1900 + short).otherwise(2000 + short)

    before = pl.coalesce(
        p.str.extract(rf"\b(?:before|pre-?|older than|earlier than|prior to)\s*{year}\b", 1)
        .cast(pl.Int32) - 1,
        four(p.str.extract(rf"\b(?:before|pre-?|older than|earlier than|prior to)\s*{decade}",
                           1)) - 1,
        p.str.extract(rf"\b(?:until|up to|no later than)\s*{year}\b", 1).cast(pl.Int32),
        p.str.extract(rf"\b{year}\s+(?:or|and)\s+(?:earlier|older|before)\b", 1)
        .cast(pl.Int32),
        p.str.extract(rf"\bbetween\s+{year}\s+and\s+{year}\b", 2).cast(pl.Int32),
        p.str.extract(rf"\b{year}\s*(?:-|–|to)\s*{year}\b", 2).cast(pl.Int32),
    )
    after = pl.coalesce(
        p.str.extract(rf"\b(?:after|post-?|newer than|later than)\s*{year}\b", 1)
        .cast(pl.Int32) + 1,
        four(p.str.extract(rf"\b(?:after|post-?|newer than|later than)\s*{decade}", 1)) + 10,
        p.str.extract(rf"\b(?:since|from|no earlier than)\s*{year}\s*(?:on|onwards?)?\b", 1)
        .cast(pl.Int32),
        p.str.extract(rf"\b{year}\s+(?:(?:or|and)\s+(?:later|newer|after|up)|onwards?)\b",
                      1).cast(pl.Int32),
        p.str.extract(rf"\bbetween\s+{year}\s+and\s+{year}\b", 1).cast(pl.Int32),
        p.str.extract(rf"\b{year}\s*(?:-|–|to)\s*{year}\b", 1).cast(pl.Int32),
    )
    lookback = pl.coalesce(
        _lookup(p.str.extract(r"\b(?:last|past)\s+(couple of|couple|few|two|three|four|five|"
                              r"several|ten)\s+years\b", 1), _RELATIVE),
        p.str.extract(r"\b(?:last|past)\s+(\d{1,2})\s+years\b", 1).cast(pl.Int32),
        pl.when(p.str.contains(r"\b(?:recent|newest|latest|brand[- ]new|new releases?|"
                               r"just came out|this year|last year)\b")).then(2),
    )
    older = p.str.contains(r"\b(?:old|older|classic|vintage|golden[- ]age|oldies?)\s+"
                           rf"(?:{'|'.join([*map(re.escape, nouns), 'one', 'stuff', 'classic'])})"
                           r"s?\b|\bvintage\b|"
                           r"\bgolden[- ]age\b|\boldies\b")
    return [before.alias("year_hi"), after.alias("year_lo"), lookback.alias("year_back"),
            older.alias("year_old")]


def _year_bounds(out: dict[str, np.ndarray], now: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) years per request from `_year_exprs`' columns (as floats, NaN where
    null); relative ones anchored at the request's time."""
    lo, hi = out["year_lo"].copy(), out["year_hi"].copy()
    if now is not None:
        years = (np.asarray(now, dtype=np.int64).astype("datetime64[s]")
                 .astype("datetime64[Y]").astype(np.float64) + 1970)
        back = out["year_back"]
        rel = np.isfinite(back) & np.isnan(lo)
        lo[rel] = years[rel] - back[rel]
        old = (out["year_old"] == 1.0) & np.isnan(hi)
        hi[old] = years[old] - 20
    return lo, hi


def _unit_exprs(column: str, unit: str) -> list[pl.Expr]:
    """The bounds on a numeric attribute with a unit, as columns `<column>_lo`/`_hi`:
    'under $20', 'at least 2 hours'."""
    p = pl.col("low")
    number = r"(\d+(?:\.\d+)?)"
    words = "|".join(_UNIT_WORDS.get(unit, [re.escape(unit) + "s?"]))
    amount = rf"(?:\$\s*{number}|{number}\s*(?:{words})\b)" if unit == "$" else \
        rf"{number}\s*(?:{words})\b"
    hours = r"(\d+(?:\.\d+)?)\s*(?:hours?|hrs?)\b"
    under = r"\b(?:under|less than|below|cheaper than|shorter than|at most|max(?:imum)?|" \
            r"no more than|up to|within)\s*"
    over = r"\b(?:over|more than|above|at least|longer than|minimum|min\.?)\s*"

    def value(prefix: str) -> pl.Expr:
        groups = [p.str.extract(prefix + amount, i).cast(pl.Float64)
                  for i in ((1, 2) if unit == "$" else (1,))]
        if unit == "minutes":
            groups.append(p.str.extract(prefix + hours, 1).cast(pl.Float64) * 60)
        return pl.coalesce(groups)

    return [value(over).alias(f"{column}_lo"), value(under).alias(f"{column}_hi")]


def parse_instructions(texts: list[str], genres: list[str], schema: DomainSchema, *,
                       titles: TitleIndex | None = None,
                       now: np.ndarray | None = None) -> ParsedIntents:
    """The typed intents of `texts`; `titles` links named items, `now` (unix seconds per
    request) anchors relative ranges ('recent')."""
    plan = _plan(schema, tuple(genres))
    out = _prepared(texts)
    # most requests negate nothing: then the negated clauses' phrase search (an automaton
    # built per call, a fifth of a one-request parse) is not run; and most name no number,
    # year or decade: then the time and unit expressions (~25 regular expressions, a third
    # of a one-request parse) are not run either, their no-match values stand in
    negated = bool((out.get_column("neg") != "").any())
    lowered = out.get_column("low").to_list()  # what the expressions read
    dated = not _GATED or any(plan.dated.search(t) for t in lowered)
    # and a title can be named only after a cue ('like X') or before a 'but'
    named = titles is not None and (not _GATED or any(_NAMING.search(t) for t in lowered))
    out = out.select(plan.select(negated, dated) + (TitleIndex.spans() if named else []))
    n = len(genres)
    at = plan.at
    wanted = _hit_matrix(out["pos_hits"].to_list(), at, plan.wanted)
    excluded = _hit_matrix(out["neg_hits"].to_list(), at, plan.excluded)
    # already float64 with NaN for null (the plan's exprs end in to_floats)
    numbers = {c: out.get_column(c).to_numpy() for c in plan.numeric}
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if plan.time_column is not None:
        ranges[plan.time_column] = _year_bounds(numbers, now)
    for column in plan.unit_columns:
        ranges[column] = (numbers[f"{column}_lo"], numbers[f"{column}_hi"])
    ranges = {c: r for c, r in ranges.items() if np.isfinite(r[0]).any()
              or np.isfinite(r[1]).any()}
    mentioned: list[tuple[int, ...]] | None = None
    if named and titles is not None:
        mentioned = titles.mentioned(out["mention_spans"].to_list(), out["opening"].to_list())
    elif titles is not None:
        mentioned = [()] * len(texts)
    return ParsedIntents(
        genres, wanted[:, :n] & ~excluded, out["decade"].to_numpy(), wanted[:, n],
        wanted[:, n + 1], wanted[:, n + 2], excluded, ranges,
        mentioned,
        out["remainder"].to_list(),
        numbers["variety"] == 1.0,
    )


_GATED = True  # False runs every expression whatever the text (tests compare the two)


def _prepared(texts: list[str]) -> pl.DataFrame:
    """The request texts with their lowercased, negated and affirmed parts (`low`, `neg`,
    `pos`), which every parsing expression reads."""
    # eager: a lazy query's optimiser cost a one-request parse more than running it did
    low = pl.col("t").str.to_lowercase()
    return pl.DataFrame({"t": texts}, schema={"t": pl.String}).with_columns(
        low.alias("low"),
        _cued(low).str.extract_all(_NEG_SPAN).list.join(" . ").alias("neg"),
        _cued(low).str.replace_all(_NEG_SPAN, " . ").str.replace_all(
            _AGES, "${1} age").alias("pos"),
    )


@dataclass(frozen=True)
class _Plan:
    """A schema's parsing expressions, built once: building them cost a one-request parse
    as much as running them."""

    schema: DomainSchema  # the one it was built for (plans are found by its id)
    exprs: list[pl.Expr]
    affirmed: list[pl.Expr]  # `exprs` for requests that negate nothing: no negated phrases
    patterns: list[str]
    at: dict[str, int]    # a pattern's row in `wanted` and `excluded`
    wanted: np.ndarray    # patterns x (values + popular, obscure, acclaimed), bool
    excluded: np.ndarray  # patterns x values, bool
    time_column: str | None
    unit_columns: list[str]
    numeric: list[str]    # result columns that leave the query as floats (`to_floats`)
    # a text this does not match has no time or unit bound and no decade: `undated` (and
    # `undated_affirmed`) put those expressions' values for such a text in their place
    dated: re.Pattern[str]
    undated: list[pl.Expr]
    undated_affirmed: list[pl.Expr]

    def select(self, negated: bool, dated: bool) -> list[pl.Expr]:
        if dated:
            return self.exprs if negated else self.affirmed
        return self.undated if negated else self.undated_affirmed


_PLANS: dict[tuple, _Plan] = {}


def _plan(schema: DomainSchema, genres: tuple[str, ...]) -> _Plan:
    key = (id(schema), genres)
    if key in _PLANS and _PLANS[key].schema is schema:
        return _PLANS[key]
    levels = schema.levels
    values = tuple(tuple(schema.phrases(g)) for g in genres)
    groups = (*values, tuple(levels.popular), tuple(levels.obscure),
              tuple(levels.acclaimed or []))
    patterns, wanted = _phrase_table(groups)
    excluded = wanted[:, :len(genres)]
    words = {v: k for k, v in schema.wording.decades.items()}
    short = pl.col("pos").str.extract(_DECADE_SHORT, 1).cast(pl.Int32)
    exprs = [
        pl.col("low"),
        _semantic(pl.col("t")).alias("remainder"),
        pl.coalesce(
            pl.col("pos").str.extract(_DECADE_FULL, 1).cast(pl.Int32),
            pl.when(short.is_not_null()).then(pl.when(short >= 2).then(1900 + short * 10)
                                              .otherwise(2000 + short * 10)),
            _lookup(pl.col("pos").str.extract(r"\b(" + "|".join(words) + r")\b", 1), words)
            if words else pl.lit(None, pl.Int32),
        ).fill_null(0).alias("decade"),
        _phrases_in("pos", patterns), _phrases_in("neg", patterns),
    ]
    variety = [re.escape(p.lower()) for p in schema.wording.variety if p.strip()]
    exprs.append(pl.col("pos").str.contains(rf"\b(?:{'|'.join(variety)})\b").alias("variety")
                 if variety else pl.lit(False).alias("variety"))
    time_ = schema.by_role("time")
    if time_ is not None:
        exprs += _year_exprs(tuple(schema.wording.nouns))
    units = [a for a in schema.of_kind("numeric") if a.role != "time" and a.unit]
    for attr in units:
        exprs += _unit_exprs(attr.column, attr.unit)
    numeric = ["variety", *(["year_hi", "year_lo", "year_back", "year_old"]
                            if time_ is not None else []),
               *(f"{a.column}_{end}" for a in units for end in ("lo", "hi"))]
    # the numeric results leave the query as float64 with NaN for null, float_block's
    # conversion inside the one query (a second query cost a one-request parse ~0.2 ms)
    exprs = [to_floats(e) if e.meta.output_name() in numeric else e for e in exprs]
    affirmed = [pl.lit(None, pl.List(pl.String)).alias("neg_hits")
                if e.meta.output_name() == "neg_hits" else e for e in exprs]
    # the decade, time and unit expressions match only texts with a digit, a decade word
    # or (time) one of _YEAR_CUES; for any other text their value is the empty text's
    cues = [r"\d", *words, *(map(re.escape, _YEAR_CUES) if time_ is not None else [])]
    gated = {"decade", *[c for c in numeric if c != "variety"]}
    blank = _prepared([""]).select([e for e in exprs if e.meta.output_name() in gated])
    constant = {c: pl.lit(blank[c][0], dtype=blank.schema[c]).alias(c) for c in blank.columns}
    plan = _Plan(schema, exprs, affirmed, patterns, {p: i for i, p in enumerate(patterns)},
                 wanted, excluded, time_.column if time_ is not None else None,
                 [a.column for a in units], numeric, re.compile("|".join(cues)),
                 [constant.get(e.meta.output_name(), e) for e in exprs],
                 [constant.get(e.meta.output_name(), e) for e in affirmed])
    if len(_PLANS) > 16:  # a process sees a schema or two; tests build many
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


class TitleIndex:
    """Catalogue titles, normalised for linking what a person types ('the godfather',
    'godfather', 'Godfather, The (1972)' are one title)."""

    def __init__(self, titles: list[str], stop_words: tuple[str, ...] = ()) -> None:
        """`stop_words`: the domain's own words (its nouns, its verb), never a title alone."""
        self.titles = titles
        self.stop = _NOT_TITLES | {w.lower() for p in stop_words for w in p.split()}
        norm = pl.Series(titles, dtype=pl.String).fill_null("").to_frame("t").select(
            _normalise(pl.col("t"))).to_series()
        self.norm = norm.to_list()

    def link(self, span: str) -> int | None:
        """The catalogue row a span starts with, if any title matches it closely: the
        longest word prefix whose fuzzy ratio to a title is at least 90 (one-word titles
        must match exactly and be four letters or more). A span opening with 'a'/'an'
        names a kind of item, not one."""
        from rapidfuzz import fuzz, process

        words = _normalise_text(span).split()
        if words and words[0] in ("a", "an"):  # "a kids' <noun>", "an iron jesus band": kinds
            return None
        while words and words[0] == "the":
            words = words[1:]
        best: int | None = None
        for n in range(1, min(len(words), 8) + 1):
            prefix = " ".join(words[:n])
            if n == 1 and (len(prefix) < 4 or prefix in self.stop):
                continue
            hit = process.extractOne(prefix, self.norm, scorer=fuzz.ratio,
                                     score_cutoff=100 if n == 1 else 90)
            if hit is not None:
                best = int(hit[2])
        return best

    @staticmethod
    def spans() -> list[pl.Expr]:
        """What `mentioned` reads, as columns of the parse's one select: the cued spans
        ('like X') and an opening 'X but'."""
        return [pl.col("low").str.extract_all(_MENTION).alias("mention_spans"),
                pl.col("low").str.extract(_OPENING, 1).alias("opening")]

    def mentioned(self, cued: list[list[str] | None], opening: list[str | None]
                  ) -> list[tuple[int, ...]]:
        """Per request, the rows named after a cue ('like X') or opening an 'X but Y' (the
        columns of `spans`). Spans run to the next punctuation (titles hold 'and': 'Sense
        and Sensibility'); the longest prefix that matches a title wins."""
        out: list[tuple[int, ...]] = []
        for found, first in zip(cued, opening, strict=True):
            rows: list[int] = []
            for match in [*(found or []), *([first] if first else [])]:
                if _NOT_CUED.match(match):
                    continue
                span = re.sub(rf"^(?:[\w']+\s+)?(?:{_MENTION_CUES})\s+", "", match) \
                    if match is not first else match
                row = self.link(span)
                if row is not None and row not in rows:
                    rows.append(row)
            out.append(tuple(rows))
        return out


def _normalise(title: pl.Expr) -> pl.Expr:
    """Lower case, no year or alternative title in brackets, ', The' and a leading article
    dropped, punctuation as spaces."""
    t = title.str.to_lowercase().str.replace_all(r"\([^)]*\)", " ")
    t = t.str.replace(r",\s*(the|a|an|les|la|le|il|das|der|die)\s*$", "")
    t = t.str.replace_all(r"[^a-z0-9 ]", " ").str.replace_all(r"\s+", " ").str.strip_chars()
    return t.str.replace(r"^(the|a|an) ", "")


def _normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9 ]", " ", text.lower())).strip()


def parsed_for(context: object, batch: object, genres: list[str],
               schema: DomainSchema, titles: TitleIndex | None = None) -> ParsedIntents:
    """`parse_instructions` of a batch's instructions, once per batch (the attribute source,
    the features, the constraints and the explanations all read it). The intents depend on
    the requests alone, so they are kept on the batch's requests frame: the batch whose
    history the named items seed (`with_items`) shares it, and a parse with titles linked
    serves a caller that needs none."""
    owner = batch.requests  # type: ignore[attr-defined]
    key = ("parsed", tuple(genres), schema.dataset)
    linked = context.peek(owner, (*key, True))  # type: ignore[attr-defined]
    if linked is not None:
        return linked
    now = owner["timestamp"].to_numpy()

    def parse() -> ParsedIntents:
        parsed = parse_instructions(batch.instructions, genres, schema,  # type: ignore[attr-defined]
                                    titles=titles, now=now)
        context.cached(owner, ("remainder",), lambda: parsed.remainder)  # type: ignore[attr-defined]
        return parsed

    return context.cached(owner, (*key, titles is not None), parse)  # type: ignore[attr-defined]


def remainder_for(context: object, batch: object) -> list[str]:
    """`semantic_text` of a batch's instructions, once per requests frame: what the
    encoder reads; a parse of the same requests has already left it here."""
    return context.cached(  # type: ignore[attr-defined]
        batch.requests, ("remainder",),  # type: ignore[attr-defined]
        lambda: semantic_text(batch.instructions))  # type: ignore[attr-defined]
