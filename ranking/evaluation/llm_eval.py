"""The LLM reranker's training examples and its paired evaluation: an explicit job, not part
of `make run`, because every request costs a language-model pass (~1 s on 2 cores).

`llm_examples()` turns the ranker's training requests into Yes/No examples: the target is a
"Yes", and LightGBM's own best-scored other candidates are the "No"s (hard negatives, the
mistakes the reranker exists to fix). `evaluate_llm()` takes a fixed, seeded subset of users,
scores their validation and test requests with `ltr_full`, lets the LLM score the top N of
each list, chooses the fusion weight on validation and reports `ltr_llm` beside `ltr_full`
on exactly the same test requests (`ltr_full_subset`), so the comparison is paired.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from ranking.evaluation.config import EvalConfig
from ranking.inputs import RequestBatch
from ranking.queries import prompt_history
from ranking.rerank.llm import LLMRerankConfig, fuse, in_domain_words, order_by
from recdata.atomic_io import write_text_atomic

BELOW = -1e9


class LLMExamplesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[str] = Field(default_factory=lambda: ["intent", "search"])
    requests: int = Field(600, ge=1, description="training requests sampled (seeded)")
    negatives: int = Field(1, ge=1, description="hard negatives per request")
    pool: int = Field(10, ge=1, description="negatives are drawn from the ranker's top this "
                                             "many non-target candidates")
    seed: int = 0


class LLMEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    rerank: LLMRerankConfig = Field(default_factory=lambda: LLMRerankConfig(weight=0.0))
    tasks: list[str] = Field(default_factory=lambda: ["intent"])
    users: int = Field(100, ge=1, description="test users in the paired subset (seeded)")
    weights: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    seed: int = 7


@dataclass
class _Run:
    """The prepared harness objects both jobs start from."""

    cfg: EvalConfig
    prep: Any
    resources: Any
    titles: np.ndarray


def _prepare(cfg: EvalConfig, progress: bool, dataset: Any = None) -> _Run:
    """The ranker `ltr_full` and its inputs, read from `train()`'s manifest (nothing fitted)."""
    from ranking.prepare import prepare, run_dataset
    from ranking.train import require_manifest, run_context

    ds = run_dataset(cfg, dataset)
    prep = prepare(cfg, ds)
    context, _ = run_context(cfg, ds, prep, ["ltr_full"], progress=progress,
                             trained=require_manifest(cfg, ds))
    return _Run(cfg, prep, context.ltr, prep.catalogue.items["title"].to_numpy().astype(str))


def _subset(batch: RequestBatch, rows: np.ndarray) -> RequestBatch:
    return RequestBatch(batch.requests[rows.tolist()], batch.history[rows], batch.n_items)


def _ranked(run: _Run, fit: Any, batch: RequestBatch) -> tuple[Any, np.ndarray]:
    """Candidates of `batch` and ltr_full's score for each (BELOW on padding)."""
    model = run.resources.train("full")
    ex = run.resources.examples(fit, batch)
    scores = model.predict(ex.frame).reshape(ex.cands.idx.shape)
    scores[~ex.cands.valid] = BELOW
    return ex.cands, scores


def llm_examples(cfg: EvalConfig, ex_cfg: LLMExamplesConfig, *, dataset: Any = None,
                 progress: bool = True) -> pl.DataFrame:
    """(instruction, history, title, label) rows from training requests only."""
    run = _prepare(cfg, progress, dataset)
    res = run.resources
    batch = res.train_batch
    keep = np.flatnonzero(batch.requests["task"].is_in(ex_cfg.tasks).to_numpy())
    cands, scores = _ranked(run, res.ltr_fit, batch)
    targets = batch.requests["target_idx"].to_numpy()
    found = keep[(cands.idx[keep] == targets[keep, None]).any(axis=1)]
    rng = np.random.default_rng(ex_cfg.seed)
    chosen = np.sort(rng.choice(found, size=min(ex_cfg.requests, len(found)), replace=False))
    order = np.argsort(-scores[chosen], axis=1, kind="stable")
    ranked = np.take_along_axis(cands.idx[chosen], order, axis=1)
    pool = ranked[:, :ex_cfg.pool + 1]
    noise = rng.random(pool.shape)
    noise[pool == targets[chosen, None]] = np.inf
    negatives = np.take_along_axis(pool, np.argsort(noise, axis=1)[:, :ex_cfg.negatives],
                                   axis=1)
    sub = _subset(batch, chosen)
    history = prompt_history(sub, run.titles)
    words = in_domain_words(LLMRerankConfig(), run.prep.catalogue.schema)
    n, k = len(chosen), ex_cfg.negatives
    return pl.DataFrame({
        "request_id": np.repeat(sub.requests["request_id"].to_numpy(), k + 1),
        "instruction": np.repeat(np.array(sub.instructions, dtype=object), k + 1).tolist(),
        "history": [h for h in history for _ in range(k + 1)],
        "title": run.titles[np.concatenate([targets[chosen, None], negatives], axis=1)
                            ].ravel().tolist(),
        "label": np.tile(np.r_[1, np.zeros(k, dtype=np.int64)], n),
        "system_text": words.system_text, "history_label": words.history_label,
    })


