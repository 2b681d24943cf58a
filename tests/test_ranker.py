"""The ranker end to end on the synthetic set: candidates, Feast point-in-time features,
LambdaRank training, the saved model, the online recommender and its explanations."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import polars as pl
import pytest

from recdata.errors import ConfigError, InvalidRequestError, UnknownNameError
from recdata.instructions import TASKS


def ndcg(result, model: str, task: str) -> float:
    m = result.metrics.filter((pl.col("model") == model) & (pl.col("task") == task))
    return float(m["ndcg@10"][0])


def test_ranker_is_evaluated_beside_baselines_on_every_task(trained):
    result = trained["result"]
    for task in TASKS:
        for model in ("ltr_full", "ltr_no_kg"):
            assert 0 <= ndcg(result, model, task) <= 1
    # planted tastes and attribute-built intents: the ranker must beat popularity there
    assert ndcg(result, "ltr_full", "intent") > ndcg(result, "popularity", "intent")
    recall = result.candidate_recall
    assert set(recall["task"]) == set(TASKS)
    assert recall["recall"].is_between(0, 1).all()
    assert (recall["candidates"] <= 200).all()
    paths = result.save()
    quality = pl.read_csv(paths["quality"])
    assert quality.filter(pl.col("model") == "candidates")["metric"].to_list()[0].startswith(
        "recall@")


def test_candidates_exclude_history_and_cover_their_sources(trained):
    from encoders.text import TextEncoder
    from ranking.candidates import CandidateConfig, CandidateGenerator
    from ranking.inputs import Catalogue, fit_data, request_batch, split_interactions
    from ranking.scorers.base import ScorerContext
    from recdata.instructions import generate_requests
    from recdata.synthetic import make_synthetic

    ds = make_synthetic(n_users=120, n_items=150, interactions_per_user=25, seed=7)
    catalogue = Catalogue.from_dataset(ds)
    split = split_interactions(ds, catalogue)
    requests = generate_requests(ds).filter((pl.col("split") == "test")
                                            & (pl.col("task") == "intent"))
    batch = request_batch(requests, split, catalogue)
    context = ScorerContext(encoder=TextEncoder(cache_dir=trained["data"] / "cache",
                                                show_progress=False))
    weights = {"embedding": 1.0, "attribute": 1.0, "transition": 1.0, "popularity": 1.0}
    gen = CandidateGenerator(CandidateConfig(n=40, weights=weights), context).fit(
        fit_data(split, catalogue, "test"))
    cands = gen.generate(batch)
    assert cands.idx.shape == (len(batch), 40)
    assert all(len(set(row)) == 40 for row in cands.idx.tolist())
    seen = batch.history.toarray() > 0
    assert not np.take_along_axis(seen, cands.idx, axis=1).any()
    assert cands.valid.all()  # 150 items, 25 seen: 40 unseen always exist
    # merged by best rank / weight: every candidate is within the top N of some source
    best = np.nanmin(np.stack([cands.ranks[n] for n in weights]), axis=0)
    assert (best <= 40).all()
    with pytest.raises(Exception, match="candidate source"):
        CandidateConfig(weights={"nope": 1.0})


def test_model_is_saved_with_its_features_and_reloads_identically(trained):
    from ranking.ltr.model import META_FILE, LTRModel
    from ranking.recommend import latest_model

    folder = latest_model(trained["data"] / "models")
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["ablation"] == "full" and "src_embedding" in meta["features"]
    assert meta["key"] in folder.name
    model = LTRModel.load(folder)
    frame = pl.DataFrame({f: np.linspace(0, 1, 7) for f in model.features})
    np.testing.assert_allclose(model.predict(frame),
                               model.booster.predict(frame.to_numpy(),
                                                     num_iteration=model.best_iteration))
    no_kg = LTRModel.load(latest_model(trained["data"] / "models", "ltr_no_kg"))
    assert not [f for f in no_kg.features if "kg" in f]


def test_a_model_whose_features_are_no_longer_served_is_refused(trained, tmp_path,
                                                                  recommender):
    from ranking.ltr.model import META_FILE, LTRModel
    from ranking.recommend import latest_model

    folder = tmp_path / "model"
    shutil.copytree(latest_model(trained["data"] / "models"), folder)
    meta = json.loads((folder / META_FILE).read_text())
    meta["features"].append("user_favourite_colour")
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="user_favourite_colour"):
        LTRModel.load(folder)
    model = LTRModel.load(latest_model(trained["data"] / "models"))
    served = set(recommender.reader.types) - {"item_stats__popularity_30d"}
    with pytest.raises(ConfigError, match="item_stats__popularity_30d"):
        model.check_served(served)


def test_recommend_for_a_known_user(recommender, trained, synthetic):
    user = int(synthetic.interactions["user_id"][0])
    rec = recommender.recommend(user, "a comedy from the 1990s please", k=8)
    assert not rec.cold_start and len(rec.items) == 8
    ids = [i.item_id for i in rec.items]
    assert len(set(ids)) == 8
    seen = set(synthetic.interactions.filter(pl.col("user_id") == user)["item_id"])
    assert not seen & set(ids)
    scores = [i.score for i in rec.items]
    assert scores == sorted(scores, reverse=True)
    assert rec.timings_ms["total"] > 0 and rec.candidates <= 200


def test_explanations_name_real_features_of_the_item(recommender, synthetic):
    items = synthetic.items.select("item_id", "genres", "year")
    genres = dict(zip(items["item_id"], items["genres"].to_list(), strict=True))
    user = int(synthetic.interactions["user_id"][5])
    said = 0
    for instruction in ("a comedy please", "something with drama", "a sci-fi story"):
        rec = recommender.recommend(user, instruction, k=10)
        for item in rec.items:
            for reason in item.reasons:
                assert reason.contribution > 0
                assert set(reason.features) <= set(recommender.model.features)
                if reason.family == "request_match":
                    words = [w.strip("'") for w in reason.text.split("'")[1::2]]
                    have = {g.lower() for g in genres[item.item_id]}
                    for w in words:
                        levels = synthetic.domain.levels
                        if not w.startswith("the ") and w not in (
                                levels.popular[0], levels.obscure[0], levels.acclaimed[0]):
                            assert w in have, (w, item.item_id, have)
                            said += 1
                if reason.family == "similar":
                    title = reason.text.removeprefix("similar to ").split(", which")[0]
                    assert title in set(synthetic.items["title"])
    assert said > 0, "no reason named a matched genre"


@pytest.mark.parametrize("user", [None, 10**9])
def test_cold_start_user(recommender, user):
    rec = recommender.recommend(user, "a sci-fi story", k=5)
    assert rec.cold_start
    assert len(rec.items) == 5
    assert all(r.family not in ("similar", "after_last", "taste")
               for i in rec.items for r in i.reasons)


@pytest.mark.parametrize(("instruction", "k", "message"), [
    ("", 5, "empty"), ("   \t\n", 5, "empty"), (123, 5, "string"),
    ("x" * 1001, 5, "limit is 1000"), ("a comedy", 0, "k must be"),
    ("a comedy", 101, "k must be"), ("a comedy", "3", "k must be"),
])
def test_bad_input_is_refused_with_a_reason(recommender, instruction, k, message):
    with pytest.raises(InvalidRequestError, match=message):
        recommender.recommend(1, instruction, k)


def test_control_characters_are_cleaned(recommender):
    rec = recommender.recommend(1, "a\x00 comedy\u200b\x1b[31m  please\n", k=3)
    assert rec.instruction == "a comedy [31m please"


def test_occlusion_measures_what_a_family_adds(recommender):
    """An item's occlusion contribution of a family is its score less its score with that
    family at the request's median candidate, computed here by hand for one family; the
    SHAP attribution of a family is the sum of its features' TreeSHAP values."""
    req = recommender._features(None, "a comedy from the 1990s", 10**9, {})
    x = req.frame.select(recommender.model.features).to_numpy()
    valid = req.cands.valid[0]
    top = np.argsort(-recommender.model.predict_array(x, threads=1))[:5]
    explainer = recommender.explainer
    occ = explainer.contributions(x, top, valid, "occlusion")
    families = list(explainer.members)
    assert occ.shape == (5, len(families))
    f = next(i for i, cols in enumerate(explainer.members.values()) if cols)
    cols = list(explainer.members.values())[f]
    by_hand = x[top].copy()
    with warnings.catch_warnings():  # a feature no candidate has stays NaN, as in the code
        warnings.simplefilter("ignore", RuntimeWarning)
        by_hand[:, cols] = np.nanmedian(x[valid], axis=0)[cols]
    expected = recommender.model.predict_array(x[top]) - recommender.model.predict_array(by_hand)
    assert np.allclose(occ[:, f], expected, atol=1e-9)
    shap = explainer.contributions(x, top, valid, "shap")
    raw = recommender.model.booster.predict(x[top], pred_contrib=True)
    for i, cols in enumerate(explainer.members.values()):
        assert np.allclose(shap[:, i], raw[:, cols].sum(axis=1), atol=1e-9)
    with pytest.raises(UnknownNameError, match="occlusion, shap"):
        explainer.contributions(x, top, valid, "lime")


