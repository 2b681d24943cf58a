"""Generated hostile input (hypothesis): whatever text or JSON a caller sends, the cleaner,
the request model and the parser either answer within bounds or refuse it with an error
that names what is wrong; nothing else escapes (no 500 behind them)."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ranking.intent_parser import TitleIndex, parse_instructions
from ranking.sanitize import clean_instruction
from recdata.errors import InvalidRequestError
from serve.http import RecommendRequest

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
# any code point a str can hold: control, format, private-use and lone surrogates (JSON's
# "\ud800" decodes to one) included
ANY_TEXT = st.text(st.characters(exclude_categories=[]), max_size=400)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12)
FIELDS = ["user_id", "instruction", "k", "now", "history", "debug", "instructions"]


@SETTINGS
@given(ANY_TEXT, st.integers(1, 500))
def test_clean_instruction_is_bounded_clean_text_or_a_named_refusal(text, limit):
    try:
        out = clean_instruction(text, limit)
    except InvalidRequestError as exc:
        assert "instruction" in str(exc)
        return
    assert 0 < len(out) <= limit and out == out.strip() and "  " not in out
    assert not [c for c in out if c != " " and unicodedata.category(c)[0] in "CZ"]


@SETTINGS
@given(JSON.filter(lambda v: not isinstance(v, str)))
def test_a_non_string_instruction_is_refused_by_name(value):
    with pytest.raises(InvalidRequestError, match="must be a string"):
        clean_instruction(value)


def test_a_megabyte_instruction_is_refused_before_it_is_read():
    with pytest.raises(InvalidRequestError, match="1000000 characters"):
        clean_instruction("\x00a" * 500_000)


@SETTINGS
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6))
def test_any_json_body_is_a_request_or_errors_that_name_fields(body):
    """NaN and infinite numbers, nested JSON, ids beyond int64, negative or huge k, unknown
    fields: a RecommendRequest, or a ValidationError whose every error has a location."""
    try:
        request = RecommendRequest.model_validate(body)
    except ValidationError as exc:
        assert exc.errors() and all(e["loc"] for e in exc.errors())
        return
    assert 1 <= request.k <= 100 and request.instruction
    assert set(body) <= set(RecommendRequest.model_fields)


@pytest.fixture(scope="module")
def ml(movielens):
    genres = sorted(set(movielens.items["genres"].explode().drop_nulls()))
    return movielens, genres, TitleIndex(movielens.items["title"].to_list())


@SETTINGS
@given(st.lists(ANY_TEXT, min_size=1, max_size=4))
def test_the_parser_reads_any_cleaned_text_into_a_well_formed_intent(ml, raw):
    """What the cleaner lets through (the online path's order: clean, then parse)."""
    ds, genres, titles = ml
    texts = []
    for text in raw:
        try:
            texts.append(clean_instruction(text))
        except InvalidRequestError:
            continue
    if not texts:
        return
    parsed = parse_instructions(texts, genres, ds.domain, titles=titles,
                                now=np.full(len(texts), 893_286_638))
    n = len(texts)
    assert parsed.genre_mask.shape == parsed.exclusions.shape == (n, len(genres))
    assert not (parsed.genre_mask & parsed.exclusions).any(), "excluded is never wanted"
    assert len(parsed.remainder) == n and all(isinstance(r, str) for r in parsed.remainder)
    assert all(0 <= row < len(titles.titles) for rows in parsed.mentioned for row in rows)
    for lo, hi in parsed.ranges.values():
        assert lo.shape == hi.shape == (n,)