@dataclass
class LLMEvalResult:
    config: LLMEvalConfig
    dataset: str
    users: list[int]
    validation: pl.DataFrame  # task, weight, ndcg@10
    chosen: dict[str, float]
    metrics: pl.DataFrame  # model, task, metric columns (test, paired subset)
    llm_ms: list[float]
    seconds: float

    def save(self) -> dict[str, Path]:
        """Upsert the `ltr_llm` and `ltr_full_subset` rows into quality.csv and write the
        detail (subset, weights, timings) to llm_rerank.json beside it."""
        from ranking.evaluation.result import long_metrics, merge_quality

        out = self.config.evaluation.results_dir
        quality = out / "quality.csv"
        # full ranking only: the subset has no sampled protocol
        new = long_metrics(self.metrics, self.dataset).filter(
            ~pl.col("metric").str.starts_with("sampled"))
        rows = merge_quality(quality, new)
        write_text_atomic(quality, rows.write_csv())
        ms = np.array(self.llm_ms) if self.llm_ms else np.zeros(1)
        detail = out / "llm_rerank.json"
        write_text_atomic(detail, json.dumps({
            "dataset": self.dataset, "users": self.users, "n_users": len(self.users),
            "tasks": self.config.tasks, "top_n": self.config.rerank.top_n,
            "model_path": str(self.config.rerank.model_path or "gemma3-270m (packaged)"),
            "adapter_path": str(self.config.rerank.adapter_path),
            "chosen_weight": self.chosen,
            "validation_ndcg@10": self.validation.to_dicts(),
            "test": self.metrics.to_dicts(),
            "llm_ms_per_request": {"p50": float(np.percentile(ms, 50)),
                                   "p99": float(np.percentile(ms, 99)), "n": len(self.llm_ms)},
            "seconds": round(self.seconds, 1),
        }, indent=2))
        return {"quality": quality, "detail": detail}


def _rankings(batch: RequestBatch, cands: Any, scores: np.ndarray, llm: list[np.ndarray],
              heads: list[np.ndarray], weight: float, model: str, run: _Run) -> pl.DataFrame:
    """Full rankings where each request's head is reordered by the fused score."""
    from ranking.evaluation.harness import _rank_full

    dense = np.full((len(batch), batch.n_items), BELOW * 2)
    for r in range(len(batch)):
        s = scores[r].copy()
        if weight > 0:  # at 0 the ranker's scores stand, ties and all: exactly ltr_full
            head = heads[r]
            order = head[order_by(fuse(s[head], llm[r], weight))]
            s[order] = s.max() + 1.0 + np.arange(len(order))[::-1]  # the head above the rest
        dense[r, cands.idx[r]] = s
    return _rank_full(dense, batch, run.prep, run.cfg.top_k).select(
        pl.lit(model).alias("model"), pl.lit(batch.requests["task"][0]).alias("task"),
        pl.lit("full").alias("protocol"), pl.all())


def evaluate_llm(cfg: LLMEvalConfig, reranker: Any | None = None, *, dataset: Any = None,
                 progress: bool = True) -> LLMEvalResult:
    """The paired evaluation described in the module docstring. `reranker` (an
    `LLMReranker`) defaults to `LLMReranker.load(cfg.rerank)`."""
    from ranking.evaluation.metrics import metrics_of
    from ranking.rerank.llm import LLMReranker
    started = time.perf_counter()
    run = _prepare(cfg.evaluation, progress, dataset)
    reranker = reranker or LLMReranker.load(cfg.rerank)
    reranker.cfg = in_domain_words(reranker.cfg, run.prep.catalogue.schema)
    top_n = cfg.rerank.top_n
    test_users = np.unique(run.prep.batches[("test", cfg.tasks[0])].requests["user_id"]
                           .to_numpy())
    rng = np.random.default_rng(cfg.seed)
    users = np.sort(rng.choice(test_users, size=min(cfg.users, len(test_users)),
                               replace=False))
    llm_ms: list[float] = []
    validation, chosen, frames = [], {}, []
    for task in cfg.tasks:
        per_cut = {}
        for cut, fit in (("val", run.prep.fits["val"]), ("test", run.prep.fits["test"])):
            full = run.prep.batches[(cut, task)]
            rows = np.flatnonzero(full.requests["user_id"].is_in(users.tolist()).to_numpy())
            batch = _subset(full, rows)
            cands, scores = _ranked(run, fit, batch)
            history = prompt_history(batch, run.titles)
            heads, llm = [], []
            for r in tqdm(range(len(batch)), desc=f"llm {task}/{cut}", disable=not progress):
                head = order_by(scores[r])[:top_n]
                head = head[scores[r][head] > BELOW]
                t = time.perf_counter()
                llm.append(reranker.score(batch.instructions[r], history[r],
                                          run.titles[cands.idx[r][head]].tolist()))
                llm_ms.append((time.perf_counter() - t) * 1000)
                heads.append(head)
            per_cut[cut] = (batch, cands, scores, heads, llm)
        batch, cands, scores, heads, llm = per_cut["val"]
        for w in cfg.weights:
            m = metrics_of(_rankings(batch, cands, scores, llm, heads, w, "v", run),
                           batch.requests)
            validation.append({"task": task, "weight": w, "ndcg@10": float(m["ndcg@10"][0])})
        best = max((v for v in validation if v["task"] == task),
                   key=lambda v: (round(v["ndcg@10"], 9), -v["weight"]))
        chosen[task] = best["weight"]
        batch, cands, scores, heads, llm = per_cut["test"]
        for model, w in (("ltr_full_subset", 0.0), ("ltr_llm", chosen[task])):
            frames.append((_rankings(batch, cands, scores, llm, heads, w, model, run),
                           batch.requests))
    metrics = pl.concat([metrics_of(r, q) for r, q in frames])
    return LLMEvalResult(cfg, run.prep.dataset.name, users.tolist(), pl.DataFrame(validation),
                         chosen, metrics, llm_ms, time.perf_counter() - started)