def test_column_medians_are_numpys_nanmedian():
    """The occlusion's typical candidate: np.nanmedian per column to the bit (even and odd
    counts, ties, infinities, all-NaN columns), without its masked arrays."""
    from ranking.explain import column_medians

    rng = np.random.default_rng(3)
    for _ in range(300):
        v = rng.normal(size=(int(rng.integers(1, 40)), int(rng.integers(1, 9))))
        v[rng.random(v.shape) < rng.random()] = np.nan
        v[rng.random(v.shape) < 0.02] = np.inf
        v = np.round(v, 1) if rng.random() < 0.5 else v
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(v, axis=0)
        assert np.array_equal(column_medians(v), expected, equal_nan=True)


def test_requests_computed_together_get_the_answers_they_get_alone(recommender):
    """recommend_many (what a batch of concurrent requests runs) changes nothing about any
    answer: the same items, scores and reasons as each request alone, whether or not the
    server says its cores are busy (`alone` False: one encode thread, no encode-ahead)."""
    asked = [recommender.ask(u, text, 6) for u, text in (
        (1, "a comedy from the 1990s"), (None, "no horror please, something light"),
        (10**9, "a drama"), (2, "like the last one I watched"), (3, "an action film"))]
    together = recommender.recommend_many(asked)
    busy = [recommender.recommend_many([a], alone=False)[0] for a in asked]
    assert recommender.context.encoder.alone is False
    for one, many in zip((recommender.recommend_many([a])[0] for a in asked), together,
                         strict=True):
        assert [i.item_id for i in one.items] == [i.item_id for i in many.items]
        assert [i.score for i in one.items] == pytest.approx([i.score for i in many.items],
                                                             abs=1e-9)
        assert [[r.text for r in i.reasons] for i in one.items] == \
            [[r.text for r in i.reasons] for i in many.items]
        assert one.cold_start == many.cold_start and many.timings_ms["batch_size"] == 5
    for one, loaded in zip((recommender.recommend_many([a])[0] for a in asked), busy,
                           strict=True):
        assert [i.item_id for i in one.items] == [i.item_id for i in loaded.items]
        assert [i.score for i in one.items] == pytest.approx([i.score for i in loaded.items],
                                                             abs=1e-9)
    assert recommender.context.encoder.alone is True


