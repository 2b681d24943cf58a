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
