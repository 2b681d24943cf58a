"""The online path: `Recommender.load()` once, then `recommend(user_id, instruction, k)`.

Serving reads the feature store and trained artifacts only: the model and the Feast
feature service it names, the candidate sources training fitted on the whole log and saved
(`data/serving/<key>`), the encoder, the KG. It reads no raw interactions and fits nothing.
Per request: clean the instruction; read the user's views from the online store (one read:
features, and everything the user has seen, so a `features refresh` reaches a running
service); generate candidates (the instruction is encoded once, inside the embedding
source); read the candidates' item views (kept until the store is materialized again);
assemble the same features as training, at the request's time (the clock, or the caller's
`now`); score with LightGBM; explain the top k (ranking.explain). Requests that arrive
together go through these steps as one batch (`recommend_many`, ranking.batching).

Callers speak the dataset's own ids: a string-id catalogue's keys are read from the feature
repo's id map (recdata.ids) at load, and users it learns of by a refresh on first sight.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from feature_repo.ranker import refs_of
from featurestore import store as fs
from ranking.batching import RequestBatcher
from ranking.candidates import CandidateGenerator, Candidates
from ranking.constraints import PENALTY, violations, with_items
from ranking.diversity import HEAD_SHARE, POOL, TEMPERATURE, rerank
from ranking.explain import Explainer, Reason
from ranking.inputs import Catalogue, RequestBatch
from ranking.intent_parser import ParsedIntents, parsed_for, semantic_text
from ranking.ltr.features import ItemTables, assemble_array, store_columns
from ranking.ltr.model import LTRModel
from ranking.queries import history_label
from ranking.rerank.llm import LLMRerankConfig
from ranking.sanitize import MAX_INSTRUCTION_CHARS, clean_instruction
from ranking.scorers.base import ENCODING, ScorerContext
from ranking.topk import limit_threads
from recdata.errors import ConfigError, InvalidRequestError
from recdata.ids import IdMap, Key, modified, users_file

MAX_K = 100
MAX_SESSION_ITEMS = 200  # items a caller may pass as a session's history
DATA_END_TTL = 10.0  # seconds between registry reads for 'data-end'
QUERY_MEMORY = 50_000  # instruction vectors kept beyond the item cache (repeat requests)


class RecommenderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Path | None = Field(None, description="model folder (default: the latest ltr_full "
                                                 "trained by `instructrank train`)")
    repo: Path = fs.PACKAGE_REPO
    online: str = "sqlite"
    redis_url: str | None = None
    data_dir: Path = Path("data")
    encoder_path: Path | None = None
    encoder_runtime: str = Field("onnx", description="'onnx' (ONNX Runtime, the default: "
                                                     "the same vectors, ~3x cheaper per "
                                                     "request) or 'torch'")
    compiled_ranker: bool = Field(True, description="score with the ranker's trees compiled "
                                                    "to machine code (ranking.ltr.compiled: "
                                                    "the same scores to the bit for half "
                                                    "the predictor's CPU), cached under "
                                                    "DATA_DIR/cache/compiled; False: "
                                                    "LightGBM's own predictor")
    attribution: str = Field("occlusion", description="how reasons weigh feature families: "
                                                      "'occlusion' or 'shap' "
                                                      "(ranking.explain)")
    max_instruction_chars: int = Field(MAX_INSTRUCTION_CHARS, ge=1)
    torch_threads: int | None = Field(
        None, ge=1, description="threads of torch, ONNX Runtime, BLAS and OpenMP in this "
                                "process (None: leave them, ONNX Runtime one per core). "
                                "`instructrank serve` sets 1: one short "
                                "sentence is too small to split across cores, concurrent "
                                "requests are the parallelism, and extra threads spin "
                                "against each other and anything else running")
    llm: LLMRerankConfig | None = Field(None, description="optional LLM reranker of the top "
                                                          "N (off when None)")
    max_batch: int = Field(1, ge=1, description="requests computed together when they "
                                                "arrive together (ranking.batching; 1: each "
                                                "alone). `instructrank serve` sets 16")
    batch_wait_ms: float = Field(0.0, ge=0, le=1000,
                                 description="how long a free worker may wait for the "
                                             "requests it can expect, while the others are "
                                             "busy (ranking.batching; 0: takes only what "
                                             "is waiting). `instructrank serve` sets "
                                             "--batch-wait-ms")
    diversity: float = Field(0.0, ge=0, le=1, description="MMR lambda every answer is "
                                                          "re-ranked with (ranking.diversity; "
                                                          "0: the ranker's order, off)")
    variety_diversity: float = Field(0.3, ge=0, le=1, description="the lambda a request "
                                                                  "asking for variety ('a mix', "
                                                                  "'surprise me') gets at least")
    diversity_temperature: float = Field(
        TEMPERATURE, gt=0, description="MMR's relevance temperature (ranking.diversity; the "
                                       "evaluation's choice per task is in diversity.csv)")
    diversity_head_share: float = Field(HEAD_SHARE, ge=0, lt=1, description="share of the k "
                                                                           "first ranks MMR "
                                                                           "leaves in place")
    encode_ahead: bool = Field(True, description="encode a request's text on a second "
                                                 "thread while its intent is parsed and its "
                                                 "user read (ONNX Runtime and polars let go "
                                                 "of the GIL), for a request computed alone "
                                                 "(under load requests come in batches and "
                                                 "the cores are busy anyway)")
    keep_items: int = Field(100_000, ge=0, description="item rows read from the online "
                                                     "store into memory at start-up, most "
                                                     "popular first (the rows a server keeps "
                                                     "anyway once requests have named them: "
                                                     "a few floats per item), so no request "
                                                     "waits on a store read for a rarely "
                                                     "seen item; 0: read as requests come")
    lone_encode_threads: int | None = Field(
        None, ge=1, description="ONNX Runtime threads for a request encoded alone, when "
                                "more than torch_threads (a second session of the graph, "
                                "~90 MB, whose threads sleep rather than spin; None: one per "
                                "core)")

    @field_validator("encoder_runtime", "attribution")
    @classmethod
    def _known(cls, name: str, info: Any) -> str:
        """A wrong name fails when the config is made, listing the valid ones."""
        from encoders.text import RUNTIMES
        from ranking.explain import ATTRIBUTIONS

        valid = RUNTIMES if info.field_name == "encoder_runtime" else ATTRIBUTIONS
        if name not in valid:
            from recdata.errors import UnknownNameError

            raise UnknownNameError(info.field_name.replace("_", " "), name, list(valid))
        return name


@dataclass(frozen=True)
class Recommended:
    item_id: Key  # the catalogue's own id (a string for a string-id catalogue)
    title: str
    score: float
    reasons: list[Reason]


@dataclass(frozen=True)
class Recommendation:
    user_id: Key | None  # as the caller gave it
    instruction: str
    cold_start: bool
    items: list[Recommended]
    candidates: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    now: int = 0  # the request's time (unix seconds) its features were taken at
    understood: dict[str, Any] = field(default_factory=dict)  # the typed intent, in words


@dataclass(frozen=True)
class Asked:
    """A request, checked (`Recommender.ask`) and in internal terms."""

    user_id: Key | None  # as the caller gave it
    uid: int | None      # the internal id; None for an unknown user
    text: str            # the cleaned instruction
    k: int
    now: int             # unix seconds
    session: np.ndarray  # catalogue rows of the session's items, most recent first
    diversity: float | None = None  # MMR lambda asked for (None: the service's default)


@dataclass(frozen=True)
class OnlineRequest:
    """Requests on their way through the online path (one or a batch)."""

    batch: RequestBatch
    known: np.ndarray  # per request: the store knows the user
    cands: Candidates
    x: np.ndarray  # rows (request, candidate) x `features`, float32: what is scored
    features: list[str]
    parsed: ParsedIntents
    rated: list[dict[int, float]]  # the users' ratings by catalogue row, for the reasons

    @property
    def frame(self) -> pl.DataFrame:
        """`x` as a frame, a column per feature (what `assemble` gives offline)."""
        return pl.DataFrame(dict(zip(self.features, self.x.T, strict=True)))


def latest_model(models_dir: Path, name: str = "ltr_full") -> Path:
    pointer = models_dir / f"{name}.latest"
    if not pointer.exists():
        raise ConfigError(f"no trained {name} model under {models_dir}; run `instructrank "
                          "train` (or `make run`) first, or pass --model")
    return models_dir / pointer.read_text().strip()


class Recommender:
    """Loaded once; `recommend()` is safe to call from several threads."""

    def __init__(self, cfg: RecommenderConfig, model: LTRModel, reader: fs.OnlineReader,
                 catalogue: Catalogue, generator: CandidateGenerator, items: ItemTables,
                 context: ScorerContext, ids: IdMap | None = None,
                 ids_dir: Path | None = None) -> None:
        self.cfg, self.model, self.reader = cfg, model, reader
        self.catalogue, self.generator, self.items = catalogue, generator, items
        self.context = context
        self.item_ids = catalogue.items["item_id"].to_numpy()
        self.ids, self._ids_dir = ids or IdMap(), ids_dir
        self._users_seen_at = modified(users_file(ids_dir)) if ids_dir is not None else 0
        self.item_keys = self.ids.keys(self.item_ids, "item")  # what callers are told
        self.titles = catalogue.items["title"].to_list() if "title" in catalogue.items.columns \
            else [str(i) for i in self.item_ids]
        self.title_array = np.asarray(self.titles, dtype=object)
        self._by_id = np.argsort(self.item_ids, kind="stable")  # id -> row, by searchsorted
        self._sorted_ids = self.item_ids[self._by_id]
        self.explainer = Explainer(self)
        # the user columns the model's features read (one the store lacks is refused, by
        # name, when the features are assembled)
        self._user_reads = [c for c in store_columns(model.features)[0]
                            if c in reader.user_columns]
        self.reranker: Any = None  # ranking.rerank.llm.LLMReranker when configured
        self._batcher: RequestBatcher | None = None
        self._ahead: ThreadPoolExecutor | None = None
        self._data_end: tuple[float, int] = (-float("inf"), 0)

    @classmethod
    def load(cls, cfg: RecommenderConfig) -> Recommender:
        from encoders.text import TextEncoder

        model_dir = cfg.model or latest_model(cfg.data_dir / "models")
        model = LTRModel.load(model_dir)
        repo = fs.FeatureRepo(cfg.repo)
        store = repo.store(cfg.online, cfg.redis_url)
        service = model.feature_service
        fs.require_service(store, service, refs_of(model.features), f"model {model.key}")
        reader = fs.OnlineReader(store, service)
        model.check_served(set(reader.types))
        serving = model.extra.get("serving_sources")
        if not serving:
            raise ConfigError(f"model {model.key} names no saved candidate sources (trained by "
                              "an older version); retrain it with `instructrank train`")
        encoder = TextEncoder(cfg.encoder_path, cache_dir=cfg.data_dir / "cache",
                              show_progress=False, persist=False, memory_limit=QUERY_MEMORY,
                              runtime=cfg.encoder_runtime, threads=cfg.torch_threads,
                              lone_threads=cfg.lone_encode_threads or os.cpu_count())
        trained_with = model.extra.get("encoder")
        if trained_with and trained_with != encoder.fingerprint:  # before loading it
            raise ConfigError(f"model {model.key} was trained with encoder {trained_with}, "
                              f"but the encoder in {encoder.model_path} is "
                              f"{encoder.fingerprint} (another model, or its files changed); "
                              "point --encoder-path at the one it was trained with, or "
                              "retrain with `instructrank train`")
        encoder.warm()
        context = ScorerContext(encoder=encoder, kg=_load_kg(model, cfg.data_dir),
                                artifacts=cfg.data_dir / "indexes")
        # fitted by training on the whole log and saved; nothing is fitted here
        generator = CandidateGenerator.load(cfg.data_dir / "serving" / serving, context)
        if "attribute" not in generator.sources:
            raise ConfigError("serving reads the item attribute tables of the 'attribute' "
                              "candidate source, which this model's candidate config leaves out")
        catalogue = generator.sources["attribute"].fitted.catalogue
        from encoders.tuning import META_FILE

        # an instruction-tuned encoder reads "instruction | recent titles" (ranking.queries)
        if (encoder.model_path / META_FILE).exists():
            context.query_titles = catalogue.items["title"].to_numpy()
            context.query_label = history_label(catalogue.schema)
        from ranking.ltr.training import item_tables

        tables = item_tables(generator, context)
        ids = IdMap.load(repo.ids)
        if ids.items is not None and not catalogue.items["item_id"].is_in(
                ids.items["item_id"].implode()).all():
            raise ConfigError(f"the id map in {repo.ids} does not cover model {model.key}'s "
                              "catalogue: the feature repo was built from other data; rerun "
                              "`instructrank features build` and `instructrank train`")
        if cfg.compiled_ranker:  # after every check that can refuse this model
            model.compile(cfg.data_dir / "cache" / "compiled")
        rec = cls(cfg, model, reader, catalogue, generator, tables, context, ids, repo.ids)
        if cfg.llm is not None:
            from ranking.rerank.llm import LLMReranker, in_domain_words

            rec.reranker = LLMReranker.load(in_domain_words(cfg.llm, catalogue.schema))
        rec.keep_item_rows(cfg.keep_items)
        rec.recommend(None, "warm-up request", 1)  # first-call costs (regex, LightGBM) now
        if cfg.encode_ahead and context.query_titles is None:
            # a tuned encoder's text carries the titles a request names, known only after
            # the parse: nothing to start early
            rec._ahead = ThreadPoolExecutor(1, thread_name_prefix="encode-ahead")
        if cfg.max_batch > 1:
            rec._batcher = RequestBatcher(rec.recommend_many, cfg.max_batch,
                                          wait_ms=cfg.batch_wait_ms)
        if cfg.torch_threads is not None:
            # BLAS and OpenMP pools (numpy's and scipy's OpenBLAS, the libgomp LightGBM and
            # faiss share) are loaded by now; at their default of one thread per core their
            # workers spin after each small call: 57 ms of CPU per 29 ms request on 2 cores
            # before, 28 after, which is what lets a second worker process use the second
            from threadpoolctl import threadpool_limits

            threadpool_limits(cfg.torch_threads)
            limit_threads(cfg.torch_threads)  # top_k's pool likewise
            # PyTorch only where something loaded it by now (the torch encoder runtime, an
            # LLM reranker); the ONNX path never imports it (~1.4 s of a server's start)
            torch = sys.modules.get("torch")
            if torch is not None:
                torch.set_num_threads(cfg.torch_threads)
        return rec

    def keep_item_rows(self, limit: int) -> None:
        """The item rows of the `limit` most popular items (training-window counts; the
        catalogue's order without the popularity source) read once, in store reads of
        10,000, into the reader's kept rows."""
        if limit <= 0:
            return
        pop = getattr(self.generator.sources.get("popularity"), "_popularity", None)
        order = np.arange(len(self.item_ids)) if pop is None else \
            np.argsort(-np.asarray(pop, dtype=np.float64), kind="stable")
        ids = self.item_ids[order[:limit]].tolist()
        for start in range(0, len(ids), 10_000):
            self.reader.cached_item_block(ids[start:start + 10_000])

    def request_time(self, now: int | float | datetime | str | None) -> int:
        """Unix seconds of a request: the wall clock by default; `now` may be unix seconds,
        a datetime (naive = UTC), an ISO 8601 string, or 'data-end' (the end of the data the
        store was last built or refreshed from: for replaying a historical log)."""
        if now is None:
            return int(time.time())
        if isinstance(now, str):
            if now == "data-end":
                return self.data_end()
            try:
                now = datetime.fromisoformat(now)
            except ValueError:
                raise InvalidRequestError(
                    f"now must be unix seconds, an ISO 8601 time or 'data-end', got "
                    f"{now[:40]!r}") from None
        if isinstance(now, datetime):
            return int((now if now.tzinfo else now.replace(tzinfo=UTC)).timestamp())
        if isinstance(now, bool) or not isinstance(now, int | float) or not np.isfinite(now):
            raise InvalidRequestError(f"now must be unix seconds, got {now!r}")
        return int(now)

    def data_end(self) -> int:
        """Unix seconds up to which the online store is materialized (the end of the data
        it was last built or refreshed from), read from the Feast registry at most every
        DATA_END_TTL seconds: a refresh by another process moves it, and replaying requests
        at 'data-end' must not read the registry file once per request."""
        read_at, end = self._data_end
        if time.monotonic() - read_at > DATA_END_TTL:
            store = self.reader.store
            store.refresh_registry()
            view = store.get_feature_view("user_history")
            if view.most_recent_end_time is None:
                raise ConfigError("the online store was never materialized; run "
                                  "`instructrank features build`")
            end = int(view.most_recent_end_time.timestamp())
            self._data_end = (time.monotonic(), end)
        return end

    def user_id(self, user: Key | None) -> int | None:
        """The internal id of a caller's user id; None for an unknown one (cold start).
        A user a `features refresh` numbered after this service loaded is found by
        rereading the map when its file has changed."""
        uid = self.ids.id_of(user, "user")
        if uid is None and user is not None and self._ids_dir is not None \
                and self.ids.users is not None:
            stamp = modified(users_file(self._ids_dir))
            if stamp != self._users_seen_at:
                self.ids, self._users_seen_at = IdMap.load(self._ids_dir), stamp
                uid = self.ids.id_of(user, "user")
        return uid

    def session_rows(self, history: list[Key] | None) -> np.ndarray:
        """Catalogue rows of a caller's session items (most recent first, each once); an
        item the catalogue does not hold is an error naming it."""
        if not history:
            return np.zeros(0, np.int64)
        if not isinstance(history, list | tuple) or len(history) > MAX_SESSION_ITEMS:
            raise InvalidRequestError(f"history must be a list of at most "
                                      f"{MAX_SESSION_ITEMS} item ids")
        ids = [self.ids.id_of(k, "item") for k in history]
        rows = self._rows(np.asarray([-1 if i is None else i for i in ids], dtype=np.int64))
        unknown = [str(k)[:40] for k, r in zip(history, rows, strict=True) if r < 0]
        if unknown:
            raise InvalidRequestError(f"history names items the catalogue does not hold: "
                                      f"{unknown[:5]}")
        _, first = np.unique(rows, return_index=True)
        return rows[np.sort(first)]

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Catalogue rows of internal item ids, -1 where none."""
        sorted_ids = self._sorted_ids
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, max(len(sorted_ids) - 1, 0))
        hit = sorted_ids[pos] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
        return np.where(hit, self._by_id[pos], -1)

    def feature_frame(self, user_id: Key | None, instruction: Any, *,
                      now: int | float | datetime | str | None = None) -> pl.DataFrame:
        """The ranker's feature frame for this request, one row per candidate it ranks
        (with its internal `item_id` first), exactly as `recommend` scores it: what a data
        scientist compares against the offline frame of the same request."""
        req = self._features(self.user_id(user_id), clean_instruction(
            instruction, self.cfg.max_instruction_chars), self.request_time(now), {})
        return req.frame.insert_column(0, pl.Series("item_id", self.item_ids[req.cands.idx[0]])
                                   ).filter(pl.Series(req.cands.valid[0]))

    def _features(self, user_id: int | None, text: str, now: int, timings: dict[str, float],
                  session: np.ndarray | None = None) -> OnlineRequest:
        """One request's way to its feature frame (`_features_many` of one)."""
        asked = Asked(user_id, user_id, text, 1, now,
                      session if session is not None else np.zeros(0, np.int64))
        return self._features_many([asked], timings)

    def _features_many(self, asked: list[Asked], timings: dict[str, float],
                       alone: bool = True) -> OnlineRequest:
        """Requests to their feature frame, together: one read of the users' views, one
        batch through the candidate sources (one parse, one encode), one read of the items
        the candidates name, one assembly; the offline path's batch code, with the fixed
        cost of each call shared by the requests of the batch."""
        t0 = time.perf_counter()
        ahead = None
        # a batch of one means nothing else was waiting: a core is likely idle. Under load
        # (batches of several, or other processes' batches: `alone` False) the second
        # thread would only contend with the other work
        self.context.encoder.alone = alone
        if self._ahead is not None and len(asked) == 1 and alone:  # the vectors land in the encoder
            ahead = self._ahead.submit(self._encode_ahead, [a.text for a in asked])
        ids = list(dict.fromkeys(a.uid for a in asked if a.uid is not None))  # each user once
        read = self.reader.read_users(ids) if ids else []
        empty = dict.fromkeys(self.reader.user_columns)
        by_id = dict(zip(ids, read, strict=True))
        users = [by_id[a.uid] if a.uid is not None else empty for a in asked]
        known = np.array([any(v is not None for v in u.values()) for u in users], dtype=bool)
        t1 = time.perf_counter()
        timings["user_read"] = (t1 - t0) * 1000
        seen, rated = [], []
        for a, user, has in zip(asked, users, known, strict=True):
            rows, ratings = self._seen(user) if has else (np.zeros(0, np.int64), {})
            if len(a.session):  # a session's items are the most recent
                rows = np.concatenate([a.session, rows[~np.isin(rows, a.session)]])
            seen.append(rows)
            rated.append(ratings)
        base = self._batch([a.uid if has else None for a, has in zip(asked, known,
                                                                        strict=True)],
                           seen, [a.text for a in asked], [a.now for a in asked])
        parsed = parsed_for(self.context, base, self.items.genres, self.items.schema,
                            self.items.titles)
        batch = with_items(base, parsed.mentions(len(asked)))  # named items seed the history
        if ahead is not None:  # the source that reads the text waits for this encode, while
            # the sources that read only the history run first (CandidateGenerator)
            self.context.cached(base.requests, ENCODING, lambda: ahead)
        cands = self.generator.generate(batch)
        if ahead is not None:
            ahead.result()  # done by now: raises what the encode raised, if anything
        self.context.forget(base)
        self.context.forget(batch)
        t2 = time.perf_counter()
        timings["candidates"] = (t2 - t1) * 1000
        # each item once, however many requests name it
        unique, where = np.unique(self.item_ids[cands.idx].ravel(), return_inverse=True)
        kept, floats = self.reader.cached_item_block(unique.tolist())
        item_rows = kept[where]
        item_floats = None if floats is None else {c: v[where] for c, v in floats.items()}
        t3 = time.perf_counter()
        timings["item_read"] = (t3 - t2) * 1000
        # the user columns the features read, as arrays straight from the read; the frame
        # names them (a frame of the values is built only where one cannot be an array)
        schema = {c: self.reader.types[c] for c in self._user_reads}
        values = self.reader.user_values(users, self._user_reads)
        user_rows = pl.DataFrame(schema=schema) if values is not None else \
            pl.DataFrame([{c: u.get(c) for c in schema} for u in users], schema=schema)
        x = assemble_array(batch, cands, user_rows, item_rows, self.items, kg=self.context.kg,
                           anonymous=~known, parsed=parsed, features=self.model.features,
                           item_floats=item_floats, user_values=values)
        timings["features"] = (time.perf_counter() - t3) * 1000
        return OnlineRequest(batch, known, cands, x, self.model.features, parsed, rated)

    def _encode_ahead(self, texts: list[str]) -> None:
        """What the instruction source will encode (ScorerContext.queries), without the
        context's memo, which the parsing thread writes meanwhile; the instruction source
        waits for it (`ENCODING` in the memo) before reading the encoder."""
        self.context.encoder.encode(semantic_text(texts), "instructions")

    def ask(self, user_id: Key | None, instruction: Any, k: int = 10, *,
            now: int | float | datetime | str | None = None,
            history: list[Key] | None = None, diversity: float | None = None) -> Asked:
        """A request checked and read into internal terms (an InvalidRequestError naming
        what is wrong, before anything is computed or queued)."""
        text = clean_instruction(instruction, self.cfg.max_instruction_chars)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise InvalidRequestError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        if diversity is not None and (isinstance(diversity, bool)
                                      or not isinstance(diversity, int | float)
                                      or not 0.0 <= float(diversity) <= 1.0):
            raise InvalidRequestError(f"diversity must be a number from 0 to 1, got "
                                      f"{str(diversity)[:40]!r}")
        return Asked(user_id, self.user_id(user_id), text, k, self.request_time(now),
                     self.session_rows(history),
                     None if diversity is None else float(diversity))

    def recommend(self, user_id: Key | None, instruction: Any, k: int = 10, *,
                  now: int | float | datetime | str | None = None,
                  history: list[Key] | None = None,
                  diversity: float | None = None) -> Recommendation:
        """Top `k` items for this user and instruction, each with its reasons, as of `now`
        (default: the wall clock; see `request_time`). An unknown user (or None) takes the
        cold-start path: the instruction and item statistics only. `history`: item ids of
        the current session (most recent first) for an anonymous or fresh session; they feed
        the history sources and are not recommended back. What the request excludes or
        bounds ranks after what it allows (ranking.constraints). Ids are the catalogue's
        own, in and out. With `max_batch` > 1, requests that arrive while others are being
        computed are computed together with them (RequestBatcher). `diversity`: the MMR
        lambda of this answer (ranking.diversity; default the service's, raised for a
        request that asks for variety); items it brings up say "added for variety"."""
        asked = self.ask(user_id, instruction, k, now=now, history=history,
                         diversity=diversity)
        if self._batcher is not None:
            return self._batcher.submit(asked)
        return self.recommend_many([asked])[0]

    def answer(self, requests: list[tuple],
               alone: bool = True) -> list[Recommendation | BaseException]:
        """`recommend` of each (user_id, instruction, k, now, history[, diversity]),
        computed as one batch; a request's own error (a bad instruction, an unknown item)
        is its answer and does not fail the others. For a compute process (serve.workers):
        every answer can be pickled back. `alone`: see `recommend_many`."""
        from recdata.errors import transportable

        out: list[Any] = [None] * len(requests)
        asked: list[tuple[int, Asked]] = []
        for i, (user_id, instruction, k, now, history, *more) in enumerate(requests):
            try:
                asked.append((i, self.ask(user_id, instruction, k, now=now, history=history,
                                          diversity=more[0] if more else None)))
            except Exception as exc:
                out[i] = exc
        if asked:
            try:
                done: list[Any] = self.recommend_many([a for _, a in asked], alone=alone)
            except Exception as exc:  # the store is down: every request of the batch
                done = [exc] * len(asked)
            for (i, _), result in zip(asked, done, strict=True):
                out[i] = result
        return [transportable(o) if isinstance(o, BaseException) else o for o in out]

    def health(self) -> dict[str, Any]:
        """The loaded model and store; raises StoreUnavailableError when the online store
        does not answer right now."""
        self.reader.read_user(-1)
        out: dict[str, Any] = {"model": self.model.key, "online_store": self.cfg.online}
        if self._batcher is not None:
            out["batching"] = self._batcher.stats()
        return out

    def recommend_many(self, asked: list[Asked], *, alone: bool = True) -> list[Recommendation]:
        """`recommend` for several checked requests (`ask`) at once; each answer is the one
        the request gets alone (tests/test_ranker.py compares them). Stage times are the
        batch's. `alone` False: other processes are computing on this machine's cores, so
        a lone request does not spread its encode over a second thread (the same answer,
        less CPU: at 8 clients over HTTP a quarter of the requests still come one to a batch)."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        req = self._features_many(asked, timings, alone)
        batch, cands, x = req.batch, req.cands, req.x
        t3 = time.perf_counter()
        # what a request rules out ranks after what it allows (ranking.constraints)
        bad = violations(req.parsed, self.items, cands.idx)
        n, width = cands.idx.shape
        scores = self.model.predict_array(x, threads=1).reshape(n, width) - PENALTY * bad
        timings["score"] = (time.perf_counter() - t3) * 1000
        out = []
        for i, a in enumerate(asked):
            t4 = time.perf_counter()
            step = dict(timings)
            idx, valid, score, wrong = cands.idx[i], cands.valid[i], scores[i], bad[i]
            top = np.lexsort((idx, -score))
            top = top[valid[top]]
            one = batch if len(asked) == 1 else batch.slice(i, i + 1)
            parsed = req.parsed.rows(i, i + 1)
            lam = self._lambda(a, parsed)
            varied: set[int] = set()
            if lam > 0:
                top, varied = self._diversify(top, idx, score, wrong, lam, a.k)
                step["diversity"] = round(lam, 3)
            if self.reranker is not None:
                top, score = self._rerank(one, idx, top, score)
                # the LLM may reorder, never lift what the request rules out over what it
                # allows
                top = np.concatenate([top[~wrong[top]], top[wrong[top]]])
                t5 = time.perf_counter()
                step["llm"] = (t5 - t4) * 1000
                t4 = t5
            top = top[:a.k]
            rows = x[i * width:(i + 1) * width]
            contrib = self.explainer.contributions(rows, top, valid, self.cfg.attribution)
            uid = a.uid if req.known[i] else None
            reasons = self.explainer.reasons(one, rows[top], contrib, idx[top], uid, parsed,
                                             req.rated[i])
            said = self.explainer.request_reasons(parsed, idx[top], wrong[top],
                                                  [int(j) in varied for j in top])
            reasons = [a_ + r for a_, r in zip(said, reasons, strict=True)]
            step["explain"] = (time.perf_counter() - t4) * 1000
            items = [Recommended(self.item_keys[idx[j]], self.titles[idx[j]], float(score[j]),
                                 reasons[m]) for m, j in enumerate(top)]
            step["total"] = (time.perf_counter() - t0) * 1000
            if len(asked) > 1:
                step["batch_size"] = float(len(asked))
            out.append(Recommendation(
                a.user_id, a.text, not req.known[i] and not len(one.history.indices), items,
                int(valid.sum()), {k_: round(v, 2) for k_, v in step.items()}, a.now,
                self.explainer.understood(parsed)))
        return out

    def _lambda(self, asked: Asked, parsed: ParsedIntents) -> float:
        """The MMR lambda of one request: its own, else the service's; at least
        `variety_diversity` when the request asks for variety."""
        lam = self.cfg.diversity if asked.diversity is None else asked.diversity
        if parsed.variety is not None and bool(parsed.variety[0]):
            lam = max(lam, self.cfg.variety_diversity)
        return lam

    def _diversify(self, top: np.ndarray, idx: np.ndarray, score: np.ndarray,
                   wrong: np.ndarray, lam: float, k: int) -> tuple[np.ndarray, set[int]]:
        """`top` (positions into the candidates, the ranker's order) re-ranked by MMR over
        the item text vectors (ranking.diversity), among what the request allows; what it
        rules out stays after. Also: the positions MMR brought into the first `k` that the
        ranker had below them (said as "added for variety")."""
        vectors = self.items.vectors
        if vectors is None:
            return top, set()
        allowed, ruled_out = top[~wrong[top]], top[wrong[top]]
        pooled = vectors[idx[allowed[:POOL]]]  # all MMR looks at
        order = rerank(score[allowed], pooled, lam, k, temperature=self.cfg.diversity_temperature,
                       head_share=self.cfg.diversity_head_share)
        new = allowed[order]
        ranked_k = set(allowed[:k].tolist())
        return np.concatenate([new, ruled_out]), {int(j) for j in new[:k]
                                                  if int(j) not in ranked_k}

    def _seen(self, user: dict[str, Any]) -> tuple[np.ndarray, dict[int, float]]:
        """From the store's `user_seen` row: the catalogue rows the user has seen, most
        recent first, each once; and their ratings by row (the latest of an item seen
        twice). Array work, whatever the history's length."""
        ids = np.asarray(user.get("user_seen__items") or [], dtype=np.int64)
        ratings = np.asarray([np.nan if r is None else r for r in
                              user.get("user_seen__ratings") or []], dtype=np.float64)
        if len(ratings) != len(ids):
            ratings = np.full(len(ids), np.nan)
        rows = self._rows(ids)
        known = rows >= 0
        rows, ratings = rows[known], ratings[known]
        _, first = np.unique(rows, return_index=True)
        first = np.sort(first)  # the most recent occurrence of each item, in recency order
        rows, ratings = rows[first], ratings[first]
        rated = np.isfinite(ratings)
        return rows, dict(zip(rows[rated].tolist(), ratings[rated].tolist(), strict=True))

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

    def _batch(self, user_ids: list[int | None], seen: list[np.ndarray], texts: list[str],
               now: list[int]) -> RequestBatch:
        """A batch of the requests whose histories are `seen` (catalogue rows, most recent
        first: recency rank 1..): what the sources start from and what is excluded."""
        n = len(texts)
        cols = [s_.astype(np.int64) for s_ in seen]  # the store's history, a session's, or none
        history = sp.csr_matrix(
            (np.concatenate([np.arange(1, len(c) + 1, dtype=np.float32) for c in cols]),
             (np.repeat(np.arange(n), [len(c) for c in cols]), np.concatenate(cols))),
            shape=(n, len(self.item_ids)))
        requests = pl.DataFrame({
            "request_id": [f"online-{i}" for i in range(n)],
            "user_id": [int(u) if u is not None else -1 for u in user_ids],
            "task": ["intent" if len(c) else "search" for c in cols], "instruction": texts,
            "target_idx": [-1] * n, "timestamp": now,
        }, schema_overrides={"user_id": pl.Int64, "target_idx": pl.Int64,
                             "timestamp": pl.Int64})
        return RequestBatch(requests, history, len(self.item_ids))


def _load_kg(model: LTRModel, data_dir: Path) -> Any:
    from kg.train import KGResult

    key = model.extra.get("kg_key")
    if key is None:
        return None
    directory = data_dir / "kg" / key
    if not (directory / "result.json").exists():
        raise ConfigError(f"model {model.key} reads KG {key}, which is not under "
                          f"{data_dir / 'kg'}; rerun `instructrank train`")
    return KGResult.load(directory).embeddings
