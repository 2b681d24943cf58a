"""`tune_encoder()`: instruction-tune the sentence-transformer bi-encoder (InstructRec-style).

A request (instruction + a summary of the user's recent history, built by the caller) should
land next to the item the user went on to choose. The loss is the library's
MultipleNegativesRankingLoss: every other positive in the batch is a negative, plus exactly
`hard_negatives` caller-chosen hard negatives per row.

The loop is written here over the SentenceTransformer module rather than through
`SentenceTransformerTrainer` or `model.fit`, because both need the `datasets` (and the trainer
`accelerate`) packages, which the project does not install; a plain loop also makes the seeding,
the batch order and the per-step loss explicit.

Choices worth knowing:

- Rows with fewer than `hard_negatives` negatives are filled with item texts drawn (seeded,
  uniformly) from the distinct positives and negatives of all rows, never the row's own positive
  or a repeat, so every row keeps its query and the loss sees the same number of columns per
  row. Rows with more keep the first `hard_negatives` (the caller orders them hardest first).
  A negative equal to its own positive is treated as missing. `tuning.json` records how many
  slots were filled.
- Batches never hold two rows whose item would be a false in-batch negative for the other (same
  positive, or one row's negative is another's positive): popular items recur across requests.
- Training runs at `max_seq_length`; the saved model keeps the base model's own limit, so at
  inference the tuned encoder reads texts as the base model did.
- The result is a normal sentence-transformers directory `out_root/encoder-<key>`, keyed by
  sha1(examples, config, base model fingerprint), written to a temporary directory and renamed.
  A directory with a matching `tuning.json` is returned without training.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recdata.errors import ConfigError

META_FILE = "tuning.json"
WEIGHT_DECAY = 0.01      # as sentence-transformers' fit: none on biases and LayerNorm
MAX_GRAD_NORM = 1.0
OPEN_BATCHES = 64        # how far the duplicate-free batcher looks before starting a new batch


class EncoderTuneConfig(BaseModel):
    """How the bi-encoder is tuned. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_seq_length: int = Field(128, ge=8)
    seed: int = 0
    hard_negatives: int = Field(1, ge=0)
    scale: float = Field(20.0, gt=0)
    # a seeded sample of this many rows bounds the wall-clock on CPU (None: every row)
    max_examples: int | None = Field(None, ge=1)


@dataclass
class TunedEncoder:
    """A tuned model directory (loadable by `TextEncoder(model_path=path)`) and its record.

    `model` is the in-memory SentenceTransformer when this call trained it, None when the
    directory came from the cache or `load()`; `cached` says which.
    """

    path: Path
    key: str
    meta: dict[str, Any]
    cached: bool = False
    model: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> TunedEncoder:
        path = Path(path)
        meta_file = path / META_FILE
        if not meta_file.exists():
            raise ConfigError(f"tuned encoder path {str(path)!r} has no {META_FILE}; "
                              "it was not written by tune_encoder")
        meta = json.loads(meta_file.read_text())
        return cls(path=path, key=meta["key"], meta=meta, cached=True)


# ---------------------------------------------------------------- inputs and the cache key

def _validate(examples: pl.DataFrame) -> pl.DataFrame:
    """The three columns, checked, with null negatives read as none."""
    expected = {"query": pl.String, "positive": pl.String, "negatives": pl.List(pl.String)}
    for name, dtype in expected.items():
        if name not in examples.columns:
            raise ConfigError(f"tuning examples lack column {name!r}; expected columns "
                              f"query: str, positive: str, negatives: list[str], "
                              f"got {examples.columns}")
        if examples.schema[name] != dtype:
            raise ConfigError(f"tuning examples column {name!r} has type "
                              f"{examples.schema[name]}, expected {dtype}")
    if examples.height == 0:
        raise ConfigError("tuning examples are empty; nothing to tune on")
    for name in ("query", "positive"):
        nulls = examples[name].null_count()
        if nulls:
            raise ConfigError(f"tuning examples column {name!r} has {nulls} null value(s)")
    return examples.select(
        "query", "positive",
        pl.col("negatives").fill_null(pl.lit([], dtype=pl.List(pl.String)))
        .list.drop_nulls().alias("negatives"),
    )


def examples_hash(examples: pl.DataFrame) -> str:
    """Content hash of the three columns, in row order (the order feeds the seeded shuffle)."""
    ex = _validate(examples)
    h = hashlib.sha1(str(ex.height).encode())
    for column in (ex["query"], ex["positive"], ex["negatives"].list.join("\x1e")):
        h.update(column.str.join("\x1f").item().encode())
        h.update(b"\x1d")
    return h.hexdigest()[:16]


