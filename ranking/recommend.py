"""The online path: `Recommender.load()` once, then `recommend(user_id, instruction, k)`.

Per request: clean the instruction; read the user's views from the online store (one read);
build the request's history from the store's `last_items` (freshest) and the interaction
log loaded at start-up (for exclusion of everything already seen); generate candidates (the
instruction is encoded once, inside the embedding source); read the candidates' item views
(one read); assemble the same features as training; score with LightGBM; explain the top k
with `pred_contrib`. Everything heavy (model, encoder, item vectors, KG, fitted candidate
sources, the online-store plan) is loaded in `load()`, never per request.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from ranking import features as fs
from ranking.candidates import CandidateConfig, CandidateGenerator
from ranking.explain import Explainer, Reason
from ranking.inputs import Catalogue, FitData, RequestBatch
from ranking.intent_parser import parsed_for
from ranking.llm_rerank import LLMRerankConfig
from ranking.ltr.features import USER_COLUMNS, ItemTables, assemble
from ranking.ltr.model import LTRModel
from ranking.sanitize import MAX_INSTRUCTION_CHARS, clean_instruction
from ranking.scorers.base import ScorerContext
from recdata.dataset import Dataset
from recdata.errors import ConfigError, InvalidRequestError
from recdata.split import temporal_leave_one_out

MAX_K = 100
QUERY_MEMORY = 50_000  # instruction vectors kept beyond the item cache (repeat requests)


class RecommenderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Path | None = Field(None, description="model folder (default: the latest ltr_full "
                                                 "trained by `instructrank evaluate`)")
    repo: Path = fs.PACKAGE_REPO
    online: str = "sqlite"
    redis_url: str | None = None
    data_dir: Path = Path("data")
    encoder_path: Path | None = None
    max_instruction_chars: int = Field(MAX_INSTRUCTION_CHARS, ge=1)
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads for the whole process (None: leave "
                                "torch's setting). `instructrank serve` sets 1: one short "
                                "sentence is too small to split across cores, concurrent "
                                "requests are the parallelism, and extra threads spin "
                                "against each other and anything else running")
    llm: LLMRerankConfig | None = Field(None, description="optional LLM reranker of the top "
                                                          "N (off when None)")


@dataclass(frozen=True)
class Recommended:
    item_id: int
    title: str
    score: float
    reasons: list[Reason]


@dataclass(frozen=True)
class Recommendation:
    user_id: int | None
    instruction: str
    cold_start: bool
    items: list[Recommended]
    candidates: int
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class UserLog:
    """Every user's interactions, most recent first, as flat arrays (CSR by user): memory
    is three numbers per interaction, not a Python object per user and per rating."""

    users: np.ndarray    # sorted user ids
    indptr: np.ndarray   # user u's rows: indptr[u] .. indptr[u + 1]
    item_idx: np.ndarray
    ratings: np.ndarray  # NaN where not rated

    @classmethod
    def from_interactions(cls, log: pl.DataFrame) -> UserLog:
        ordered = log.sort("user_id", "seq", descending=[False, True])
        counts = ordered.group_by("user_id", maintain_order=True).len()
        return cls(counts["user_id"].to_numpy(), np.r_[0, np.cumsum(counts["len"].to_numpy())],
                   ordered["item_idx"].to_numpy(),
                   ordered["rating"].cast(pl.Float64).fill_null(np.nan).to_numpy())

    def _rows(self, user_id: int) -> slice:
        pos = int(np.searchsorted(self.users, user_id))
        if pos == len(self.users) or self.users[pos] != user_id:
            return slice(0, 0)
        return slice(int(self.indptr[pos]), int(self.indptr[pos + 1]))

    def items(self, user_id: int) -> np.ndarray:
        return self.item_idx[self._rows(user_id)]

    def rating(self, user_id: int, item_idx: int) -> float | None:
        rows = self._rows(user_id)
        hit = np.flatnonzero(self.item_idx[rows] == item_idx)
        value = self.ratings[rows][hit[0]] if len(hit) else np.nan
        return None if np.isnan(value) else float(value)


def latest_model(models_dir: Path, name: str = "ltr_full") -> Path:
    pointer = models_dir / f"{name}.latest"
    if not pointer.exists():
        raise ConfigError(f"no trained {name} model under {models_dir}; run `instructrank "
                          "evaluate` (or `make run`) first, or pass --model")
    return models_dir / pointer.read_text().strip()


class Recommender:
    """Loaded once; `recommend()` is safe to call from several threads."""

    def __init__(self, cfg: RecommenderConfig, model: LTRModel, reader: fs.OnlineReader,
                 catalogue: Catalogue, generator: CandidateGenerator, items: ItemTables,
                 context: ScorerContext, log: pl.DataFrame, as_of: int) -> None:
        self.cfg, self.model, self.reader = cfg, model, reader
        self.catalogue, self.generator, self.items = catalogue, generator, items
        self.context, self.as_of = context, as_of
        self.item_ids = catalogue.items["item_id"].to_numpy()
        self.titles = catalogue.items["title"].to_list() if "title" in catalogue.items.columns \
            else [str(i) for i in self.item_ids]
        self.title_array = np.asarray(self.titles, dtype=object)
        self.row_of = {int(i): r for r, i in enumerate(self.item_ids)}
        self.log = UserLog.from_interactions(log)
        self.explainer = Explainer(self)
        self.reranker: Any = None  # ranking.llm_rerank.LLMReranker when configured

    @classmethod
    def load(cls, cfg: RecommenderConfig) -> Recommender:
        from encoders.text import TextEncoder

        if cfg.torch_threads is not None:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        model_dir = cfg.model or latest_model(cfg.data_dir / "models")
        model = LTRModel.load(model_dir)
        repo = fs.FeatureRepo(cfg.repo)
        store = repo.store(cfg.online, cfg.redis_url)
        reader = fs.OnlineReader(store, fs.ONLINE_SERVICE if model.needs_text_views
                                 else fs.ONLINE_NO_TEXT_SERVICE)
        model.check_served(set(reader.types))
        meta = json.loads((repo.sources / "meta.json").read_text())
        log = pl.read_parquet(repo.sources / "interactions.parquet")
        items = pl.read_parquet(repo.sources / "items.parquet")
        ds = Dataset(meta["dataset"], log, items)
        catalogue = Catalogue.from_dataset(ds)
        split = catalogue.index(temporal_leave_one_out(log))
        encoder = TextEncoder(cfg.encoder_path, cache_dir=cfg.data_dir / "cache",
                              show_progress=False, persist=False,
                              memory_limit=QUERY_MEMORY).warm()
        trained_with = model.extra.get("encoder")
        if trained_with and trained_with != encoder.fingerprint:
            raise ConfigError(f"model {model.key} was trained with encoder {trained_with}, "
                              f"but the configured encoder is {encoder.fingerprint}")
        from encoders.tuning import META_FILE

        # an instruction-tuned encoder reads "instruction | recent titles" (ranking.queries)
        tuned = (encoder.model_path / META_FILE).exists()
        context = ScorerContext(encoder=encoder, kg=_load_kg(model, cfg.data_dir),
                                artifacts=cfg.data_dir / "indexes",
                                query_titles=catalogue.items["title"].to_numpy() if tuned
                                else None)
        fit = FitData("serving", split, catalogue)
        generator = CandidateGenerator(
            CandidateConfig.model_validate(model.config["candidates"]), context).fit(fit)
        from ranking.ltr.training import item_tables

        tables = item_tables(generator, context)
        as_of = int(pl.Series([meta["as_of"]]).str.to_datetime().dt.epoch("s")[0])
        rec = cls(cfg, model, reader, catalogue, generator, tables, context, split, as_of)
        if cfg.llm is not None:
            from ranking.llm_rerank import LLMReranker

            rec.reranker = LLMReranker.load(cfg.llm)
        rec.recommend(None, "warm-up request", 1)  # first-call costs (regex, LightGBM) now
        return rec

    def recommend(self, user_id: int | None, instruction: Any, k: int = 10, *,
                  now: int | None = None) -> Recommendation:
        """Top `k` items for this user and instruction, each with its reasons. An unknown
        user (or None) takes the cold-start path: the instruction and item statistics only."""
        t0 = time.perf_counter()
        text = clean_instruction(instruction, self.cfg.max_instruction_chars)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise InvalidRequestError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        timings: dict[str, float] = {}
        user = self.reader.read_user(user_id) if user_id is not None else \
            dict.fromkeys(self.reader.user_columns)
        known = any(v is not None for v in user.values())
        t1 = time.perf_counter()
        timings["user_read"] = (t1 - t0) * 1000
        batch = self._batch(user_id if known else None, user, text, now)
        cands = self.generator.generate(batch)
        parsed = parsed_for(self.context, batch, self.items.genres)
        self.context.forget(batch)
        t2 = time.perf_counter()
        timings["candidates"] = (t2 - t1) * 1000
        ids = self.item_ids[cands.idx[0]]
        item_rows = self.reader.read_items(ids.tolist())
        t3 = time.perf_counter()
        timings["item_read"] = (t3 - t2) * 1000
        user_rows = pl.DataFrame([{c: user.get(c) for c in USER_COLUMNS}],
                                 schema={c: self.reader.types.get(c, pl.Float64)
                                         for c in USER_COLUMNS})
        frame = assemble(batch, cands, user_rows, item_rows, self.items, kg=self.context.kg,
                         anonymous=np.array([not known]), parsed=parsed)
        scores = self.model.predict(frame, threads=1)
        valid = cands.valid[0]
        top = np.lexsort((cands.idx[0], -scores))
        top = top[valid[top]]
        t4 = time.perf_counter()
        timings["score"] = (t4 - t3) * 1000
        if self.reranker is not None:
            top, scores = self._rerank(batch, cands.idx[0], top, scores)
            t5 = time.perf_counter()
            timings["llm"] = (t5 - t4) * 1000
            t4 = t5
        top = top[:k]
        contrib = self.model.contributions(frame[top.tolist()], threads=1)
        reasons = self.explainer.reasons(batch, frame[top.tolist()], contrib,
                                         cands.idx[0][top], user_id if known else None,
                                         parsed)
        timings["explain"] = (time.perf_counter() - t4) * 1000
        out = [Recommended(int(self.item_ids[cands.idx[0][j]]),
                           self.titles[cands.idx[0][j]], float(scores[j]), reasons[n])
               for n, j in enumerate(top)]
        timings["total"] = (time.perf_counter() - t0) * 1000
        return Recommendation(user_id, text, not known, out, int(valid.sum()),
                              {k_: round(v, 2) for k_, v in timings.items()})

    def _rerank(self, batch: RequestBatch, idx: np.ndarray, top: np.ndarray,
                scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The LLM reorders the best `top_n` of the ranked candidates `top`; it returns
        positions into `top` only, so the result is a permutation of the candidates."""
        from ranking.queries import prompt_history

        history = prompt_history(batch, self.title_array)[0]
        titles = self.title_array[idx[top]].tolist()
        order, fused = self.reranker.rerank(list(range(len(top))), scores[top],
                                            batch.instructions[0], history, titles)
        reordered = top[np.asarray(order, dtype=np.int64)]
        new_scores = scores.copy()
        new_scores[reordered] = fused
        return reordered, new_scores

    def _batch(self, user_id: int | None, user: dict[str, Any], text: str,
               now: int | None) -> RequestBatch:
        """A one-request batch whose history has the store's last items first (recency rank
        1..), then the rest of the start-up log, for exclusion."""
        recent: list[int] = []
        if user_id is not None:
            fresh = [self.row_of[i] for i in (user.get("user_history__last_items") or [])
                     if i in self.row_of]
            logged = self.log.items(int(user_id))
            recent = list(dict.fromkeys([*fresh, *logged.tolist()]))
        cols = np.array(recent, dtype=np.int64)
        history = sp.csr_matrix((np.arange(1, len(cols) + 1, dtype=np.float32),
                                 (np.zeros(len(cols), dtype=np.int64), cols)),
                                shape=(1, len(self.item_ids)))
        requests = pl.DataFrame({
            "request_id": ["online"], "user_id": [int(user_id) if user_id is not None else -1],
            "task": ["intent" if user_id is not None else "search"], "instruction": [text],
            "target_idx": [-1], "timestamp": [int(now if now is not None else self.as_of)],
        })
        return RequestBatch(requests, history, len(self.item_ids))


def _load_kg(model: LTRModel, data_dir: Path) -> Any:
    from kg.train import KGResult

    key = model.extra.get("kg_key")
    if key is None:
        return None
    directory = data_dir / "kg" / key
    if not (directory / "result.json").exists():
        raise ConfigError(f"model {model.key} reads KG {key}, which is not under "
                          f"{data_dir / 'kg'}; rerun `instructrank evaluate`")
    return KGResult.load(directory).embeddings
