import numpy as np

from encoders.text import TextEncoder


def test_vectors_are_normalised_and_cached(tmp_path):
    texts = ["a funny film from the '90s", "a scary movie", "a funny film from the '90s"]
    first = TextEncoder(cache_dir=tmp_path, show_progress=False)
    v = first.encode(texts)
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v[0], v[2])
    assert v[0] @ v[1] < 0.9

    again = TextEncoder(cache_dir=tmp_path, show_progress=False)
    assert np.array_equal(again.encode(texts), v)
    assert again._model is None, "cached texts must not load the model"


def test_cache_writes_shards_and_folds_them_into_one_file(tmp_path, monkeypatch):
    import encoders.text as text

    monkeypatch.setattr(text, "MAX_SHARDS", 2)
    enc = TextEncoder(cache_dir=tmp_path, show_progress=False)
    vectors = {t: enc.encode([t])[0] for t in ("one", "two", "three")}
    main = tmp_path / f"text-{enc.fingerprint}.npz"
    assert main.exists() and not list(tmp_path.glob("text-*.*.npz")), "third write folds"
    enc.encode(["four"])
    assert len(list(tmp_path.glob(f"text-{enc.fingerprint}.*.npz"))) == 1
    again = TextEncoder(cache_dir=tmp_path, show_progress=False)
    for t, v in vectors.items():
        assert np.array_equal(again.encode([t])[0], v)
    again.encode(["four"])
    assert again._model is None, "main file and shards are both read"
