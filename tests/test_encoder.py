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


TEXTS = ["a funny film from the '90s", "no horror please",
         "something like Alien but funnier, not too long, for a rainy Sunday with my kids",
         "x", "ünïcödé and emoji 🎬 " * 45,  # past the model's 256 tokens: truncated alike
         "a war drama about friendship, released before 1980, with a strong female lead"]


def test_onnx_runtime_computes_the_torch_vectors(tmp_path):
    """Serving encodes with ONNX Runtime; evaluation figures came from the same function."""
    onnx = TextEncoder(show_progress=False, persist=False, cache_dir=tmp_path, threads=1)
    torch = TextEncoder(show_progress=False, persist=False, runtime="torch")
    a, b = onnx.encode(TEXTS), torch.encode(TEXTS)
    assert onnx.runtime == "onnx" and a.dtype == np.float32
    assert np.abs(a - b).max() < 1e-5
    assert (a * b).sum(1).min() > 0.999999
    # one request alone gets the vector it gets in a batch, split by length or padded (a
    # call of more texts than batch_size: chunks of sorted texts, each padded to its longest)
    assert np.abs(onnx.encode_uncached(TEXTS[2:3])[0] - a[2]).max() < 1e-5
    padded = TextEncoder(show_progress=False, persist=False, cache_dir=tmp_path, threads=1,
                         batch_size=2)
    assert np.abs(padded.encode_uncached(TEXTS) - a).max() < 1e-5
    graph = tmp_path / "onnx" / f"{onnx.fingerprint}.onnx"
    assert graph.exists(), "exported once per model, beside the cache"
    stamp = graph.stat().st_mtime_ns
    TextEncoder(show_progress=False, persist=False, cache_dir=tmp_path).encode_uncached(["y"])
    assert graph.stat().st_mtime_ns == stamp, "a second encoder reuses the export"


def test_a_lone_text_runs_on_its_own_session_with_the_same_vectors(tmp_path):
    """A server's batches run on one thread; a text encoded alone gets a session with more
    (its other cores are idle), computing the same function; not while the server says its
    cores are busy (`alone` False)."""
    enc = TextEncoder(show_progress=False, persist=False, cache_dir=tmp_path, threads=1,
                      lone_threads=2)
    batch = enc.encode_uncached(TEXTS)
    onnx = enc._onnx
    assert onnx.lone is not None and onnx.lone is not onnx.session
    calls = []
    for name, attr in (("lone", "lone"), ("batch", "session")):
        run = getattr(onnx, attr).run
        setattr(onnx, attr, type("Spy", (), {"run": lambda self, *a, r=run, n=name:
                                             calls.append(n) or r(*a)})())
    alone = [enc.encode_uncached([t])[0] for t in TEXTS]
    assert calls == ["lone"] * len(TEXTS)
    assert np.abs(np.stack(alone) - batch).max() < 1e-5
    enc.encode_uncached(TEXTS[:2])
    assert calls[-1] == "batch"
    # a server under load (other requests computing on the cores) keeps a lone text to the
    # batch session: the same vector, no second thread
    enc.alone = False
    under_load = enc.encode_uncached([TEXTS[0]])[0]
    assert calls[-1] == "batch"
    assert np.abs(under_load - batch[0]).max() < 1e-5
    # as many threads as a batch gets: no second session
    same = TextEncoder(show_progress=False, persist=False, cache_dir=tmp_path, threads=2,
                       lone_threads=2)
    same.encode_uncached(["x"])
    assert same._onnx.lone is None


def test_padding_groups_is_the_cheapest_contiguous_split():
    """The split a server's batch is encoded in: checked against every split of the sorted
    lengths (brute force), and on the cases it exists for."""
    import itertools

    from encoders.onnx_runtime import padding_groups

    def cost(groups, lengths, call):
        return sum(call + len(g) * lengths[g].max() for g in groups)

    rng = np.random.default_rng(0)
    for _ in range(40):
        lengths = rng.integers(3, 70, size=int(rng.integers(1, 8)))
        groups = padding_groups(lengths, 12.0)
        assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
        ordered = np.sort(lengths)
        brute = min(
            sum(12.0 + (b - a) * ordered[b - 1]
                for a, b in zip((0, *cuts), (*cuts, len(ordered)), strict=True))
            for r in range(len(ordered))
            for cuts in itertools.combinations(range(1, len(ordered)), r))
        assert cost(groups, lengths, 12.0) == brute
    same = padding_groups(np.array([11, 11, 12, 11]))
    assert len(same) == 1, "similar lengths share one call"
    apart = padding_groups(np.array([60, 9, 10, 58]))
    assert sorted(sorted(g.tolist()) for g in apart) == [[0, 3], [1, 2]]


