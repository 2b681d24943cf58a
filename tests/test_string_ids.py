"""Ids as they come: a shop's SKUs and account names go in, are numbered internally, and come
back out of every output (the Python API, HTTP, the CLI, the evaluation database) as they
went in, including users a refresh adds while the service runs."""

from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import polars as pl
import pytest

from recdata.errors import DataValidationError, FeatureStoreError
from recdata.ids import IdMap, needs_keys


def test_only_canonical_integers_stay_integers():
    assert not needs_keys(pl.Series(["1", "42", "-7"]))
    assert not needs_keys(pl.Series([1, 2]))
    for keys in (["1", "042"], ["+5"], ["SKU-1"], [str(2**64)]):
        assert needs_keys(pl.Series(keys)), keys  # would not print back as they came


def test_the_map_numbers_keys_in_order_and_only_appends():
    ids = IdMap.build(pl.Series(["b", "a", "c"]), pl.Series(["u2", "u1", "u2"]))
    assert ids.items.sort("item_id")["item_key"].to_list() == ["a", "b", "c"]
    assert ids.keys(np.array([3, 1]), "item") == ["c", "a"]
    assert ids.id_of(" u2 ", "user") == 2 and ids.id_of("nobody", "user") is None
    grown, added = ids.with_users(pl.Series(["u0", "u1", "u9"]))
    assert added == 2
    assert grown.id_of("u1", "user") == 1 and grown.id_of("u2", "user") == 2  # unchanged
    assert {grown.id_of("u0", "user"), grown.id_of("u9", "user")} == {3, 4}
    plain = IdMap()  # integer ids: no map, out-of-range numbers are unknown, not errors
    assert plain.id_of(42, "user") == 42 and plain.id_of("42", "user") == 42
    assert plain.id_of(10**25, "user") is None and plain.id_of("x", "user") is None


