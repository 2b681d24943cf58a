"""The domain schema: inferred from an items table of any domain, committed for the known
datasets, and the only place domain words live (a scan of the packages checks that)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from recdata.schema import DomainSchema, infer_schema, known_schema

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(__file__).parent / "data" / "lastfm_items_sample.parquet"


def kinds(schema: DomainSchema) -> dict[str, tuple[str, str | None]]:
    return {a.column: (a.kind, a.role) for a in schema.attributes}


def test_lastfm_items_are_read_for_what_they_are():
    schema = infer_schema("lastfm", pl.read_parquet(SAMPLE))
    assert kinds(schema) == {"title": ("text", "title"),
                             "genres": ("categorical", "categories"),
                             "tags": ("text", None),  # "j-rock (5), visual kei (3), ..."
                             "url": ("identifier", None)}
    # no ratings in the log: no 'acclaimed' level; the generic wording until edited
    assert schema.levels.acclaimed is None
    assert schema.wording.nouns == ["item"]


def test_movielens_items_and_users(movielens):
    schema = infer_schema("ml", movielens.items, movielens.interactions, movielens.users)
    assert kinds(schema) == {"title": ("text", "title"),
                             "genres": ("categorical", "categories"),
                             "year": ("numeric", "time")}
    assert schema.by_role("time").unit == "year"
    assert schema.levels.rating_scale == (1.0, 5.0)
    assert schema.levels.acclaimed_min_mean == 4.0  # three quarters up its own scale
    users = {a.column: a.kind for a in schema.user_attributes}
    assert users["occupation"] == "categorical" and users["age"] == "numeric"


def test_a_product_catalogue_through_bring_your_own(tmp_path):
    """SKUs, a category path, a brand, a price and a description, from CSV files, with an
    inferred schema: requests are worded for the catalogue, the KG links ranges and brands,
    and no identifier or free text becomes an entity."""
    from kg.triples import build_triples
    from recdata.byo import load_custom
    from recdata.instructions import generate_requests
    from recdata.synthetic import make_product_tables

    inter, items = make_product_tables(n_users=60, n_items=80, interactions_per_user=12)
    inter.write_csv(tmp_path / "orders.csv")
    items.write_csv(tmp_path / "products.csv")
    ds = load_custom(tmp_path / "orders.csv", tmp_path / "products.csv", name="shop")
    schema = ds.domain
    assert kinds(schema) == {"sku": ("identifier", None), "name": ("text", "title"),
                             "category": ("categorical", "categories"),
                             "brand": ("categorical", None), "price": ("numeric", None),
                             "description": ("text", None)}
    assert schema.by_role("categories").separator == " > "
    assert next(a for a in schema.attributes if a.column == "price").unit == "$"
    assert ds.text_columns == ("name", "description")
    assert ds.items["price"].dtype == pl.Float64  # typed, not kept as a string
    assert {"Home", "Kitchen", "Knives"} <= set(ds.items["genres"].explode())
    requests = generate_requests(ds)
    intent = requests.filter(pl.col("task") == "intent")["instruction"]
    assert intent.str.contains(r"\bitem\b").any()  # the generic noun, until the schema says
    assert not intent.str.contains(r"(?i)\bmovie|\bfilm|\bwatch").any()
    triples = build_triples(ds)
    relations = set(triples["relation"])
    assert {"has_category", "has_brand", "has_price", "interacted"} <= relations
    assert not triples["tail"].str.starts_with("sku:").any()
    prices = triples.filter(pl.col("relation") == "has_price")["tail"]
    assert prices.n_unique() == 5  # quantile bands, not one entity per price


def test_the_committed_schemas_load_and_round_trip():
    for path in sorted((ROOT / "configs" / "schemas").glob("*.json")):
        schema = DomainSchema.load(path)
        assert DomainSchema.model_validate(json.loads(schema.to_json())) == schema
        assert schema.dataset == path.stem
    music = known_schema("lastfm")
    assert music.wording.verb == "listen to"
    assert music.wording.fill(music.wording.history_label) == "recently listened to"


def test_requests_explanations_and_prompt_speak_the_schema():
    from ranking.rerank.llm import LLMRerankConfig, build_prefix, in_domain_words
    from recdata.instructions import phrasing_split

    music = known_schema("lastfm")
    templates = phrasing_split(42, 2 / 3, music)["template"]
    assert templates.str.contains("listen to").any()
    words = in_domain_words(LLMRerankConfig(), music)
    prefix = build_prefix("some jazz", ["Miles Davis"], system_text=words.system_text,
                          history_label=words.history_label)
    assert "music recommender" in prefix and 'Recently listened to: "Miles Davis"' in prefix


def test_a_bad_schema_file_is_one_clear_error(tmp_path):
    from recdata.errors import ConfigError

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"dataset": "x", "attributes": [
        {"column": "a", "kind": "categorical", "role": "categories"},
        {"column": "b", "kind": "categorical", "role": "categories"}]}))
    with pytest.raises(ConfigError, match="more than one attribute has role 'categories'"):
        DomainSchema.load(path)
    path.write_text(json.dumps({"dataset": "x", "attributes": [{"column": "a",
                                                                "kind": "colour"}]}))
    with pytest.raises(ConfigError, match="is not a valid schema"):
        DomainSchema.load(path)
    with pytest.raises(ConfigError, match="instructrank data schema"):
        DomainSchema.load(tmp_path / "missing.json")


# Words of one domain. The MovieLens reader (recdata/movielens.py) is exempt: it parses that
# dataset's own files, whose genre names are data.
DOMAIN_WORDS = re.compile(r"\b(movies?|films?|watch(?:ed|ing|es)?|cinema|viewing|actors?|"
                          r"directors?)\b", re.I)
PACKAGES = ("recdata", "encoders", "feature_repo", "featurestore", "kg", "ranking", "serve")
EXEMPT = {"recdata/movielens.py"}


def test_no_domain_words_in_code():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in EXEMPT:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if DOMAIN_WORDS.search(line):
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "domain words belong in configs/schemas/:\n" + "\n".join(found)


def test_a_schema_pickled_by_an_earlier_version_loads_with_the_new_fields():
    """Fitted candidate sources pickle the catalogue and its schema. A schema pickled
    before a field existed must come back with that field at its default, not raise
    AttributeError in the middle of a request (`Wording.variety` did)."""
    import pickle

    schema = known_schema("movielens-100k")
    assert schema is not None and schema.wording.variety
    old = pickle.loads(pickle.dumps(schema))
    del old.wording.__dict__["variety"]  # as a Wording pickled before the field existed
    with pytest.raises(AttributeError):
        _ = old.wording.variety
    back = pickle.loads(pickle.dumps(old))
    assert back.wording.variety == type(schema.wording).model_fields["variety"].get_default(
        call_default_factory=True)
    assert back.model_dump(exclude={"wording"}) == schema.model_dump(exclude={"wording"})
