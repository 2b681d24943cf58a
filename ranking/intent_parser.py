"""Read attribute constraints back out of free-text instructions.

The parser sees only the text. It knows the dataset's domain schema (`recdata.schema`: the
phrases of each category value, the decade words, the level phrases), so on held-out
phrasings it still finds category words, decades and popularity/rating levels; what it
cannot do is understand wording outside that vocabulary, which is why embedding models exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from recdata.schema import DomainSchema

_DECADE_FULL = r"\b(1[89]\d0|20\d0)s\b"
_DECADE_SHORT = r"(?:^|[^\d])'?(\d)0s\b"


@dataclass(frozen=True)
class ParsedIntents:
    genres: list[str]           # vocabulary order of `genre_mask` columns
    genre_mask: np.ndarray      # requests x genres, bool
    decade: np.ndarray          # requests, int (0 = none asked)
    popular: np.ndarray         # bool
    obscure: np.ndarray         # bool
    acclaimed: np.ndarray       # bool


def _any_phrase(phrases: list[str]) -> pl.Expr:
    if not phrases:
        return pl.lit(False)
    pattern = "|".join(re.escape(p) for p in phrases)
    return pl.col("t").str.contains(rf"(?i)(^|[^a-z-])({pattern})($|[^a-z-])")


def parse_instructions(texts: list[str], genres: list[str],
                       schema: DomainSchema) -> ParsedIntents:
    frame = pl.DataFrame({"t": texts}, schema={"t": pl.String})
    words = {v: k for k, v in schema.wording.decades.items()}
    levels = schema.levels
    short = pl.col("t").str.extract(_DECADE_SHORT, 1).cast(pl.Int32)
    parsed = frame.select(
        *[_any_phrase(schema.phrases(g)).alias(f"g{i}") for i, g in enumerate(genres)],
        pl.coalesce(
            pl.col("t").str.extract(_DECADE_FULL, 1).cast(pl.Int32),
            pl.when(short.is_not_null()).then(pl.when(short >= 2).then(1900 + short * 10)
                                              .otherwise(2000 + short * 10)),
            pl.col("t").str.to_lowercase().str.extract(
                r"\b(" + "|".join(words) + r")\b", 1).replace_strict(
                list(words), list(words.values()), default=None, return_dtype=pl.Int32)
            if words else pl.lit(None, pl.Int32),
        ).fill_null(0).alias("decade"),
        _any_phrase(levels.popular).alias("popular"),
        _any_phrase(levels.obscure).alias("obscure"),
        _any_phrase(levels.acclaimed or []).alias("acclaimed"),
    )
    mask = (parsed.select(f"g{i}" for i in range(len(genres))).to_numpy().astype(bool)
            if genres else np.zeros((len(texts), 0), dtype=bool))
    return ParsedIntents(
        genres, mask, parsed["decade"].to_numpy(), parsed["popular"].to_numpy(),
        parsed["obscure"].to_numpy(), parsed["acclaimed"].to_numpy(),
    )


def parsed_for(context: object, batch: object, genres: list[str],
               schema: DomainSchema) -> ParsedIntents:
    """`parse_instructions` of a batch's instructions, once per batch (the attribute source,
    the features and the explanations all read it)."""
    return context.cached(  # type: ignore[attr-defined]
        batch, ("parsed", tuple(genres), schema.dataset),
        lambda: parse_instructions(batch.instructions, genres, schema))  # type: ignore[attr-defined]