def test_a_bad_request_in_a_batch_fails_alone(recommender):
    answers = recommender.answer([(1, "a comedy", 5, None, None), (1, "   ", 5, None, None),
                                  (None, "a drama", 500, None, None),
                                  (None, "a drama", 3, None, [10**12])])
    assert len(answers[0].items) == 5
    assert isinstance(answers[1], InvalidRequestError) and "instruction" in str(answers[1])
    assert isinstance(answers[2], InvalidRequestError) and "k must be" in str(answers[2])
    assert isinstance(answers[3], InvalidRequestError) and "history" in str(answers[3])


def test_concurrent_callers_share_batches_and_get_their_own_answers(recommender):
    from concurrent.futures import ThreadPoolExecutor

    from ranking.batching import RequestBatcher

    texts = [f"a {g} film, something {m}" for g in ("comedy", "drama", "war", "crime")
             for m in ("light", "dark", "old")]
    alone = {t: [i.item_id for i in recommender.recommend(None, t, 5).items] for t in texts}
    sizes: list[int] = []

    def run(asked):
        sizes.append(len(asked))
        return recommender.recommend_many(asked)

    batcher = RequestBatcher(run, max_batch=8)
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda t: batcher.submit(recommender.ask(None, t, 5)), texts))
    assert [[i.item_id for i in g.items] for g in got] == [alone[t] for t in texts]
    assert sum(sizes) == len(texts) and max(sizes) > 1, sizes