def _local_model(base_model: Path) -> Path:
    base_model = Path(base_model)
    if not (base_model / "config.json").exists() and not (base_model / "modules.json").exists():
        raise ConfigError(f"base_model {str(base_model)!r} is not a local model directory "
                          "(no config.json or modules.json)")
    return base_model


def tuning_key(cfg: EncoderTuneConfig, examples: pl.DataFrame, base_model: Path) -> str:
    """The cache key: sha1(examples content, config, base model fingerprint)[:16]."""
    from encoders.text import model_fingerprint

    return _key(examples_hash(examples), cfg, model_fingerprint(_local_model(base_model)))


def _key(ex_hash: str, cfg: EncoderTuneConfig, fingerprint: str) -> str:
    parts = (ex_hash, cfg.model_dump_json(), fingerprint)
    return hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- rows -> id matrices

@dataclass
class _Prepared:
    texts: np.ndarray        # item texts by id (object array)
    queries: np.ndarray      # query text per row (object array)
    positive: np.ndarray     # item id per row
    negatives: np.ndarray    # (rows, k) item ids
    filled: int              # negative slots drawn because the row had too few


def _prepare(ex: pl.DataFrame, k: int, rng: np.random.Generator) -> _Prepared:
    """Item texts as ids; exactly k distinct negatives per row, none equal to its positive."""
    n = ex.height
    heads = ex.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), "positive",
                      pl.col("negatives").list.unique(maintain_order=True).list.head(k))
    vocab = (pl.concat([heads["positive"], heads["negatives"].explode().drop_nulls()])
             .unique(maintain_order=True))
    ids = pl.DataFrame({"text": vocab}).with_row_index("id")
    positive = (heads.join(ids, left_on="positive", right_on="text", how="left",
                           maintain_order="left")["id"].to_numpy().astype(np.int64))
    negatives = np.full((n, k), -1, dtype=np.int64)
    if k:
        given = (heads.select("row", "negatives").explode("negatives").drop_nulls()
                 .with_columns(pl.int_range(pl.len()).over("row").alias("slot"))
                 .join(ids, left_on="negatives", right_on="text", how="inner"))
        rows, slots = given["row"].to_numpy(), given["slot"].to_numpy()
        negatives[rows, slots] = given["id"].to_numpy()
        negatives[negatives == positive[:, None]] = -1
        # given negatives first, gaps last, so slot j is filled only after slots < j are known
        gaps_last = np.argsort(negatives < 0, axis=1, kind="stable")
        negatives = np.take_along_axis(negatives, gaps_last, axis=1)
    filled = int((negatives < 0).sum())
    if filled and len(vocab) < k + 1:
        raise ConfigError(f"hard_negatives={k} needs at least {k + 1} distinct item texts to "
                          f"fill rows with fewer negatives; the examples have {len(vocab)}")
    for j in range(k):
        todo = np.flatnonzero(negatives[:, j] < 0)
        while todo.size:
            draw = rng.integers(0, len(vocab), size=todo.size)
            clash = (draw == positive[todo]) | (negatives[todo] == draw[:, None]).any(axis=1)
            negatives[todo[~clash], j] = draw[~clash]
            todo = todo[clash]
    return _Prepared(texts=vocab.to_numpy().astype(object),
                     queries=ex["query"].to_numpy().astype(object),
                     positive=positive, negatives=negatives, filled=filled)


