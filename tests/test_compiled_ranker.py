"""The compiled ranker (ranking.ltr.compiled) scores exactly as LightGBM does, compiles once
per model and machine, and gives way to LightGBM whenever it cannot be trusted."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from ranking.ltr import compiled
from ranking.ltr.compiled import compiled_predictor, probe_rows


@pytest.fixture(scope="module")
def booster():
    """A LambdaRank forest over features with missing values and exact zeros, as the
    ranker's are (a cold user's history features are missing; counts are often 0), and two
    never missing: one of negative values and zeros (LightGBM puts a threshold at -1e-35
    there, where it reads tiny values as zero), one plain."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6))
    x[:, :4][rng.random((3000, 4)) < 0.15] = np.nan
    x[:, 3] = np.where(rng.random(3000) < 0.4, 0.0, x[:, 3])
    x[:, 4] = np.where(rng.random(3000) < 0.5, 0.0, -np.abs(x[:, 4]))
    y = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) > 0.3).astype(int) \
        + (np.nan_to_num(x[:, 2]) > 1).astype(int) + (x[:, 4] < -0.5).astype(int)
    ranker = lgb.LGBMRanker(objective="lambdarank", n_estimators=40, num_leaves=15,
                            min_child_samples=10, random_state=0, verbose=-1, n_jobs=1)
    ranker.fit(x, y, group=[20] * 150)
    return ranker.booster_


def _rows(n: int = 4000, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)) * 2
    x[rng.random(x.shape) < 0.2] = np.nan
    x[rng.random(x.shape) < 0.1] = 0.0
    x[rng.random(x.shape) < 0.05] = 1e-36  # read as zero by LightGBM
    x[rng.random(x.shape) < 0.05] = -1e-36
    return x


@pytest.mark.parametrize("num_iteration", [None, 17])
def test_scores_equal_lightgbms_to_the_bit(booster, tmp_path, num_iteration):
    predict = compiled_predictor(booster, num_iteration, tmp_path)
    assert predict is not None
    for x in (_rows(), probe_rows(booster, num_iteration), _rows(3).astype(np.float32)):
        want = booster.predict(x, num_iteration=num_iteration, num_threads=1)
        assert np.array_equal(predict(x, 1), want)
        assert np.array_equal(predict(x, 3), want)  # rows split over threads: same sums


def test_each_model_compiles_once_then_loads_from_the_cache(booster, tmp_path):
    assert compiled_predictor(booster, None, tmp_path) is not None
    objects = list(tmp_path.glob("*.o"))
    assert len(objects) == 1 and not list(tmp_path.glob(".*.tmp"))
    stamp = objects[0].stat().st_mtime_ns
    predict = compiled_predictor(booster, None, tmp_path)
    assert predict is not None and objects[0].stat().st_mtime_ns == stamp
    x = _rows()
    assert np.array_equal(predict(x, 1), booster.predict(x, num_threads=1))
    # another model (fewer trees) is another object, beside the first
    assert compiled_predictor(booster, 5, tmp_path) is not None
    assert len(list(tmp_path.glob("*.o"))) == 2


def test_probe_rows_reach_both_sides_of_every_split_and_missing_values(booster):
    x = probe_rows(booster, None)
    assert x.shape == (compiled.PROBE_ROWS, booster.num_feature())
    assert np.isnan(x).any(axis=0).all() and (x == 0).any(axis=0).all()
    leaves = booster.predict(x, pred_leaf=True)  # rows x trees: the leaf each row reached
    reached = sum(len(np.unique(leaves[:, t])) for t in range(leaves.shape[1]))
    total = sum(t["num_leaves"] for t in booster.dump_model()["tree_info"])
    assert reached / total > 0.9


def test_a_compiled_forest_that_scores_otherwise_is_not_used(booster, tmp_path, monkeypatch):
    class Off:
        def __init__(self, model):
            self.model = model

        def predict(self, x, n_jobs=1):
            out = self.model.predict(x, n_jobs=n_jobs)
            out[0] += 1e-12  # one row, in the last bits
            return out

    real = compiled._compiled

    def off(*args):
        model, tmp = real(*args)
        return Off(model), tmp

    monkeypatch.setattr(compiled, "_compiled", off)
    with pytest.warns(RuntimeWarning, match="differ from LightGBM's"):
        assert compiled_predictor(booster, None, tmp_path) is None
    assert not list(tmp_path.glob("*.o")) and not list(tmp_path.glob(".*"))  # nothing kept


def test_a_cached_object_cut_short_or_of_another_model_is_compiled_again(booster, tmp_path):
    x = _rows()
    want = booster.predict(x, num_threads=1)
    assert compiled_predictor(booster, None, tmp_path) is not None
    (binary,) = tmp_path.glob("*.o")
    whole = binary.read_bytes()
    binary.write_bytes(whole[: len(whole) // 2])  # a write the disk cut short
    predict = compiled_predictor(booster, None, tmp_path)
    assert predict is not None and np.array_equal(predict(x, 1), want)
    assert binary.read_bytes() == whole
    other = tmp_path / "other"
    assert compiled_predictor(booster, 5, other) is not None
    (fewer,) = other.glob("*.o")
    binary.write_bytes(fewer.read_bytes())  # whole, but not this model's trees
    predict = compiled_predictor(booster, None, tmp_path)
    assert predict is not None and np.array_equal(predict(x, 1), want)
    assert binary.read_bytes() == whole


def test_a_compiler_failure_keeps_lightgbm(booster, tmp_path, monkeypatch):
    def fail(*_):
        raise OSError("read-only file system")

    monkeypatch.setattr(compiled, "_compiled", fail)
    with pytest.warns(RuntimeWarning, match="could not be compiled.*read-only"):
        assert compiled_predictor(booster, None, tmp_path) is None


def test_without_lleaves_lightgbm_scores_and_a_warning_says_why(booster, tmp_path,
                                                                monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lleaves", None)  # `import lleaves` now fails
    with pytest.warns(RuntimeWarning, match="could not be compiled.*lleaves"):
        assert compiled_predictor(booster, None, tmp_path) is None


@pytest.mark.slow
def test_a_loaded_recommender_scores_compiled_and_answers_as_lightgbm_would(recommender,
                                                                            synthetic):
    model = recommender.model
    assert model.compiled is not None
    frame = recommender.feature_frame(None, "a light comedy")
    x = frame.select(model.features).to_numpy()
    assert np.array_equal(model.predict_array(x, 1), model.booster.predict(
        x, num_iteration=model.best_iteration or None, num_threads=1))
    users = [None, *synthetic.interactions["user_id"].unique().sort().head(3).to_list()]
    asked = [(u, text, 10, None, None) for u in users
             for text in ("a light comedy", "something dark and slow, nothing from the 80s")]
    with_compiled = recommender.answer(asked, alone=False)
    kept, model.compiled = model.compiled, None
    try:
        plain = recommender.answer(asked, alone=False)
    finally:
        model.compiled = kept
    for a, b in zip(with_compiled, plain, strict=True):
        assert [(i.item_id, i.score, [r.text for r in i.reasons]) for i in a.items] == \
               [(i.item_id, i.score, [r.text for r in i.reasons]) for i in b.items]
