"""Instruction tuning of the bi-encoder, on a tiny BERT built here (no downloads)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from encoders.tuning import EncoderTuneConfig, TunedEncoder, tune_encoder, tuning_key
from recdata.errors import ConfigError

# A toy "instruction -> item" task: request word a_i must come to mean item word b_i.
REQUEST = [f"req{i}" for i in range(12)]
ITEM = [f"item{i}" for i in range(12)]
PAIRS = [(i, j) for i in range(12) for j in range(12) if i != j]
TRAIN = [PAIRS[i] for i in np.random.default_rng(3).permutation(len(PAIRS))[:96]]
HELD_OUT = [p for p in PAIRS if p not in TRAIN]


def _rows(pairs: list[tuple[int, int]]) -> tuple[list[str], list[str]]:
    queries = [f"i want {REQUEST[i]} and {REQUEST[j]}" for i, j in pairs]
    positives = [f"a film of {ITEM[i]} with {ITEM[j]}" for i, j in pairs]
    return queries, positives


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A tiny sentence-transformer (WordPiece trained here, 2-layer BERT, mean pooling)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    queries, positives = _rows(PAIRS)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(queries + positives + ["a history of films"],
                            trainers.WordPieceTrainer(vocab_size=200, special_tokens=special))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                     cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                     model_max_length=64)
    import torch

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32,
                                num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=64))
    hf_dir = root / "hf"
    hf_tok.save_pretrained(hf_dir)
    bert.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
        device="cpu")
    st_dir = root / "st"
    model.save(str(st_dir), create_model_card=False)
    return st_dir


@pytest.fixture(scope="module")
def examples() -> pl.DataFrame:
    queries, positives = _rows(TRAIN)
    # some rows with a hard negative, some without (filled by tune_encoder)
    negatives = [[positives[(n + 1) % len(positives)]] if n % 2 else [] for n in range(len(TRAIN))]
    return pl.DataFrame({"query": queries, "positive": positives, "negatives": negatives},
                        schema={"query": pl.String, "positive": pl.String,
                                "negatives": pl.List(pl.String)})


FAST = EncoderTuneConfig(epochs=6, batch_size=16, lr=5e-3, max_seq_length=32, hard_negatives=1)


@pytest.fixture(scope="module")
def tuned(base_model, examples, tmp_path_factory) -> TunedEncoder:
    return tune_encoder(FAST, examples, base_model, tmp_path_factory.mktemp("out"),
                        progress=False)


def _margin(model, pairs: list[tuple[int, int]]) -> float:
    """mean cos(query, its item) - mean cos(query, another query's item)."""
    queries, positives = _rows(pairs)
    q = model.encode(queries, normalize_embeddings=True)
    p = model.encode(positives, normalize_embeddings=True)
    return float((q * p).sum(1).mean() - (q * np.roll(p, 1, axis=0)).sum(1).mean())


def test_tuning_moves_queries_towards_their_items(tuned, base_model):
    """Measured on request/item pairs the model never saw, so it learnt the words."""
    from sentence_transformers import SentenceTransformer

    before = _margin(SentenceTransformer(str(base_model), device="cpu"), HELD_OUT)
    after = _margin(tuned.model, HELD_OUT)
    assert after > before + 0.25, (before, after)
    losses = tuned.meta["loss_per_epoch"]
    assert losses[-1] < losses[0]


def test_saved_directory_round_trips_through_text_encoder(tuned, examples):
    from sentence_transformers import SentenceTransformer

    from encoders.text import TextEncoder

    texts = examples["query"].head(5).to_list() + examples["positive"].head(5).to_list()
    in_memory = tuned.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    via_text_encoder = TextEncoder(model_path=tuned.path, show_progress=False).encode(texts)
    np.testing.assert_allclose(via_text_encoder, in_memory, atol=1e-5)
    offline = SentenceTransformer(str(tuned.path), device="cpu", local_files_only=True)
    np.testing.assert_allclose(offline.encode(texts, normalize_embeddings=True), in_memory,
                               atol=1e-5)
    meta = json.loads((tuned.path / "tuning.json").read_text())
    assert meta["key"] == tuned.key and tuned.path.name == f"encoder-{tuned.key}"
    assert meta["rows"] == examples.height and meta["steps"] == len(meta["loss_per_step"])
    assert meta["filled_negatives"] == examples.height // 2
    assert meta["saved_max_seq_length"] == 64 and offline.max_seq_length == 64
    assert not list(tuned.path.parent.glob(".*")), "no temporary directory left behind"


def test_cache_returns_without_training_and_config_changes_the_key(
        tuned, base_model, examples, monkeypatch):
    import encoders.tuning as tuning

    def fail(*args, **kwargs):
        raise AssertionError("trained again despite a matching cache")

    monkeypatch.setattr(tuning, "_train", fail)
    again = tune_encoder(FAST, examples, base_model, tuned.path.parent, progress=False)
    assert again.cached and again.path == tuned.path and again.key == tuned.key
    assert TunedEncoder.load(tuned.path).meta["loss_per_step"] == tuned.meta["loss_per_step"]
    assert tuning_key(FAST, examples, base_model) == tuned.key
    changed = FAST.model_copy(update={"lr": 1e-3})
    assert tuning_key(changed, examples, base_model) != tuned.key
    assert tuning_key(FAST, examples.head(50), base_model) != tuned.key
    with pytest.raises(AssertionError, match="trained again"):
        tune_encoder(changed, examples, base_model, tuned.path.parent, progress=False)


def test_same_seed_gives_the_same_model_and_cap_samples_rows(base_model, examples, tmp_path):
    cfg = FAST.model_copy(update={"epochs": 1, "max_examples": 40, "hard_negatives": 2})
    a = tune_encoder(cfg, examples, base_model, tmp_path / "a", progress=False)
    b = tune_encoder(cfg, examples, base_model, tmp_path / "b", progress=False)
    assert a.key == b.key and a.meta["rows"] == 40
    assert a.meta["loss_per_step"] == b.meta["loss_per_step"]
    texts = examples["query"].head(4).to_list()
    np.testing.assert_array_equal(a.model.encode(texts), b.model.encode(texts))


def test_prepared_negatives_are_distinct_and_never_the_positive():
    from encoders.tuning import _batches, _prepare, _validate

    ex = _validate(pl.DataFrame({
        "query": ["q0", "q1", "q2", "q3", "q4"],
        "positive": ["a", "b", "a", "c", "d"],
        "negatives": [["b", "b", "c"], ["b"], None, ["x", "y", "z", "w"], []],
    }, schema={"query": pl.String, "positive": pl.String, "negatives": pl.List(pl.String)}))
    rng = np.random.default_rng(0)
    prep = _prepare(ex, 2, rng)
    texts = prep.texts
    assert texts[prep.negatives[0]].tolist() == ["b", "c"]  # duplicate dropped, first k kept
    assert texts[prep.negatives[3]].tolist() == ["x", "y"]
    assert prep.filled == 2 + 2 + 2  # row 1 ("b" is its own positive), rows 2 and 4
    for row in range(5):
        negs = prep.negatives[row]
        assert len(set(negs.tolist())) == 2 and prep.positive[row] not in negs
    for batch in _batches(prep, 4, rng):
        pos = prep.positive[batch]
        assert len(set(pos.tolist())) == len(batch)
        assert not set(prep.negatives[batch].ravel().tolist()) & set(pos.tolist())
    assert sorted(np.concatenate(_batches(prep, 4, rng)).tolist()) == list(range(5))


@pytest.mark.parametrize(("frame", "column"), [
    (pl.DataFrame({"query": ["q"], "negatives": [["n"]]}), "positive"),
    (pl.DataFrame({"query": ["q"], "positive": [1], "negatives": [["n"]]}), "positive"),
    (pl.DataFrame({"query": ["q"], "positive": ["p"], "negatives": ["n"]}), "negatives"),
    (pl.DataFrame({"query": [None, "q"], "positive": ["p", "p"], "negatives": [["n"], []]},
                  schema={"query": pl.String, "positive": pl.String,
                          "negatives": pl.List(pl.String)}), "query"),
])
def test_bad_examples_frame_names_the_column(frame, column, base_model, tmp_path):
    with pytest.raises(ConfigError, match=repr(column)):
        tune_encoder(FAST, frame, base_model, tmp_path, progress=False)


def test_config_rejects_unknown_keys_and_a_bad_base_model(examples, tmp_path):
    with pytest.raises(ValueError, match="extra"):
        EncoderTuneConfig(epoch=2)
    with pytest.raises(ConfigError, match="not a local model directory"):
        tune_encoder(FAST, examples, tmp_path, tmp_path / "out", progress=False)