def _batches(prep: _Prepared, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Seeded shuffle into batches without false in-batch negatives (first fit over the open
    batches: a row joins the first whose positives and negatives do not clash with it)."""
    open_: list[tuple[list[int], set[int], set[int]]] = []  # rows, positives, all item ids
    done: list[np.ndarray] = []
    for row in rng.permutation(len(prep.positive)).tolist():
        pos = int(prep.positive[row])
        negs = set(prep.negatives[row].tolist())
        i = next((i for i, (_, positives, items) in enumerate(open_)
                  if pos not in items and not (negs & positives)), None)
        if i is None:
            if len(open_) == OPEN_BATCHES:
                done.append(np.array(open_.pop(0)[0]))
            open_.append(([], set(), set()))
            i = len(open_) - 1
        rows, positives, items = open_[i]
        rows.append(row)
        positives.add(pos)
        items.add(pos)
        items.update(negs)
        if len(rows) == batch_size:
            done.append(np.array(open_.pop(i)[0]))
    done.extend(np.array(rows) for rows, _, _ in open_)
    return done


# ---------------------------------------------------------------- training

@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and random for the block, then restore the caller's generators."""
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _load_model(base_model: Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(base_model), device="cpu")


def _train(cfg: EncoderTuneConfig, ex: pl.DataFrame, base_model: Path,
           progress: bool) -> tuple[Any, dict[str, Any]]:
    """Train a copy of the base model; returns it and the numbers for `tuning.json`."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from tqdm.auto import tqdm

    rng = np.random.default_rng(cfg.seed)
    if cfg.max_examples is not None and ex.height > cfg.max_examples:
        keep = np.sort(rng.choice(ex.height, size=cfg.max_examples, replace=False))
        ex = ex[keep]
    prep = _prepare(ex, cfg.hard_negatives, rng)
    with _seeded(cfg.seed):
        model = _load_model(base_model)
        saved_max_len = model.max_seq_length
        model.max_seq_length = cfg.max_seq_length
        loss_fn = MultipleNegativesRankingLoss(model, scale=cfg.scale)
        epochs = [_batches(prep, cfg.batch_size, rng) for _ in range(cfg.epochs)]
        total = sum(len(b) for b in epochs)
        decay = [p for n, p in model.named_parameters() if not _no_decay(n)]
        no_decay = [p for n, p in model.named_parameters() if _no_decay(n)]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        warmup = int(total * cfg.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup
            else max(0.0, (total - s) / max(1, total - warmup)))
        step_losses: list[float] = []
        epoch_losses: list[float] = []
        started = time.perf_counter()
        model.train()
        bar = tqdm(total=total, desc="tuning encoder", unit="step", disable=not progress)
        for batches in epochs:
            first = len(step_losses)
            for rows in batches:
                columns = [prep.queries[rows], prep.texts[prep.positive[rows]],
                           *(prep.texts[prep.negatives[rows, j]]
                             for j in range(cfg.hard_negatives))]
                features = [model.preprocess(col.tolist()) for col in columns]
                loss = loss_fn(features, None)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step_losses.append(float(loss.detach()))
                bar.update()
                bar.set_postfix(loss=f"{step_losses[-1]:.3f}")
            epoch_losses.append(float(np.mean(step_losses[first:])))
        bar.close()
        seconds = time.perf_counter() - started
        model.eval()
        model.max_seq_length = saved_max_len
    stats = {
        "rows": ex.height, "steps": total, "filled_negatives": prep.filled,
        "train_max_seq_length": cfg.max_seq_length, "saved_max_seq_length": saved_max_len,
        "loss_per_epoch": [round(v, 5) for v in epoch_losses],
        "loss_per_step": [round(v, 5) for v in step_losses],
        "seconds": round(seconds, 2),
        "examples_per_s": round(ex.height * cfg.epochs / max(seconds, 1e-9), 2),
    }
    return model, stats


def _no_decay(name: str) -> bool:
    return "bias" in name or "LayerNorm" in name or "layer_norm" in name


# ---------------------------------------------------------------- the entry

def _save_atomic(model: Any, meta: dict[str, Any], target: Path) -> None:
    """Save into a temporary directory beside `target`, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        model.save(str(tmp), create_model_card=False)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        stale = None
        if target.exists():  # a directory that did not match: move aside, then drop it
            stale = target.with_name(f".{target.name}.{os.getpid()}.stale")
            os.replace(target, stale)
        os.replace(tmp, target)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tune_encoder(cfg: EncoderTuneConfig, examples: pl.DataFrame, base_model: Path,
                 out_root: Path, progress: bool = True) -> TunedEncoder:
    """Tune `base_model` on (query, positive, negatives) rows, or return the cached result.

    `examples` needs `query: str`, `positive: str`, `negatives: list[str]` (other columns are
    ignored). The directory `out_root/encoder-<key>` is reused when its `tuning.json` matches.
    """
    from encoders.text import model_fingerprint

    ex = _validate(examples)
    base_model = _local_model(base_model)
    ex_hash = examples_hash(ex)
    fingerprint = model_fingerprint(base_model)
    key = _key(ex_hash, cfg, fingerprint)
    target = Path(out_root) / f"encoder-{key}"
    expected = {"key": key, "config": cfg.model_dump(), "base_fingerprint": fingerprint,
                "examples_hash": ex_hash}
    if (target / META_FILE).exists():
        cached = TunedEncoder.load(target)
        if all(cached.meta.get(k) == v for k, v in expected.items()):
            return cached
    model, stats = _train(cfg, ex, base_model, progress)
    meta = {**expected, "base_model": str(base_model), **stats}
    _save_atomic(model, meta, target)
    return TunedEncoder(path=target, key=key, meta=meta, cached=False, model=model)
