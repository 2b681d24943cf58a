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
