"""The instruction-tuned encoder inside the harness: `embedding_tuned` and `ltr_tuned` rows,
examples from the training window only, a feature repo rebuilt from the tuned encoder, and
the online path serving the tuned ranker with the same query text as training."""

from __future__ import annotations

import json

import polars as pl
import pytest


@pytest.fixture(scope="module")
def tuned_run(trained, synthetic):
    from ranking.evaluation.harness import evaluate
    from ranking.train import train

    cfg = trained["cfg"].model_copy(update={
        "models": ["embedding", "embedding_tuned", "ltr_tuned"]})
    train(cfg, dataset=synthetic, progress=False)
    return cfg, evaluate(cfg, dataset=synthetic, progress=False)


def test_tuned_models_are_evaluated_on_every_task(tuned_run):
    cfg, result = tuned_run
    full = result.metrics
    for model in ("embedding_tuned", "ltr_tuned"):
        tasks = set(full.filter(pl.col("model") == model)["task"])
        assert tasks == set(cfg.tasks), model
    tuned_dirs = list((cfg.data_dir / "encoders").glob("encoder-*"))
    assert len(tuned_dirs) == 1
    meta = json.loads((tuned_dirs[0] / "tuning.json").read_text())
    assert meta["config"]["max_examples"] == 400


def test_encoder_examples_come_from_training_requests_only(tuned_run, trained, synthetic):
    from ranking.prepare import prepare
    from ranking.queries import history_label
    from ranking.scorers.base import ScorerContext
    from ranking.train import encoder_examples, ltr_kg

    cfg, _ = tuned_run
    prep = prepare(cfg, synthetic)

    class Plain:  # vectors are irrelevant here: only which requests and items are used
        fingerprint = "plain"

        def encode(self, texts, desc=None):
            import numpy as np

            return np.ones((len(texts), 4), dtype=np.float32) / 2

    kg = ltr_kg(cfg, synthetic, False).embeddings  # cached by the run above
    ex = encoder_examples(cfg, prep, ScorerContext(encoder=Plain(), kg=kg))
    train = prep.requests.filter(pl.col("split") == "train")
    assert ex.height == train.height
    later = prep.requests.filter(pl.col("split") != "train")["instruction"]
    # every query starts with a training request's instruction, never a held-out one
    label = history_label(synthetic.domain)  # the schema's words: "recently tried"
    starts = ex["query"].str.split(f" | {label}: ").list.first()
    # (as the encoder reads them: without what they rule out, intent_parser.semantic_text)
    from ranking.intent_parser import semantic_text

    seen = set(semantic_text(train["instruction"].to_list()))
    assert set(starts) <= seen
    assert not set(starts) & (set(semantic_text(later.to_list())) - seen)
    # the hard negative is never the row's own positive
    assert (ex["negatives"].list.first() != ex["positive"]).all()


def test_ltr_tuned_reads_a_repo_built_from_the_tuned_encoder(tuned_run, trained):
    from encoders.text import TextEncoder
    from ranking.recommend import Recommender, RecommenderConfig, latest_model

    cfg, _ = tuned_run
    models = cfg.data_dir / "models"
    model_dir = latest_model(models, "ltr_tuned")
    meta = json.loads((model_dir / "meta.json").read_text())
    tuned_dir = next((cfg.data_dir / "encoders").glob("encoder-*"))
    assert meta["encoder"] == TextEncoder(tuned_dir).fingerprint
    # the base ranker's pointer is untouched by the tuned one
    assert latest_model(models, "ltr_full") != model_dir
    repo = next((cfg.data_dir / "repos").glob("tuned-*"))
    built = json.loads((repo / "data" / "sources" / "meta.json").read_text())
    assert built["data_fingerprint"]
    rec = Recommender.load(RecommenderConfig(model=model_dir, repo=repo,
                                             data_dir=cfg.data_dir, encoder_path=tuned_dir))
    assert rec.context.query_titles is not None
    out = rec.recommend(1, "a light comedy", 5)
    assert len(out.items) == 5
    with pytest.raises(Exception, match="encoder"):
        Recommender.load(RecommenderConfig(model=model_dir, repo=repo, data_dir=cfg.data_dir))