def test_the_request_is_encoded_ahead_once_and_the_source_reads_those_vectors(recommender,
                                                                              monkeypatch):
    """The encode started before the parse (encode_ahead) must be the one the instruction
    source uses: one model run per new request, on the encode-ahead thread; a negated
    clause is dropped there as the source drops it. Off, the same answer comes on the
    calling thread."""
    import threading

    encoder = recommender.context.encoder
    runs: list[tuple[str, list[str]]] = []
    real = encoder._run

    def counted(texts, progress, desc="encoding"):
        runs.append((threading.current_thread().name, list(texts)))
        return real(texts, progress, desc)

    monkeypatch.setattr(encoder, "_run", counted)
    ahead = recommender.recommend(4, "a heist thriller with a twist, no horror", 5)
    assert len(runs) == 1 and runs[0][0].startswith("encode-ahead"), runs
    assert "horror" not in runs[0][1][0]
    monkeypatch.setattr(recommender, "_ahead", None)
    runs.clear()
    recommender.context.encoder._memory.clear()
    inline = recommender.recommend(4, "a heist thriller with a twist, no horror", 5)
    assert len(runs) == 1 and runs[0][0] == threading.current_thread().name
    assert [(i.item_id, i.score) for i in inline.items] == \
        [(i.item_id, i.score) for i in ahead.items]