def test_string_ids_load_and_bad_ones_are_reported_with_their_line(tmp_path):
    from recdata.byo import load_custom

    (tmp_path / "items.csv").write_text("item_id,title\nB00X,Kettle\nA-17,Knife\n")
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\nann,B00X,10\nbob,A-17,11\n")
    ds = load_custom(tmp_path / "i.csv", tmp_path / "items.csv")
    assert ds.interactions.schema["item_id"] == pl.Int64
    assert ds.ids.keys(ds.items["item_id"].to_numpy(), "item") == ["A-17", "B00X"]
    assert ds.ids.keys(ds.interactions["user_id"].to_numpy(), "user") == ["ann", "bob"]
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\nann,B00X,10\n,A-17,11\n"
                                    "bob,ZZZ,12\n")
    with pytest.raises(DataValidationError) as info:
        load_custom(tmp_path / "i.csv", tmp_path / "items.csv")
    found = {(p.row, p.column, p.message) for p in info.value.problems}
    assert found == {(3, "user_id", "null user_id"),
                     (4, "item_id", "item_id ZZZ is not in the items file")}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The product catalogue keyed by SKU, its customers by account name, through files,
    features, training and a loaded service."""
    from featurestore.build import FeatureBuildConfig, build_features
    from featurestore.store import PACKAGE_REPO
    from ranking.evaluation.config import EvalConfig
    from ranking.ltr.model import LTRConfig
    from ranking.recommend import Recommender, RecommenderConfig
    from ranking.train import train
    from recdata.byo import load_custom
    from recdata.synthetic import make_product_tables

    root = tmp_path_factory.mktemp("shop")
    inter, items = make_product_tables(n_users=80, n_items=90, interactions_per_user=14, seed=3)
    sku = dict(zip(items["item_id"].to_list(), items["sku"].to_list(), strict=True))
    items = items.with_columns(pl.col("sku").alias("item_id")).drop("sku")
    inter = inter.with_columns(
        pl.format("acct-{}", pl.col("user_id") * 7919 % 100_003).alias("user_id"),
        pl.col("item_id").replace_strict(sku))
    inter.write_csv(root / "orders.csv")
    items.write_csv(root / "products.csv")
    ds = load_custom(root / "orders.csv", root / "products.csv", name="shop")
    repo, data = root / "repo", root / "data"
    repo.mkdir()
    shutil.copy(PACKAGE_REPO / "feature_store.yaml", repo / "feature_store.yaml")
    build_features(FeatureBuildConfig(dataset="shop", repo=repo, data_dir=data),
                   dataset=ds, progress=False)
    cfg = EvalConfig(dataset="shop", models=["popularity", "ltr_no_kg"], feature_repo=repo,
                     data_dir=data, results_dir=root / "results",
                     ltr=LTRConfig(n_estimators=40, early_stopping_rounds=10))
    trained = train(cfg, dataset=ds, progress=False)
    model = data / "models" / trained.manifest.models["ltr_no_kg"]
    rec = Recommender.load(RecommenderConfig(model=model, repo=repo, data_dir=data))
    return {"root": root, "ds": ds, "inter": inter, "items": items, "repo": repo,
            "data": data, "cfg": cfg, "rec": rec, "model": model}


def test_string_ids_round_trip(shop):
    rec, inter = shop["rec"], shop["inter"]
    user = inter["user_id"][0]
    seen = set(inter.filter(pl.col("user_id") == user)["item_id"])
    out = rec.recommend(user, "something for the kitchen", 10, now="data-end")
    assert not out.cold_start and out.user_id == user
    returned = [i.item_id for i in out.items]
    assert all(isinstance(i, str) and i.startswith("SKU-") for i in returned)
    assert set(returned) <= set(shop["items"]["item_id"]) and not set(returned) & seen
    assert rec.recommend("acct-nobody", "a kettle", 3).cold_start  # unknown: cold start

    from fastapi.testclient import TestClient

    from serve.http import create_app

    with TestClient(create_app(lambda: rec)) as client:
        body = client.post("/recommend", json={"user_id": user, "instruction": "a gift",
                                               "k": 5, "now": out.now}).json()
    assert body["user_id"] == user and body["cold_start"] is False
    assert all(i["item_id"].startswith("SKU-") for i in body["items"])


def test_the_cli_speaks_the_shops_ids(shop):
    from typer.testing import CliRunner

    from serve.cli import app

    user = shop["inter"]["user_id"][1]
    args = ["--model", str(shop["model"]), "--repo", str(shop["repo"]),
            "--data-dir", str(shop["data"])]
    out = CliRunner().invoke(app, ["recommend", "a knife", "--user", user, "-k", "3",
                                   "--json", "--now", "data-end", *args])
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout[out.stdout.index("{"):])
    assert body["user_id"] == user and not body["cold_start"]
    assert all(i["item_id"].startswith("SKU-") for i in body["items"])
    sku = body["items"][0]["item_id"]
    look = CliRunner().invoke(app, ["features", "lookup", "--user", user, "--items", sku,
                                    "--repo", str(shop["repo"])])
    assert look.exit_code == 0 and "known" in look.output and sku in look.output


def test_the_cli_ranks_a_file_of_requests_with_one_load(shop, tmp_path):
    """`recommend --requests FILE`: every row answered in order (a known user, the
    cold-start path for an empty id, a session history), each as `recommend` alone would."""
    from typer.testing import CliRunner

    from serve.cli import app

    user = shop["inter"]["user_id"][1]
    sku = shop["items"]["item_id"][0]
    file = tmp_path / "asks.csv"
    pl.DataFrame({"user_id": [user, None, None], "instruction": ["a knife", "a kettle", "more"],
                  "history": [None, None, sku]}).write_csv(file)
    args = ["--model", str(shop["model"]), "--repo", str(shop["repo"]),
            "--data-dir", str(shop["data"]), "-k", "3", "--json", "--now", "data-end"]
    out = CliRunner().invoke(app, ["recommend", "--requests", str(file), *args])
    assert out.exit_code == 0, out.output
    bodies = [json.loads(chunk) for chunk in _json_objects(out.stdout)]
    assert [b["instruction"] for b in bodies] == ["a knife", "a kettle", "more"]
    assert bodies[0]["user_id"] == user and not bodies[0]["cold_start"]
    assert bodies[1]["cold_start"] and len(bodies[1]["items"]) == 3
    assert sku not in [i["item_id"] for i in bodies[2]["items"]], "the session's item"
    alone = CliRunner().invoke(app, ["recommend", "a knife", "--user", user, *args])
    assert json.loads(alone.stdout[alone.stdout.index("{"):])["items"] == bodies[0]["items"]

    for rows, message in (({"user": [user], "instruction": ["x"]}, "lacks column"),
                          ({"user_id": [user, user], "instruction": ["x", " "]}, "line(s) [3]")):
        pl.DataFrame(rows).write_csv(file)
        bad = CliRunner().invoke(app, ["recommend", "--requests", str(file), *args])
        assert bad.exit_code == 1 and message in bad.output, bad.output
    both = CliRunner().invoke(app, ["recommend", "a knife", "--requests", str(file), *args])
    assert both.exit_code == 1 and "one of them" in both.output


def _json_objects(text: str) -> list[str]:
    """The top-level JSON objects printed one after another."""
    decoder, out, at = json.JSONDecoder(), [], text.find("{")
    while at != -1:
        obj, end = decoder.raw_decode(text, at)
        out.append(json.dumps(obj))
        at = text.find("{", end)
    return out


def test_evaluation_tables_join_back_to_the_shops_ids(shop):
    from ranking.evaluation.harness import evaluate
    from ranking.evaluation.report import sample_recommendations

    result = evaluate(shop["cfg"], dataset=shop["ds"], progress=False)
    paths = result.save(update_quality=False)
    with duckdb.connect(str(paths["duckdb"]), read_only=True) as con:
        keys = con.execute("SELECT DISTINCT k.item_key FROM rankings r JOIN item_ids k "
                           "USING (item_id)").fetchall()
        users = con.execute("SELECT count(*) FROM requests q JOIN user_ids u USING (user_id)"
                            ).fetchone()[0]
    assert keys and all(k.startswith("SKU-") for (k,) in keys)
    assert users == result.requests.height
    samples = sample_recommendations(result.rankings, result.requests, result.items,
                                     result.metrics, task="history", ids=result.ids)
    assert samples.height and samples["user_id"].str.starts_with("acct-").all()


def test_a_refresh_numbers_new_accounts_and_a_running_service_finds_them(shop):
    """Last in this file: the refresh moves the repo past the data the others read."""
    from featurestore.build import refresh_features

    rec, items = shop["rec"], shop["items"]
    end = int(shop["inter"]["timestamp"].max()) + 10 * 86400  # past the materialized day
    bought = items["item_id"][:3].to_list()
    new = pl.DataFrame({"user_id": ["new-account"] * 3, "item_id": bought,
                        "timestamp": [end + 10, end + 20, end + 30]})
    assert rec.recommend("new-account", "a kettle", 3).cold_start
    with pytest.raises(FeatureStoreError, match="unknown items: \\['NOPE'\\]"):
        refresh_features(shop["repo"], new.with_columns(pl.lit("NOPE").alias("item_id")),
                         data_dir=shop["data"])
    refresh_features(shop["repo"], new, data_dir=shop["data"])
    out = rec.recommend("new-account", "something else", 10, now=end + 60)
    assert not out.cold_start  # found in the map and the store the refresh wrote
    assert not {i.item_id for i in out.items} & set(bought)  # and their history excluded
    before = IdMap.load(shop["repo"] / "data" / "ids")
    assert before.id_of(shop["inter"]["user_id"][0], "user") == \
        shop["ds"].ids.id_of(shop["inter"]["user_id"][0], "user")  # old numbers unchanged
