"""The feature contract: each ranker feature declared once (feature_repo/ranker.py), and the
feature list, the Feast services, assembly, ablations and explanations derived from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feature_repo import ranker as declared
from ranking.ltr import features as lf
from ranking.ltr.features import FeatureContractError
from recdata.schema import DomainSchema

REPO = Path(__file__).resolve().parents[1]


def test_the_declarations_are_consistent_and_derive_everything():
    lf.check_contract()
    assert len(set(lf.FEATURES)) == len(lf.FEATURES)
    user, item = lf.store_columns(lf.FEATURES)
    assert "user_history__n_interactions" in user and "item_stats__popularity_7d" in item
    # an ablation drops exactly its tag's features, and its service reads only what is left
    no_text = lf.feature_names("no_text")
    assert "profile_cosine" not in no_text and "src_embedding" not in no_text
    assert "user_profile_embedding:embedding" not in declared.service_refs("no_text")
    assert "user_profile_embedding:embedding" in declared.service_refs("full")
    assert declared.service_name("full") != declared.service_name("no_text")
    fams = lf.families()
    assert "item_pop_7d" in fams["item"] and "user_interactions" not in sum(fams.values(), ())


def test_the_definitions_generate_one_service_per_ranker_version():
    from featurestore.store import definitions

    services = definitions().RANKER_SERVICES
    assert set(services) == set(declared.ABLATIONS)
    for ablation, svc in services.items():
        refs = [f"{p.name}:{f.name}" for p in svc.feature_view_projections for f in p.features]
        assert sorted(refs) == sorted(declared.service_refs(ablation))
        assert svc.name == declared.service_name(ablation)


def test_a_declared_feature_reading_an_undeclared_field_is_named(monkeypatch):
    bad = declared.RankerFeature("item_colour", "item", "item", ("item_stats:colour",))
    monkeypatch.setattr(declared, "FEATURES", (*declared.FEATURES, bad))
    lf._ref_entities.cache_clear()
    try:
        with pytest.raises(FeatureContractError, match=r"item_colour.*item_stats:colour"):
            lf.check_contract()
    finally:
        lf._ref_entities.cache_clear()
    unregistered = declared.RankerFeature("item_mood", "item", "item", compute="mood")
    monkeypatch.setattr(declared, "FEATURES", (*declared.FEATURES[:-1], unregistered))
    with pytest.raises(FeatureContractError, match=r"item_mood.*'mood'.*registered"):
        lf.check_contract()


def _tiny_request():
    import scipy.sparse as sp

    from ranking.candidates import Candidates
    from ranking.inputs import RequestBatch

    n_items, k = 4, 3
    batch = RequestBatch(pl.DataFrame({
        "request_id": ["r"], "user_id": [1], "task": ["intent"], "instruction": ["a comedy"],
        "target_idx": [-1], "timestamp": [1_000_000]}),
        sp.csr_matrix((1, n_items), dtype=np.float32), n_items)
    idx = np.array([[0, 1, 2]])
    cands = Candidates(idx, {"popularity": np.ones((1, k))}, {"popularity": np.ones((1, k))},
                       np.ones((1, k), dtype=bool))
    items = lf.ItemTables(np.arange(1, n_items + 1), ["Comedy"],
                          np.array([[True], [False], [True], [False]]), np.full(n_items, -1),
                          *(np.zeros(n_items, dtype=bool),) * 3,
                          np.array([1990.0, 1991.0, np.nan, 1980.0]), None,
                          DomainSchema(dataset="toy"))
    users = pl.DataFrame({"user_history__n_interactions": [3],
                          "user_history__last_interaction_ts": [913_600]})
    item_rows = pl.DataFrame({"item_stats__popularity_7d": [1.0, 2.0, None]})
    return batch, cands, items, users, item_rows


def test_a_declared_feature_whose_inputs_are_missing_fails_loudly_never_a_nan_column():
    batch, cands, items, users, item_rows = _tiny_request()
    frame = lf.assemble(batch, cands, users, item_rows, items, features=[
        "user_interactions", "user_days_since_last", "item_pop_7d", "item_year",
        "src_popularity", "attr_genre_match"])
    assert frame["user_days_since_last"].to_list() == [1.0] * 3
    assert frame["item_pop_7d"].to_list()[:2] == [1.0, 2.0]
    assert np.isnan(frame["item_pop_7d"][2])  # a null value is a value: unknown item
    assert frame["attr_genre_match"].to_list() == [1.0, 0.0, 1.0]
    cases = {
        "item_pop_30d": "does not serve item_stats:popularity_30d",
        "src_cf": "candidate source 'cf' is not configured",
        "kg_user_score": "no knowledge-graph embeddings",
        "user_mean_rating": "does not serve user_history:mean_rating",
        "item_favourite_colour": "does not declare: item_favourite_colour",
    }
    for feature, why in cases.items():
        with pytest.raises(FeatureContractError) as err:
            lf.assemble(batch, cands, users, item_rows, items, features=["item_year", feature])
        assert feature in str(err.value) and why in str(err.value)


EDITS = {  # the three edits of "adding a feature", as a data scientist would make them
    "feature_repo/definitions.py": (
        '''        Field(name="last_interaction_ts", dtype=Int64),
    ],
)

item_serving''',
        '''        Field(name="last_interaction_ts", dtype=Int64),
        Field(name="popularity_90d", dtype=Float32,
              description="interaction count decayed with a 90-day half-life, at row time"),
    ],
)

item_serving'''),
    "feature_repo/jobs/items.py": (
        'HALF_LIVES = {"popularity_7d": 7, "popularity_30d": 30}',
        'HALF_LIVES = {"popularity_7d": 7, "popularity_30d": 30, "popularity_90d": 90}'),
    "feature_repo/ranker.py": (
        '''    RankerFeature("item_pop_30d", "item", "item", ("item_stats:popularity_30d",)),''',
        '''    RankerFeature("item_pop_30d", "item", "item", ("item_stats:popularity_30d",)),
    RankerFeature("item_pop_90d", "item", "item", ("item_stats:popularity_90d",)),'''),
}

SCRIPT = '''
import json, shutil, sys
from pathlib import Path

import numpy as np

from ranking.evaluation.config import EvalConfig
from ranking.evaluation.harness import evaluate
from ranking.train import train
from featurestore.build import FeatureBuildConfig, build_features
from featurestore.store import PACKAGE_REPO, FeatureRepo
from ranking.ltr.model import LTRConfig
from ranking.recommend import Recommender, RecommenderConfig, latest_model
from recdata.synthetic import make_synthetic

work, cache = Path(sys.argv[1]), Path(sys.argv[2])
repo, data = work / "repo", work / "data"
repo.mkdir(parents=True)
data.mkdir()
(data / "cache").symlink_to(cache)
for name in ("feature_store.yaml", "feature_store.redis.yaml"):
    shutil.copy(PACKAGE_REPO / name, repo / name)
ds = make_synthetic(n_users=120, n_items=150, interactions_per_user=25, seed=7)
build_features(FeatureBuildConfig(dataset="synthetic", repo=repo, data_dir=data), dataset=ds,
               progress=False)
cfg = EvalConfig(dataset="synthetic", models=["ltr_no_kg"], feature_repo=repo, data_dir=data,
                 results_dir=work / "results",
                 ltr=LTRConfig(n_estimators=60, early_stopping_rounds=20))
train(cfg, dataset=ds, progress=False)
evaluate(cfg, dataset=ds, progress=False)
model_dir = latest_model(data / "models", "ltr_no_kg")
rec = Recommender.load(RecommenderConfig(model=model_dir, repo=repo, data_dir=data))
gain = dict(zip(rec.model.booster.feature_name(),
                rec.model.booster.feature_importance("gain").tolist()))
users = ds.interactions["user_id"].unique().sort().to_list()[:20]
frame = rec.feature_frame(users[0], "a comedy", now="data-end")
said = [r.features for u in users for i in rec.recommend(u, "a comedy", 10,
                                                         now="data-end").items
        for r in i.reasons]
svc = FeatureRepo(repo).store().get_feature_service(rec.model.feature_service)
print(json.dumps({
    "features": rec.model.features, "gain": gain, "service": rec.model.feature_service,
    "service_refs": [f"{p.name}:{f.name}" for p in svc.feature_view_projections
                     for f in p.features],
    "online_columns": frame.columns,
    "online_values": frame["item_pop_90d"].to_list(),
    "explained": [f for f in said if "item_pop_90d" in f],
    "members": rec.explainer.members["item"],
    "feature_positions": {f: j for j, f in enumerate(rec.model.features)},
}))
'''


@pytest.mark.slow
def test_adding_a_feature_is_one_field_one_job_column_and_one_declaration(tmp_path, data_dir):
    """In a copy of the code with exactly the three edits, a new item feature (popularity
    with a 90-day half-life) is built, served, trained on, weighed and explained."""
    code = tmp_path / "code"
    for package in ("feature_repo", "ranking", "encoders", "kg", "recdata"):
        shutil.copytree(REPO / package, code / package,
                        ignore=shutil.ignore_patterns("data", "__pycache__"))
    for path, (old, new) in EDITS.items():
        text = (code / path).read_text()
        assert text.count(old) == 1, f"{path} changed: the edit no longer applies"
        (code / path).write_text(text.replace(old, new))
    (data_dir / "cache").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "work"),
                          str(data_dir / "cache")], env=env, cwd=code, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "item_pop_90d" in got["features"]                       # the model's feature list
    assert got["gain"]["item_pop_90d"] > 0                          # used by the trees
    assert "item_stats:popularity_90d" in got["service_refs"]       # in its Feast service
    assert "item_pop_90d" in got["online_columns"]                  # served online
    assert np.isfinite(got["online_values"]).all() and max(got["online_values"]) > 0
    assert got["feature_positions"]["item_pop_90d"] in got["members"]  # its family
    assert got["explained"], "no reason carried the new feature"    # and said as a reason
