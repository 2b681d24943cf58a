"""The sentence-transformer run by ONNX Runtime: the same function, a fraction of the cost.

One short request through PyTorch's eager modules cost ~14 ms on one core, most of it
per-module Python dispatch, not arithmetic; the same graph in ONNX Runtime takes ~5 ms, and
its vectors agree with PyTorch's to float precision (cosine >= 0.9999999 on every text
tried; tests/test_encoder.py holds it to that). Dynamic int8 quantisation was measured too
(~2.4 ms) and rejected: cosines fell to 0.96, which moves rankings.

The whole sentence-transformer (transformer, pooling, normalisation) is exported once per
model fingerprint to `<dir>/<fingerprint>.onnx`, atomically, so concurrent processes never
read half a file; the tokenizer stays the model's own, in Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recdata.atomic_io import atomic_path

OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export(model: Any, target: Path) -> Path:
    """Write `model` (a loaded SentenceTransformer) as an ONNX graph from token ids to its
    sentence embedding, with batch and sequence length dynamic."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self, st: Any) -> None:
            super().__init__()
            self.st = st

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.st({"input_ids": input_ids, "attention_mask": attention_mask,
                            "token_type_ids": token_type_ids})["sentence_embedding"]

    sample = model.tokenizer(["a sample request"], padding=True, return_tensors="pt")
    args = tuple(sample.get(n, torch.zeros_like(sample["input_ids"])) for n in INPUTS)
    tmp, target = atomic_path(Path(target))
    import warnings

    with warnings.catch_warnings():  # tracer notes about Python branches on shapes
        warnings.simplefilter("ignore")
        torch.onnx.export(Graph(model).eval(), args, str(tmp), input_names=list(INPUTS),
                          output_names=["embedding"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in INPUTS},
                                        "embedding": {0: "batch"}})
    os.replace(tmp, target)
    return target


