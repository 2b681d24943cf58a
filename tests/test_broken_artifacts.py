"""A damaged artifact is one clear error naming the file and what to run, never a traceback
from deep inside a library or, worse, a silently different model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from recdata.errors import ConfigError


@pytest.fixture
def model_copy(trained, tmp_path):
    from ranking.recommend import latest_model

    source = latest_model(trained["data"] / "models")
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


def test_an_intact_model_loads_and_records_its_checksum(model_copy):
    from ranking.ltr.model import LTRModel

    meta = json.loads((model_copy / "meta.json").read_text())
    assert len(meta["model_sha256"]) == 64
    assert LTRModel.load(model_copy).features == meta["features"]


@pytest.mark.parametrize("cut", [0.5, 0.98])
def test_a_truncated_model_file_is_refused_by_name(model_copy, cut):
    """Cut at 98% the text still parses as a model with fewer trees; the checksum saved
    beside it is what tells."""
    from ranking.ltr.model import LTRModel

    text = (model_copy / "model.txt").read_bytes()
    (model_copy / "model.txt").write_bytes(text[:int(len(text) * cut)])
    with pytest.raises(ConfigError, match=r"model\.txt.*instructrank train"):
        LTRModel.load(model_copy)


def test_an_unchecksummed_model_that_lightgbm_cannot_read_is_refused(model_copy):
    from ranking.ltr.model import LTRModel

    meta = json.loads((model_copy / "meta.json").read_text())
    del meta["model_sha256"]  # as written before checksums
    (model_copy / "meta.json").write_text(json.dumps(meta))
    (model_copy / "model.txt").write_text("tree\nnot a model at all\n")
    with pytest.raises(ConfigError, match=r"model\.txt.*LightGBM"):
        LTRModel.load(model_copy)


@pytest.mark.parametrize("damage", ["{not json", json.dumps({"key": "x"})])
def test_a_damaged_meta_file_is_refused_by_name(model_copy, damage):
    from ranking.ltr.model import LTRModel

    (model_copy / "meta.json").write_text(damage)
    with pytest.raises(ConfigError, match=r"meta\.json is damaged"):
        LTRModel.load(model_copy)


def test_a_missing_model_file_is_refused_by_name(model_copy):
    from ranking.ltr.model import LTRModel

    (model_copy / "model.txt").unlink()
    with pytest.raises(ConfigError, match=r"model\.txt is missing"):
        LTRModel.load(model_copy)


def test_a_damaged_onnx_export_is_made_again(tmp_path):
    """The exported graph is a cache: cut short, it is exported again and the vectors are
    the ones an intact export gives."""
    from encoders.text import TextEncoder

    first = TextEncoder(cache_dir=tmp_path, persist=False, show_progress=False)
    expected = first.encode_uncached(["a scary movie"])
    graph = tmp_path / "onnx" / f"{first.fingerprint}.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    again = TextEncoder(cache_dir=tmp_path, persist=False, show_progress=False)
    assert np.abs(again.encode_uncached(["a scary movie"]) - expected).max() < 1e-6
    assert again.runtime == "onnx" and graph.stat().st_size > 1000


@pytest.fixture
def kg_copy(trained, tmp_path):
    """The trained KG, saved again (so its result.json carries the checksum) in a data
    folder of its own: (data dir, key)."""
    from kg.train import KGResult

    source = next((trained["data"] / "kg").iterdir())
    result = KGResult.load(source)
    result.save(tmp_path / "kg" / result.key)
    return tmp_path, result.key


def _kg_reader(key: str):
    from types import SimpleNamespace

    return SimpleNamespace(key="m", extra={"kg_key": key})  # what the KG loader reads


def test_an_intact_kg_loads_and_records_its_checksum(kg_copy):
    from ranking.recommend import _load_kg

    data, key = kg_copy
    meta = json.loads((data / "kg" / key / "result.json").read_text())
    assert len(meta["embeddings_sha256"]) == 64
    assert _load_kg(_kg_reader(key), data).entity_vectors.shape[0] > 0


@pytest.mark.parametrize("damage", ["truncated", "other_vectors", "result_not_json",
                                    "result_from_another_version", "missing_vectors"])
def test_a_damaged_kg_is_refused_by_name_at_load(kg_copy, damage):
    """Serving a ranker whose KG folder is damaged: one ConfigError naming the file and
    `instructrank train`; vectors that are not the ones saved (another KG's, same shape)
    are refused by the checksum, not served."""
    from kg.embeddings import KGEmbeddings
    from ranking.recommend import _load_kg

    data, key = kg_copy
    folder = data / "kg" / key
    vectors, result = folder / "embeddings.npz", folder / "result.json"
    if damage == "truncated":
        vectors.write_bytes(vectors.read_bytes()[:2000])
    elif damage == "other_vectors":
        import dataclasses

        emb = KGEmbeddings.load(vectors)
        dataclasses.replace(emb, entity_vectors=emb.entity_vectors[::-1].copy()).save(vectors)
    elif damage == "result_not_json":
        result.write_text("{\"key\": ")
    elif damage == "result_from_another_version":
        meta = json.loads(result.read_text())
        result.write_text(json.dumps({**meta, "relation_weights": [1, 2]}))
    else:
        vectors.unlink()
    name = "result.json" if damage.startswith("result") else "embeddings.npz"
    with pytest.raises(ConfigError, match=rf"{name}.*instructrank train"):
        _load_kg(_kg_reader(key), data)


def test_a_damaged_kg_cache_is_trained_again_not_trusted(tmp_path):
    """`instructrank train` meets the same folder as a cache: damaged, it is trained again
    (with a warning) and the result is the one an intact cache gives."""
    import polars as pl

    from kg.train import KGConfig, train_kg

    rng = np.random.default_rng(0)
    triples = pl.DataFrame({"head": [f"u{i}" for i in rng.integers(0, 30, 300)],
                            "relation": ["liked"] * 300,
                            "tail": [f"i{i}" for i in rng.integers(0, 40, 300)]}).unique()
    cfg = KGConfig(epochs=2, eval_every=1, dim=8)
    first = train_kg(triples, cfg, tmp_path, progress=False)
    vectors = tmp_path / first.key / "embeddings.npz"
    vectors.write_bytes(vectors.read_bytes()[:500])
    with pytest.warns(UserWarning, match="training it again"):
        again = train_kg(triples, cfg, tmp_path, progress=False)
    assert not again.cached
    np.testing.assert_allclose(again.embeddings.entity_vectors,
                               first.embeddings.entity_vectors, atol=1e-5)


@pytest.mark.parametrize("damage", ["weights_cut", "folder_missing"])
def test_a_damaged_encoder_folder_is_refused_by_name(trained, tmp_path, damage):
    """The encoder folder a ranker reads, damaged: one ConfigError naming the folder and
    what to do, before anything is loaded (cut weights change its fingerprint, which the
    ranker recorded)."""
    from encoders.text import default_model_path
    from ranking.recommend import Recommender, RecommenderConfig

    folder = tmp_path / "encoder"
    shutil.copytree(default_model_path(), folder)
    if damage == "weights_cut":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100_000])
        expected = r"encoder.*another model, or its files changed"
    else:
        shutil.rmtree(folder)
        expected = r"not a local model directory"
    cfg = RecommenderConfig(repo=trained["repo"], data_dir=trained["data"],
                            encoder_path=folder)
    with pytest.raises(ConfigError, match=expected):
        Recommender.load(cfg)


def test_an_unreadable_encoder_folder_is_one_error_not_a_traceback(tmp_path):
    """Loaded on its own (no ranker to compare fingerprints), a folder whose weights are
    cut says which folder could not be loaded; it does not fall back to PyTorch and fail
    there instead."""
    from encoders.text import TextEncoder, default_model_path

    folder = tmp_path / "encoder"
    shutil.copytree(default_model_path(), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    encoder = TextEncoder(folder, cache_dir=tmp_path / "cache", persist=False,
                          show_progress=False)
    with pytest.raises(ConfigError, match=r"encoder model directory .*could not be loaded"):
        encoder.encode_uncached(["a comedy"])
