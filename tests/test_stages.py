"""Training and evaluation are separate stages: `train()` makes every artifact and a manifest,
`evaluate()` reads them and writes none, and a missing one is an error that says what to
run."""

from __future__ import annotations

import pytest

from ranking.evaluation.config import EvalConfig
from recdata.errors import ArtifactMissingError


def test_evaluation_writes_no_trained_artifact(trained):
    before, after = trained["artifacts_after_train"], trained["artifacts_after_evaluate"]
    assert any(path.startswith("models/") for path in before)
    assert any(path.startswith("kg/") for path in before)
    assert any(path.startswith("serving/") for path in before)
    assert after == before  # same files, same sizes, same modification times
    assert trained["result"].trained == str(trained["train"].manifest.path)


def test_the_manifest_names_every_artifact_it_trained(trained):
    manifest = trained["train"].manifest
    data = trained["data"]
    assert set(manifest.models) == {"ltr_full", "ltr_no_kg"}
    for folder in manifest.models.values():
        assert (data / "models" / folder / "meta.json").exists()
    assert (data / "kg" / manifest.kg / "result.json").exists()


def test_training_again_with_nothing_changed_fits_nothing(trained, synthetic):
    from ranking.train import train
    from tests.conftest import _artifact_files

    before = _artifact_files(trained["data"])  # other tests may have trained more into it
    again = train(trained["cfg"], dataset=synthetic, progress=False)
    assert again.manifest.models.items() >= trained["train"].manifest.models.items()
    assert _artifact_files(trained["data"]) == before


def test_evaluating_an_untrained_config_names_the_command(trained, synthetic):
    from ranking.evaluation.harness import evaluate

    cfg = trained["cfg"].model_copy(update={"seed": 7, "models": ["ltr_no_kg"]})
    with pytest.raises(ArtifactMissingError, match="instructrank train"):
        evaluate(cfg, dataset=synthetic, progress=False)


def test_a_ranker_missing_from_the_manifest_is_named(trained, synthetic):
    from ranking.evaluation.harness import evaluate

    cfg = trained["cfg"].model_copy(update={"models": ["ltr_no_text"]})
    with pytest.raises(ArtifactMissingError, match="ltr_no_text"):
        evaluate(cfg, dataset=synthetic, progress=False)


def test_baselines_need_no_training(synthetic, tmp_path):
    from ranking.evaluation.harness import evaluate

    cfg = EvalConfig(dataset="synthetic", models=["popularity"], tasks=["history"],
                     data_dir=tmp_path)
    assert evaluate(cfg, dataset=synthetic, progress=False).metrics.height == 1


def test_training_fingerprint_ignores_what_only_evaluation_reads():
    cfg = EvalConfig()
    base = cfg.training_fingerprint("data")
    for update in ({"models": ["ltr_full"]}, {"top_k": 100}, {"sampled_negatives": 9},
                   {"tune": False}, {"results_dir": "elsewhere"}):
        assert cfg.model_copy(update=update).training_fingerprint("data") == base, update
    for update in ({"seed": 1}, {"tasks": ["intent"]}, {"encoder_path": "other"}):
        assert cfg.model_copy(update=update).training_fingerprint("data") != base, update
    assert cfg.training_fingerprint("other data") != base