def test_beyond_accuracy_and_the_diversity_tradeoff_are_reported(trained):
    """Every model gets the beyond-accuracy metrics; the ranker's lists re-ranked by MMR
    form the trade-off table, where lambda 0 is the ranker itself to the digit; the setting
    chosen on validation becomes `ltr_full_mmr`; all of it lands in quality.csv,
    diversity.csv and the plot; validation screens the whole grid."""
    result = trained["result"]
    m = result.metrics
    for model in ("popularity", "filter_popularity", "ltr_full", "ltr_full_mmr"):
        rows = m.filter(pl.col("model") == model)
        assert rows.height == len(TASKS), model
        assert rows["ild@10"].is_between(0, 2).all()
        assert rows["coverage@10"].is_between(0, 1).all()
        assert rows["popular_share@10"].is_between(0, 1).all()
        assert (rows["novelty@10"] > 0).all()
    table = result.tradeoff
    assert set(table["split"]) == {"val", "test"}
    for task in TASKS:
        test = table.filter((pl.col("split") == "test") & (pl.col("task") == task))
        base = test.filter(pl.col("lambda") == 0.0)
        assert base["ndcg@10"][0] == pytest.approx(ndcg(result, "ltr_full", task), abs=1e-12)
        assert test.sort("lambda")["ild@10"][-1] > base["ild@10"][0]  # more lambda, variety
        pick = result.diversity_chosen[task]
        assert pick["ild_floor"] > 0
        line = test.filter((pl.col("temperature") == pick["temperature"])
                           & (pl.col("head_share") == pick["head_share"]))
        assert line.height == test.height  # one lambda line, at the chosen shape
        assert ndcg(result, "ltr_full_mmr", task) == pytest.approx(
            line.filter(pl.col("lambda") == pick["lambda"])["ndcg@10"][0], abs=1e-12)
    val = table.filter(pl.col("split") == "val")  # the screen: the whole grid
    assert val.height == len(result.config.diversity.settings()) * val["task"].n_unique()
    paths = result.save()
    quality = pl.read_csv(paths["quality"])
    mmr = quality.filter(pl.col("model") == "ltr_full_mmr")
    assert {"ndcg@10", "ild@10", "coverage@10"} <= set(mmr["metric"])
    assert "sampled_ndcg@10" not in set(mmr["metric"])  # MMR re-ranks the full lists only
    assert {"ild@10", "ild_attr@10", "novelty@10"} <= set(
        quality.filter(pl.col("model") == "popularity")["metric"])
    diversity = pl.read_csv(paths["diversity"])
    assert diversity.filter(pl.col("chosen") & (pl.col("split") == "test")).height == len(TASKS)
    assert paths["diversity_plot"].stat().st_size > 1000


def test_diversity_zero_is_the_rankers_answer_and_more_brings_variety(recommender):
    from ranking.diversity import intra_list_diversity
    from recdata.errors import InvalidRequestError

    plain = recommender.recommend(1, "a comedy", 10)
    same = recommender.recommend(1, "a comedy", 10, diversity=0.0)
    assert [i.item_id for i in same.items] == [i.item_id for i in plain.items]
    varied = recommender.recommend(1, "a comedy", 10, diversity=0.8)
    rows = recommender._rows
    vectors = recommender.items.vectors

    def ild(rec) -> float:
        return intra_list_diversity(vectors[rows(np.array([i.item_id for i in rec.items]))])

    assert ild(varied) > ild(plain) and varied.timings_ms["diversity"] == 0.8
    brought = [i for i in varied.items if i.item_id not in {p.item_id for p in plain.items}]
    assert brought and all(any(r.family == "variety" and "variety" in r.text
                               for r in i.reasons) for i in brought)
    with pytest.raises(InvalidRequestError, match="diversity"):
        recommender.recommend(1, "a comedy", 10, diversity=1.5)


def test_a_request_asking_for_variety_gets_it(recommender):
    asked = recommender.recommend(1, "surprise me with a mix of things", 10)
    assert asked.understood["variety"] is True
    assert asked.timings_ms["diversity"] == recommender.cfg.variety_diversity
    plain = recommender.recommend(1, "a comedy, nothing varied", 10)
    assert "variety" not in plain.understood and "diversity" not in plain.timings_ms


def test_a_loaded_recommender_has_not_imported_pytorch(trained):
    """The ONNX encoder path serves without PyTorch: neither Feast (its eager torch import is
    replaced by a lazy one, feature_repo) nor the thread setting may load it (~1.5 s of each
    server worker's start)."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; "
            "from ranking.recommend import Recommender, RecommenderConfig; "
            f"rec = Recommender.load(RecommenderConfig(repo=Path({str(trained['repo'])!r}), "
            f"data_dir=Path({str(trained['data'])!r}), torch_threads=1)); "
            "rec.recommend(None, 'something funny', 3); "
            "import feast.online_response as o; "
            "print('torch' in sys.modules, o.get_torch().__name__, 'torch' in sys.modules); "
            "import ranking.topk as t; print('top_k threads', t._LIMIT)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-2] == "False torch True"
    # and top_k's pool, like BLAS's, is held to the process's thread count
    assert out.strip().splitlines()[-1] == "top_k threads 1"
