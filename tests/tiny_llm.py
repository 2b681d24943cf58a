"""A tiny causal LM built from a config and a locally trained BPE tokenizer (no downloads),
shared by the reranker's unit tests and the tests of its harness and online wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ranking.rerank.llm import build_prompt

WORDS = [
    "movie", "film", "comedy", "drama", "thriller", "horror", "romance", "action", "classic",
    "light", "dark", "funny", "sad", "long", "short", "acclaimed", "suspenseful", "nineties",
    "eighties", "watch", "want", "recommend", "something", "nothing", "tonight", "family", "kids",
    "war", "space", "crime", "story", "toy", "star", "wars", "jedi", "contact", "fargo",
    "titanic", "heat", "casino", "copycat", "babe", "alien",
]


def _corpus() -> list[str]:
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(300):
        words = " ".join(rng.choice(WORDS, size=6))
        answer = "Yes" if rng.random() < 0.5 else "No"
        lines.append(build_prompt(words, [words[:20]], words[-15:]).text + f" {answer}")
    return lines


def make_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")
    fast.save_pretrained(path)
    return fast


def make_model(path: Path, tokenizer, arch: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=2048, initializer_range=0.2, **ids)
    else:  # Gemma 3's layout: a sliding-window layer, a global one, shared K/V head
        cfg = Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                               sliding_window=48, max_position_embeddings=2048,
                               layer_types=["sliding_attention", "full_attention"],
                               initializer_range=0.2, **ids)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