def test_a_batch_of_unequal_texts_runs_split_and_unpadded(tmp_path):
    """Texts of very different lengths are encoded in several calls, each as wide as its
    longest text, and get the vectors each would get alone."""
    enc = TextEncoder(show_progress=False, persist=False, cache_dir=tmp_path, threads=1)
    enc.alone = False
    texts = ["x", "no horror please", TEXTS[4], TEXTS[2], "a scary movie"]
    alone = np.stack([enc.encode_uncached([t])[0] for t in texts])
    onnx = enc._onnx
    widths = []
    run = onnx.session.run

    def spy(out, feed):
        ids, mask = feed["input_ids"], feed["attention_mask"]
        widths.append((len(ids), ids.shape[1], int(mask.sum(1).max())))
        return run(out, feed)

    onnx.session = type("Spy", (), {"run": lambda self, out, feed: spy(out, feed)})()
    batch = enc.encode_uncached(texts)
    assert len(widths) > 1 and sum(n for n, _, _ in widths) == len(texts)
    assert all(width == longest for _, width, longest in widths), "no column of padding only"
    assert np.abs(batch - alone).max() < 1e-5


def test_a_tokenizer_that_pads_on_the_left_runs_one_call(tmp_path):
    """Cutting a group to its longest row drops the columns on the right: with padding on
    the left that would cut real tokens, so such a tokenizer's batch runs whole."""
    enc = TextEncoder(show_progress=False, persist=False, cache_dir=tmp_path, threads=1)
    enc.encode_uncached(["warm"])
    onnx = enc._onnx
    right = onnx.tokenize

    def left(texts):
        tokens = right(texts)
        shift = tokens["attention_mask"].shape[1] - tokens["attention_mask"].sum(1)
        return {n: np.stack([np.roll(row, s) for row, s in zip(v, shift, strict=True)])
                for n, v in tokens.items()}

    onnx.tokenize = left
    widths = []
    run = onnx.session.run
    onnx.session = type("Spy", (), {"run": lambda self, out, feed: widths.append(
        feed["input_ids"].shape) or run(out, feed)})()
    texts = ["x", TEXTS[2], "no horror please"]
    enc.alone = False
    enc.encode_uncached(texts)
    assert widths == [left(texts)["input_ids"].shape]


def test_unknown_runtime_lists_the_valid_ones():
    import pytest

    from recdata.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="onnx, torch"):
        TextEncoder(runtime="tensorrt")


def test_fast_tokenizer_gives_the_transformers_ids():
    """The serving path reads tokenizer.json with `tokenizers` alone; its ids, masks and
    truncation must be the ones SentenceTransformer's tokenizer produces."""
    from sentence_transformers import SentenceTransformer

    from encoders.onnx_runtime import _model_tokenizer, fast_tokenizer
    from encoders.text import default_model_path

    path = default_model_path()
    fast = fast_tokenizer(path)
    assert fast is not None
    reference = _model_tokenizer(SentenceTransformer(str(path), device="cpu"))
    long = "a war drama about friendship " * 100
    for batch in (TEXTS, TEXTS[3:4], [t.upper() for t in TEXTS], [" padded  ", "\tx\n"],
                  [long, "x"]):
        ours, theirs = fast(batch), reference(batch)
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            assert np.array_equal(ours[name], theirs[name]), (name, batch)
    assert fast([long])["input_ids"].shape[1] == 256, "truncated at the model's limit"


def test_an_exported_encoder_starts_without_sentence_transformers(tmp_path):
    """A server or CLI process whose graph exists never imports sentence-transformers or
    PyTorch (seconds of every start-up)."""
    import subprocess
    import sys

    TextEncoder(show_progress=False, persist=False, cache_dir=tmp_path).encode_uncached(["x"])
    code = ("import sys; from encoders.text import TextEncoder; "
            f"v = TextEncoder(cache_dir={str(tmp_path)!r}, persist=False).warm()"
            ".encode_uncached(['a scary movie']); "
            "print(v.shape, 'sentence_transformers' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "(1, 384) False False"
