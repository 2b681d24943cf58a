"""Requests as people write them: exclusions, ranges, named items, sessions — read into one
typed intent (ranking.intent_parser) and honoured by the online path."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ranking.intent_parser import TitleIndex, parse_instructions, semantic_text

NOW = 893_286_638  # 1998-04-22, the end of ML-100k


@pytest.fixture(scope="module")
def ml(movielens):
    genres = sorted(set(movielens.items["genres"].explode().drop_nulls()))
    return movielens, genres, TitleIndex(movielens.items["title"].to_list())


def parse(ml, *texts):
    ds, genres, titles = ml
    p = parse_instructions(list(texts), genres, ds.domain, titles=titles,
                           now=np.full(len(texts), NOW))
    names = ds.items["title"].to_list()
    return [{"want": [g for g, m in zip(genres, p.genre_mask[i], strict=True) if m],
             "not": [g for g, m in zip(genres, p.exclusions[i], strict=True) if m],
             "decade": int(p.decade[i]),
             "years": tuple(p.ranges.get("year", (np.full(len(texts), np.nan),) * 2)[k][i]
                            for k in (0, 1)),
             "named": [names[r] for r in p.mentioned[i]], "rest": p.remainder[i]}
            for i in range(len(texts))]


def test_exclusions_are_not_wants(ml):
    a, b, c, d = parse(ml, "no horror please", "a comedy, nothing too scary",
                       "anything but a romance, maybe an action film",
                       "I'm not in the mood for a western but a thriller would do")
    assert a["not"] == ["Horror"] and a["want"] == []
    assert b["want"] == ["Comedy"] and b["not"] == ["Horror"]
    assert c["want"] == ["Action"] and c["not"] == ["Romance"]
    assert d["want"] == ["Thriller"] and d["not"] == ["Western"]


def test_ranges_absolute_and_relative_and_ages_are_not_decades(ml):
    before, between, recent, couple, age, decade = parse(
        ml, "a film before 1980", "between 1970 and 1985, a thriller", "something recent",
        "from the last couple of years", "a drama about a woman in her 50s", "a light 90s comedy")
    assert before["years"][1] == 1979 and np.isnan(before["years"][0])
    assert between["years"] == (1970, 1985) and between["want"] == ["Thriller"]
    assert recent["years"][0] == 1996 and couple["years"][0] == 1996
    assert age["decade"] == 0 and decade["decade"] == 1990


def test_named_items_are_linked_loosely(ml):
    alien, fargo, monkeys, plain = parse(
        ml, "something like Alien but funnier", "i loved fargo, more of that please",
        "Twelve Monkeys but even stranger", "I'd like a comedy tonight")
    assert alien["named"] == ["Alien (1979)"] and fargo["named"] == ["Fargo (1996)"]
    assert monkeys["named"] == ["Twelve Monkeys (1995)"] and plain["named"] == []


def test_semantic_text_drops_what_is_ruled_out_and_keeps_the_rest_verbatim():
    assert semantic_text(["a comedy, nothing too scary"]) == ["a comedy"]
    assert semantic_text(["no horror please"]) == ["something"]
    kept = "Recommend me something to watch tonight."
    assert semantic_text([kept]) == [kept]


def test_a_chunk_of_intents_is_the_same_as_parsing_it_alone(ml):
    ds, genres, titles = ml
    texts = ["no horror please", "like Alien", "before 1980", "a 90s comedy"]
    whole = parse_instructions(texts, genres, ds.domain, titles=titles, now=np.full(4, NOW))
    part = parse_instructions(texts[1:3], genres, ds.domain, titles=titles, now=np.full(2, NOW))
    cut = whole.rows(1, 3)
    assert (cut.genre_mask == part.genre_mask).all() and cut.mentioned == part.mentioned
    np.testing.assert_array_equal(cut.ranges["year"][1], part.ranges["year"][1])
    # a batch where nothing is negated skips the negated phrases' search: the same intents
    assert not part.exclusions.any() and whole.exclusions[0].any()
    for i, text in enumerate(texts):
        alone = parse_instructions([text], genres, ds.domain, titles=titles,
                                   now=np.full(1, NOW))
        one = whole.rows(i, i + 1)
        for field in ("genre_mask", "exclusions", "decade", "variety", "popular"):
            np.testing.assert_array_equal(getattr(one, field), getattr(alone, field))
        assert one.mentioned == alone.mentioned and alone.ranges.keys() <= one.ranges.keys()
        for column, (lo, hi) in one.ranges.items():  # a batch keeps a column any row bounds
            unbounded = (np.full(1, np.nan), np.full(1, np.nan))
            np.testing.assert_array_equal(alone.ranges.get(column, unbounded)[0], lo)
            np.testing.assert_array_equal(alone.ranges.get(column, unbounded)[1], hi)


def _genres_of(recommender, items):
    table = recommender.catalogue.items.select("item_id", "genres")
    ids = [i.item_id for i in items]
    return table.filter(pl.col("item_id").is_in(ids))["genres"].to_list()


def test_no_horror_returns_no_horror_and_says_so(recommender):
    out = recommender.recommend(None, "no horror please", 10, now="data-end")
    assert out.understood["excluded"] == ["Horror"]
    assert not any("Horror" in g for g in _genres_of(recommender, out.items))
    assert all(any(r.text.startswith("not horror") for r in i.reasons) for i in out.items)
    scary = recommender.recommend(None, "a horror film", 10, now="data-end")
    assert any("Horror" in g for g in _genres_of(recommender, scary.items))


def test_too_few_items_fit_so_the_rest_are_filled_and_flagged(recommender):
    """Every item of the synthetic catalogue has a genre from this list: the list is still
    k long, the items that break the request last, each saying so."""
    every = "nothing action or comedy or drama or horror or romance or sci-fi or " \
            "documentary or animation"
    out = recommender.recommend(None, every, 5, now="data-end")
    assert len(out.items) == 5
    assert all(any("too few items fit" in r.text for r in i.reasons) for i in out.items)


def test_a_session_history_feeds_the_sources_and_is_not_recommended_back(recommender):
    from recdata.errors import InvalidRequestError

    ids = recommender.catalogue.items["item_id"].to_list()[:3]
    out = recommender.recommend(None, "more like these", 10, now="data-end", history=ids)
    assert not out.cold_start and not {i.item_id for i in out.items} & set(ids)
    with pytest.raises(InvalidRequestError, match="does not hold"):
        recommender.recommend(None, "more", 3, history=[ids[0], 10**9])


def test_a_named_item_is_not_recommended_back_and_is_a_reason(recommender):
    titles = recommender.catalogue.items["title"].to_list()
    named = titles[7]
    out = recommender.recommend(None, f"something like {named} but different", 10,
                                now="data-end")
    key = recommender.item_keys[7]
    assert out.understood["mentioned"] == [key]
    assert key not in {i.item_id for i in out.items}
    assert any(r.text == f"like {named}, which you mentioned" for i in out.items
               for r in i.reasons)


def test_http_takes_a_session_and_reports_what_it_understood(client):
    body = {"instruction": "no horror, before 2000", "k": 5, "history": [1, 2]}
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["understood"]["excluded"] == ["Horror"] and got["cold_start"] is False
    assert got["understood"]["ranges"]["year"] == [None, 1999.0]
    bad = client.post("/recommend", json={**body, "history": [1, "no-such-item"]})
    assert bad.status_code == 422 and "no-such-item" in bad.json()["detail"]


@pytest.fixture(scope="module")
def client(trained):
    from fastapi.testclient import TestClient

    from ranking.recommend import Recommender, RecommenderConfig
    from serve.http import create_app

    cfg = RecommenderConfig(repo=trained["repo"], data_dir=trained["data"])
    with TestClient(create_app(lambda: Recommender.load(cfg))) as c:
        yield c


def test_skipping_the_number_expressions_changes_no_intent(ml, monkeypatch):
    """Texts with no digit, decade word or year cue skip the decade, time and unit
    expressions, and texts with no title cue the title spans (their no-match values stand
    in): every field of the intents is the same as with all of them run, request by request
    and as one batch, on the generated and hand-written requests, texts at the gate's edge,
    and a schema with price and runtime."""
    import dataclasses
    from pathlib import Path

    import ranking.intent_parser as ip
    from recdata.instructions import InstructionConfig, generate_requests
    from recdata.schema import Attribute

    ds, genres, titles = ml
    root = Path(__file__).resolve().parents[1] / "bench" / "requests"
    written = [t for f in sorted(root.glob("*.csv"))
               for t in pl.read_csv(f)["instruction"].to_list()]
    made = generate_requests(ds, InstructionConfig())["instruction"].unique(
        maintain_order=True).head(300).to_list()
    edge = ["", "a good comedy", "something from the eighties", "a film from 1994",
            "released after 2000", "recent stuff", "an oldie please", "a golden age musical",
            "the last couple of years", "brand-new releases", "nothing from the 80s",
            "a man in his 50s", "late-90s thrillers", "films from the ٩٠s", "under 2 hours",
            "at least 90 minutes and under $20", "no westerns older than 1960", "Old Yeller",
            "WHAT CAME OUT LATELY", "a CLASSIC", "not newer than 2.5", "vintage, not new",
            # each cue alone, where it sets a value
            "hits of the last few years", "something recent", "the newest ones",
            "the latest comedy", "brand new stuff", "new releases please",
            "what just came out", "an old movie", "older films", "oldies", "a classic film",
            "vintage", "golden age musicals",
            # titles: after a cue, or opening an 'X but Y'
            "something like Toy Story", "Heat but funnier", "I loved Fargo", "fans of Alien",
            "in the vein of Brazil", "I feel like a comedy", "Butch Cassidy"]
    priced = ds.domain.model_copy(update={"attributes": [
        *ds.domain.attributes, Attribute(column="price", kind="numeric", unit="$"),
        Attribute(column="runtime", kind="numeric", unit="minutes")]})

    def parsed(texts, schema, gated):
        monkeypatch.setattr(ip, "_GATED", gated)
        return parse_instructions(texts, genres, schema, titles=titles,
                                  now=np.full(len(texts), NOW))

    def same(a, b):
        for f in dataclasses.fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if isinstance(x, dict):
                assert x.keys() == y.keys(), f.name
                for c in x:
                    assert all(np.array_equal(u, v, equal_nan=True)
                               for u, v in zip(x[c], y[c], strict=True)), (f.name, c)
            elif isinstance(x, np.ndarray):
                assert x.dtype == y.dtype and np.array_equal(x, y), f.name
            else:
                assert x == y, f.name

    for schema, texts in ((ds.domain, written + made + edge), (priced, edge + written[:40])):
        same(parsed(texts, schema, True), parsed(texts, schema, False))
        skipped = [t for t in texts if not ip._plan(schema, tuple(genres)).dated.search(
            t.lower())]
        assert len(skipped) > len(texts) // 4  # the gate does skip plain requests
        for t in skipped[:60] + edge:
            same(parsed([t], schema, True), parsed([t], schema, False))