class OnnxEncoder:
    """`encode(texts)` -> float32 vectors, L2-normalised, from an exported graph.

    `threads` is what a batch runs on (a server's 1: its concurrent requests are the
    parallelism). `lone_threads`, when more, opens a second session of the same graph for a
    single text: a request computed alone has the other cores idle, and its encode is the
    longest step of its critical path (one 22-token request 5.9 -> 3.6 ms on two cores). That
    session's threads sleep between calls instead of spinning (ONNX Runtime's default), so
    they cost nothing while batches run; it holds its own copy of the weights (~90 MB)."""

    def __init__(self, graph: Path, tokenize: Tokenize, threads: int | None = None,
                 lone_threads: int | None = None) -> None:
        self.session = _session(graph, threads)
        self.lone = _session(graph, lone_threads, spin=False) \
            if lone_threads and lone_threads > (threads or os.cpu_count() or 1) else None
        self.tokenize = tokenize
        self.wants = [i.name for i in self.session.get_inputs()]

    @classmethod
    def for_model(cls, model_path: Path, fingerprint: str, directory: Path,
                  load_model: Callable[[], Any], threads: int | None = None,
                  lone_threads: int | None = None) -> OnnxEncoder:
        """The graph of the model at `model_path`, exported on first use. `load_model` (the
        SentenceTransformer) is called only to export, or when the directory has no fast
        tokenizer file: a process whose graph exists never imports sentence-transformers
        (~4-7 s of every start-up) nor PyTorch."""
        graph = Path(directory) / f"{fingerprint}.onnx"
        if not graph.exists():
            export(load_model(), graph)
        tokenize = fast_tokenizer(Path(model_path))
        if tokenize is None:
            tokenize = _model_tokenizer(load_model())
        try:
            return cls(graph, tokenize, threads, lone_threads)
        except Exception:
            # a damaged export (cut short by a full disk, edited): it is a cache, so it is
            # made again from the model; a second failure is the model's, and is raised
            graph.unlink(missing_ok=True)
            export(load_model(), graph)
            return cls(graph, tokenize, threads, lone_threads)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False,
               desc: str = "encoding", alone: bool = True) -> np.ndarray:
        """`alone`: nothing else is computing on this machine's cores, so a single text may
        take the lone session's threads (False under load: they would take a core from
        another request's work for less than they give this one)."""
        from tqdm import tqdm

        session = self.lone if alone and self.lone is not None and len(texts) == 1 \
            else self.session
        if 1 < len(texts) <= batch_size:  # a few texts of any lengths (a server's batch)
            return _normalised(self._grouped(session, texts))
        out = []
        # similar lengths batched together pad less
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch",
                          disable=not progress or len(texts) <= batch_size):
            tokens = self.tokenize([texts[i] for i in order[start:start + batch_size]])
            out.append(session.run(None, self._feed(tokens))[0])
        if not out:
            return np.zeros((0, self.session.get_outputs()[0].shape[-1] or 0), np.float32)
        vectors = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(out)
        return _normalised(vectors)

    def _grouped(self, session: Any, texts: list[str]) -> np.ndarray:
        """A few texts tokenized once, then run in the calls `padding_groups` picks, each
        cut to its own longest text. Right padding is what lets a group drop the columns
        past its longest; a tokenizer that pads on the left, or gives no mask to read the
        lengths from, runs as one call."""
        tokens = self.tokenize(texts)
        mask = tokens.get("attention_mask")
        lengths = mask.sum(axis=1) if mask is not None else None
        if lengths is None or not np.array_equal(
                mask != 0, np.arange(mask.shape[1]) < lengths[:, None]):
            return session.run(None, self._feed(tokens))[0]
        groups = padding_groups(lengths)
        parts = [session.run(None, self._feed(
            {n: v[rows, :max(int(lengths[rows].max()), 1)] for n, v in tokens.items()}))[0]
            for rows in groups]
        vectors = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        vectors[np.concatenate(groups)] = np.concatenate(parts)
        return vectors

    def _feed(self, tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's inputs from the tokenizer's arrays (a tokenizer without token types
        gets zeros)."""
        return {n: tokens[n] if n in tokens else np.zeros_like(tokens["input_ids"])
                for n in self.wants}


# What one more session call costs, in tokens of padding a row. On one thread a 16-token
# text alone took 8.3 ms and four in one call 22.3 ms: ~3.5 ms is the call's own, ~0.3 ms a
# token past ~16 tokens, less below. Chosen by timing the encode alone over random batches
# of the benchmark's requests (CPU a text, 4 rounds alternated with one padded call): at 12
# the short generated requests were split too often (batches of 4: +5%); at 20, generated
# batches of 4 cost the same and of 8 -7%, hand-written ones of 4 -13% and of 8 -21%; 30
# gave no more.
CALL_TOKENS = 20.0


def padding_groups(lengths: np.ndarray, call_tokens: float = CALL_TOKENS) -> list[np.ndarray]:
    """Which texts to encode together: the split of the texts, by token count, that costs
    least when a call costs `call_tokens` plus its rows times its longest row. Past a few
    tokens a row's cost is linear in its padded length, so one call for texts of 9 and 60
    tokens pays for 120 where two pay for 69 and a call: people's requests vary that much
    (8 to 60 tokens), and a server's batch of eight of them ran ~20% cheaper split. The
    best split of texts sorted by length is contiguous, found exactly by a pass over the
    sorted lengths (n <= a batch, so n^2 small steps)."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order].astype(np.float64)
    n = len(ordered)
    best = np.zeros(n + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        # the last group is ordered[i:j]: its rows pay for its longest, ordered[j - 1]
        costs = best[:j] + call_tokens + (j - np.arange(j)) * ordered[j - 1]
        start[j] = int(np.argmin(costs))
        best[j] = costs[start[j]]
    groups = []
    j = n
    while j > 0:
        groups.append(order[start[j]:j])
        j = int(start[j])
    return groups[::-1]


def _normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


Tokenize = Callable[[list[str]], dict[str, np.ndarray]]


def _session(graph: Path, threads: int | None, spin: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def max_tokens(st_config: dict[str, Any], tokenizer_config: dict[str, Any]) -> int:
    """The sentence-transformer's own limit (sentence_bert_config.json), else the
    tokenizer's, else BERT's 512: what SentenceTransformer truncates at."""
    limit = st_config.get("max_seq_length")
    if limit is None:
        limit = tokenizer_config.get("model_max_length")
    return int(limit) if limit and int(limit) < 10**6 else 512


def fast_tokenizer(model_path: Path) -> Tokenize | None:
    """The model's tokenizer read straight from its `tokenizer.json` by the `tokenizers`
    library (what transformers' fast tokenizer wraps), padding to the batch's longest and
    truncating as SentenceTransformer does; None when the directory has no such file.
    tests/test_encoder.py holds its ids equal to the transformers tokenizer's."""
    file = model_path / "tokenizer.json"
    if not file.exists():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(file))
    config = _read_json(model_path / "tokenizer_config.json")
    st_config = _read_json(model_path / "sentence_bert_config.json")
    pad = config.get("pad_token") or _read_json(
        model_path / "special_tokens_map.json").get("pad_token") or "[PAD]"
    pad = pad["content"] if isinstance(pad, dict) else str(pad)
    pad_id = tokenizer.token_to_id(pad)
    if pad_id is None:
        return None
    tokenizer.enable_truncation(max_length=max_tokens(st_config, config))
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad)
    lower = bool(st_config.get("do_lower_case"))

    def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
        encoded = tokenizer.encode_batch([t.lower() for t in texts] if lower else texts)
        return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64)}

    return tokenize


def _model_tokenizer(model: Any) -> Tokenize:
    """The loaded SentenceTransformer's own tokenizer (a model without tokenizer.json)."""
    limit = int(model.max_seq_length or 512)

    def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
        tokens = model.tokenizer(texts, padding=True, truncation=True, max_length=limit,
                                 return_tensors="np")
        return {n: np.asarray(v, dtype=np.int64) for n, v in tokens.items()}

    return tokenize
