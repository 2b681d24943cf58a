"""One contract every registered scorer passes on synthetic data (LensKit/implicit style):
a new model gets these checks by registering itself."""

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from ranking.evaluation.config import EvalConfig
from ranking.evaluation.harness import prepare
from ranking.inputs import RequestBatch
from ranking.scorers.base import ScorerContext, available_scorers, scorer_class
from recdata.errors import ConfigError, UnknownNameError


@pytest.fixture(scope="module")
def prep(synthetic):
    return prepare(EvalConfig(dataset="synthetic", models=["popularity"]), synthetic)


@pytest.fixture(scope="module")
def context(encoder, trained, synthetic, prep):
    """With the KG and the ranker's resources, so the KG and LTR scorers meet the same
    contract (built from the feature repo of the session's `trained` fixture)."""
    from ranking.train import ltr_kg, ltr_resources, tuned_context

    cfg = trained["cfg"]
    context = ScorerContext(encoder=encoder)
    kg = ltr_kg(cfg, synthetic, progress=False)
    context.kg = kg.embeddings
    context.ltr = ltr_resources(cfg, synthetic, prep, context, progress=False)
    context.ltr.models_dir = trained["data"] / "contract-models"
    # embedding_tuned / ltr_tuned read a second context with the tuned encoder
    context.tuned = tuned_context(cfg, synthetic, prep, context, progress=False, ltr=True)
    context.tuned.ltr.models_dir = trained["data"] / "contract-models"
    return context


@pytest.fixture(params=available_scorers())
def fitted(request, prep, context):
    return scorer_class(request.param)(context=context).fit(prep.fits["val"])


def test_scores_every_item_for_every_request(fitted, prep):
    for task in ("history", "intent", "search"):
        batch = prep.batches[("val", task)]
        scores = fitted.score(batch)
        assert scores.shape == (len(batch), prep.catalogue.n_items)
        assert np.isfinite(scores).all()


def test_deterministic(fitted, prep):
    batch = prep.batches[("val", "intent")]
    assert np.array_equal(fitted.score(batch), fitted.score(batch))


def test_empty_batch(fitted, prep):
    batch = prep.batches[("val", "history")]
    empty = RequestBatch(batch.requests.head(0), batch.history[:0], batch.n_items)
    assert fitted.score(empty).shape == (0, prep.catalogue.n_items)


def test_cold_start_history_models_fall_back_to_popularity(fitted, prep):
    batch = prep.batches[("val", "search")]  # no history at all
    scores = fitted.score(batch)
    if fitted.uses_history and not fitted.uses_instruction:
        pop = prep.fits["val"].popularity()
        assert np.array_equal(scores, np.broadcast_to(pop, scores.shape))
    else:
        assert scores.std(axis=1).min() > 0  # still discriminates between items


def test_batch_equals_single_requests(fitted, prep):
    batch = prep.batches[("val", "intent")]
    full = fitted.score(batch)
    for i in (0, 5):
        one = RequestBatch(batch.requests[i:i + 1], batch.history[i:i + 1], batch.n_items)
        assert np.allclose(fitted.score(one)[0], full[i])


def test_must_be_fitted_first(prep):
    with pytest.raises(ConfigError, match="must be fitted"):
        scorer_class("ease")().score(prep.batches[("val", "history")])


def test_unknown_names_and_keys_are_rejected():
    with pytest.raises(UnknownNameError, match=r"valid names: .*ease"):
        scorer_class("eaze")
    with pytest.raises(ValidationError):
        scorer_class("ease").Config(lambda_=3)


def test_grids_cover_the_default_tuning_space():
    for name in available_scorers():
        configs = list(scorer_class(name).configs())
        assert configs, name
    assert len(list(scorer_class("ease_lastn").configs())) > len(
        list(scorer_class("ease").configs()))


def test_planted_taste_is_learned(synthetic, tmp_path):
    """On synthetic users with planted genre tastes, collaborative models must clearly beat
    popularity, and the attribute filter must beat popularity on intent requests."""
    from ranking.evaluation.harness import evaluate

    cfg = EvalConfig(dataset="synthetic", models=["popularity", "ease", "filter_popularity"],
                     tasks=["history", "intent"], data_dir=tmp_path)
    m = evaluate(cfg, dataset=synthetic, progress=False).metrics
    ndcg = {(r["model"], r["task"]): r["ndcg@10"] for r in m.iter_rows(named=True)}
    assert ndcg[("ease", "history")] > 1.3 * ndcg[("popularity", "history")]
    assert ndcg[("filter_popularity", "intent")] > 1.3 * ndcg[("popularity", "intent")]
    assert m.filter(pl.col("requests") != synthetic.n_users).height == 0


def test_run_fingerprint_covers_config_grids_and_data(monkeypatch):
    cfg = EvalConfig(models=["ease"])
    base = cfg.fingerprint("data-a")
    assert base == EvalConfig(models=["ease"], data_dir="elsewhere").fingerprint("data-a")
    assert base != cfg.fingerprint("data-b")
    assert base != EvalConfig(models=["ease"], seed=1).fingerprint("data-a")
    monkeypatch.setattr(scorer_class("ease"), "grid", {"lam": [1.0], "last_n": [None]})
    assert base != cfg.fingerprint("data-a")


def test_forgetting_a_chunk_also_clears_what_the_tuned_context_memoised():
    """The evaluation forgets each chunk of requests on the run's context; a tuned model
    memoises on the tuned one, and what it kept there must go too (else a 10^4-item
    evaluation keeps every chunk's similarity matrix)."""
    tuned = ScorerContext()
    context = ScorerContext(tuned=tuned)
    chunk, other = object(), object()
    tuned.cached(chunk, ("similarities",), lambda: np.zeros(3))
    tuned.cached(other, ("similarities",), lambda: np.zeros(3))
    context.cached(chunk, ("queries",), lambda: np.zeros(3))
    context.forget(chunk)
    assert not context.memo
    assert [hit[0] for hit in tuned.memo.values()] == [other]


def test_item_vectors_widened_once_while_small(monkeypatch):
    """The float64 item matrix the similarity reads is the per-call conversion's, kept for
    the next request while small; above the bound it is made per call and nothing is kept."""
    from types import SimpleNamespace

    from ranking.scorers import instruction

    items = np.random.default_rng(0).random((50, 8), dtype=np.float32)
    scorer = SimpleNamespace(context=ScorerContext())
    first = instruction.wide_items(scorer, items)
    assert np.array_equal(first, items.T.astype(np.float64))
    assert first.flags.f_contiguous == items.T.astype(np.float64).flags.f_contiguous
    assert instruction.wide_items(scorer, items) is first
    monkeypatch.setattr(instruction, "WIDE_ITEMS_BYTES", items.size * 8 - 1)
    fresh = ScorerContext()
    again = instruction.wide_items(SimpleNamespace(context=fresh), items)
    assert np.array_equal(again, first) and not fresh.memo
