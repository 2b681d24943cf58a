"""Everything the ranker learns from, built once per run and shared by every LTR variant.

Training requests sit at each user's last training positions; their candidate sources and
KG are fitted on the training window *without* those positions (`training_targets_removed`),
and their Feast features are point-in-time rows as of each request. Validation requests
(early stopping) are scored by sources fitted on the training window, test requests by
sources fitted on train + validation: every example sees only data from before it.

Memory follows a chunk, not the run: examples are built `EXAMPLE_ROWS` requests at a time
(candidates, one Feast point-in-time read, features); training keeps only the sampled rows
(the target and its negatives) of a capped number of requests; examples that later models
score again are kept in memory up to a budget and on disk beyond it. One candidate
generator (the fitted sources of one cut) is alive at a time.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from feature_repo.ranker import service_name
from feature_repo.ranker import service_refs as ranker_service_refs
from featurestore import store as fs
from ranking.candidates import SOURCES_FILE, SOURCES_VERSION, CandidateGenerator, Candidates
from ranking.constraints import with_items
from ranking.inputs import EXAMPLE_ROWS, Catalogue, FitData, RequestBatch
from ranking.intent_parser import ParsedIntents, parsed_for
from ranking.ltr.features import (
    Available,
    ItemTables,
    assemble,
    available_features,
    feature_names,
    require,
    store_columns,
)
from ranking.ltr.model import LTRConfig, LTRModel, fit_lambdarank, training_key
from ranking.scorers.base import ScorerContext
from recdata.atomic_io import write_text_atomic
from recdata.errors import ArtifactMissingError, FeatureStoreError


def _ref(column: str) -> str:
    return column.replace("__", ":", 1)


@dataclass(frozen=True)
class Examples:
    """A batch's candidates, their feature frame (row-major, requests x N) and labels.
    Examples read back from disk carry the candidates' indices and validity only: the
    per-source values are already in the frame."""

    cands: Candidates
    frame: pl.DataFrame
    labels: np.ndarray  # requests x N, 1 on the target

    @property
    def nbytes(self) -> int:
        return int(self.frame.estimated_size()) + self.cands.idx.nbytes * 4

    @staticmethod
    def concat(parts: list[Examples]) -> Examples:
        if len(parts) == 1:
            return parts[0]
        return Examples(Candidates.concat([p.cands for p in parts]),
                        pl.concat([p.frame for p in parts]),
                        np.concatenate([p.labels for p in parts]))


class ExampleStore:
    """Examples of scored chunks, kept for the next model that scores the same chunk: in
    memory up to `budget` bytes, then as uncompressed npz files in a private temporary
    folder (removed by `close`)."""

    def __init__(self, budget: int, features: list[str],
                 spill_root: Path | None = None) -> None:
        self.budget, self.features, self.spill_root = budget, features, spill_root
        self.memory: dict[tuple, Examples] = {}
        self.disk: dict[tuple, Path] = {}
        self.used = 0
        self._folder: Path | None = None

    def get(self, key: tuple) -> Examples | None:
        if key in self.memory:
            return self.memory[key]
        if key in self.disk:
            with np.load(self.disk[key]) as z:
                frame = pl.DataFrame(z["frame"], schema=self.features)
                cands = Candidates(z["idx"], {}, {}, z["valid"])
                return Examples(cands, frame, z["labels"])
        return None

    def put(self, key: tuple, ex: Examples) -> None:
        size = ex.nbytes
        if self.used + size <= self.budget:
            self.memory[key] = ex
            self.used += size
            return
        if self._folder is None:
            if self.spill_root is not None:
                self.spill_root.mkdir(parents=True, exist_ok=True)
            self._folder = Path(tempfile.mkdtemp(prefix="examples-", dir=self.spill_root))
        path = self._folder / f"{len(self.disk)}.npz"
        with open(path, "wb") as f:
            np.savez(f, frame=ex.frame.select(self.features).to_numpy(), idx=ex.cands.idx,
                     valid=ex.cands.valid, labels=ex.labels)
        self.disk[key] = path

    def close(self) -> None:
        self.memory.clear()
        self.disk.clear()
        self.used = 0
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


@dataclass
class TrainingSet:
    """The rows the ranker learns from, with every feature (ablations select columns):
    sampled training rows, all candidate rows of the validation requests, and the training
    requests' candidates (the encoder's hard negatives come from them)."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    vgroups: np.ndarray
    train_batch: RequestBatch
    train_idx: np.ndarray  # requests x N candidates of train_batch
    train_valid: np.ndarray
    features: list[str]    # the columns of x and vx
    weights: np.ndarray | None = None  # per row of x, when logged requests joined
    logged_groups: int = 0  # of `groups`, the last ones, from logged requests

    def columns(self, features: list[str]) -> list[int]:
        return [self.features.index(f) for f in features]


def _utc(seconds: pl.Series) -> pl.Series:
    return pl.from_epoch(seconds.cast(pl.Int64), "s").dt.cast_time_unit("us") \
        .dt.replace_time_zone("UTC").alias("event_timestamp")


def offline_rows(repo: fs.FeatureRepo, batch: RequestBatch, item_ids: np.ndarray,
                 columns: tuple[list[str], list[str]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Point-in-time rows of the Feast views: one per request (user views) and one per
    (request, candidate) (item views), each as of the request's timestamp, read by as-of
    joins over the views' sources (`fs.point_in_time`, equal to Feast's
    get_historical_features). `item_ids` is requests x N; `columns` the (user, item) store
    columns to read."""
    n, k = item_ids.shape
    user_refs, item_refs = ([_ref(c) for c in cols] for cols in columns)
    ts = _utc(batch.requests["timestamp"])
    users = pl.DataFrame({"user_id": batch.requests["user_id"], "event_timestamp": ts})
    u = fs.point_in_time(repo, users.unique(maintain_order=True), user_refs)
    user_rows = users.join(u, on=["user_id", "event_timestamp"], how="left",
                           maintain_order="left")
    pairs = pl.DataFrame({"item_id": item_ids.ravel().astype(np.int64),
                          "event_timestamp": ts.gather(np.repeat(np.arange(n), k))})
    it = fs.point_in_time(repo, pairs.unique(maintain_order=True), item_refs)
    item_rows = pairs.join(it, on=["item_id", "event_timestamp"], how="left",
                           maintain_order="left")
    return user_rows, item_rows


def item_tables(generator: CandidateGenerator, context: ScorerContext) -> ItemTables:
    """The static item arrays the features read, taken from the fitted sources."""
    emb = generator.sources.get("embedding")
    attribute = generator.sources.get("attribute")
    if attribute is None:
        from ranking.scorers.instruction import FilterPopularity

        some = next(iter(generator.sources.values()))
        attribute = FilterPopularity(context=context).fit(some.fitted)
    return ItemTables.from_attribute_source(attribute, emb.items if emb is not None else None)


@dataclass
class LTRResources:
    """Shared inputs of every LTR variant in a run (see the module docstring)."""

    cfg: LTRConfig
    context: ScorerContext
    catalogue: Catalogue
    repo: fs.FeatureRepo
    store: Any
    ltr_fit: FitData
    val_fit: FitData
    train_batch: RequestBatch
    val_batches: list[RequestBatch]
    data_fingerprint: str
    models_dir: Path
    # logged requests with their chosen items, each group with the fit of its cut
    logged_batches: list[tuple[FitData, RequestBatch]] = field(default_factory=list)
    serving_fit: FitData | None = None  # the whole log: what serving's sources are fitted on
    kg_key: str | None = None
    progress: bool = True
    example_budget: int = 256 * 2**20  # each LTR resource of a run has one (tuned, untuned)
    spill_dir: Path | None = None
    # model name -> saved folder (from train()'s manifest): the versions are loaded, never fitted
    trained: dict[str, Path] | None = None
    _memo: dict = field(default_factory=dict, repr=False)
    _generator: tuple[FitData, CandidateGenerator] | None = field(default=None, repr=False)
    _store: ExampleStore | None = field(default=None, repr=False)
    _training: TrainingSet | None = field(default=None, repr=False)

    def generator(self, fit: FitData) -> CandidateGenerator:
        """The sources fitted on `fit`; the previous cut's are dropped first (EASE alone is
        items x items: three cuts alive at once would triple the peak)."""
        if self._generator is None or self._generator[0] is not fit:
            self._generator = None
            self._generator = (fit, CandidateGenerator(self.cfg.candidates,
                                                       self.context).fit(fit))
        return self._generator[1]

    def release(self) -> None:
        """Drop the fitted sources (the examples already built stay)."""
        self._generator = None

    def close(self) -> None:
        self.release()
        if self._store is not None:
            self._store.close()

    @property
    def example_store(self) -> ExampleStore:
        if self._store is None:
            self._store = ExampleStore(self.example_budget, self.features, self.spill_dir)
        return self._store

    @property
    def available(self) -> Available:
        """What this run computes features from: the configured candidate sources, the
        store columns this repo has sources for (a build without embeddings has no
        profile view, and the rankers that read none train on it), the KG if one was
        trained, the item vectors if the embedding source is configured."""
        key = ("available", self.context.kg is not None)
        if key not in self._memo:
            built = set(fs.built_views(self.repo))
            every = store_columns(feature_names("full"))
            served = frozenset(c for c in every[0] + every[1] if c.split("__")[0] in built)
            sources = frozenset(self.cfg.candidates.weights)
            self._memo[key] = Available(sources, served, self.context.kg is not None,
                                        "embedding" in sources)
        return self._memo[key]

    @property
    def features(self) -> list[str]:
        """Every declared feature this run can compute: the examples' columns, which each
        ablation selects from."""
        return available_features(self.available)

    def parsed(self, fit: FitData, batch: RequestBatch) -> tuple[ParsedIntents, ItemTables]:
        """The batch's typed intents (titles linked) and the item tables they are read
        against."""
        tables = item_tables(self.generator(fit), self.context)
        return parsed_for(self.context, batch, tables.genres, tables.schema,
                          tables.titles), tables

    def _compute(self, fit: FitData, chunk: RequestBatch) -> Examples:
        gen = self.generator(fit)
        parsed, tables = self.parsed(fit, chunk)
        # items a request names seed its history (ranking.constraints)
        seeded = with_items(chunk, parsed.mentions(len(chunk)))
        cands = gen.generate(seeded)
        ids = self.catalogue.items["item_id"].to_numpy()[cands.idx]
        user_rows, item_rows = offline_rows(self.repo, chunk, ids,
                                            store_columns(self.features))
        frame = assemble(seeded, cands, user_rows, item_rows, tables,
                         kg=self.context.kg,
                         anonymous=(chunk.requests["task"] == "search").to_numpy(),
                         parsed=parsed, features=self.features)
        self.context.forget(chunk)
        self.context.forget(seeded)
        labels = (cands.idx == chunk.requests["target_idx"].to_numpy()[:, None])
        return Examples(cands, frame, labels.astype(np.int32))

    def iter_examples(self, fit: FitData, batch: RequestBatch, *,
                      keep: bool = True) -> Iterator[Examples]:
        """Examples of `batch` with sources fitted on `fit`, EXAMPLE_ROWS requests at a time;
        `keep` stores them for the next model that scores the same rows."""
        for chunk in batch.chunks(EXAMPLE_ROWS):
            key = (fit.name, id(fit), *chunk.key)
            ex = self.example_store.get(key) if keep else None
            if ex is None:
                ex = self._compute(fit, chunk)
                if keep:
                    self.example_store.put(key, ex)
            yield ex

    def examples(self, fit: FitData, batch: RequestBatch) -> Examples:
        """All of `batch`'s examples at once (for batches known to be small)."""
        return Examples.concat(list(self.iter_examples(fit, batch)))

    def training_set(self) -> TrainingSet:
        """Built once per run, whatever the ablations (see TrainingSet)."""
        if self._training is None:
            self._training = self._build_training_set()
        return self._training

    def _build_training_set(self) -> TrainingSet:
        from recdata.stages import stage

        cfg = self.cfg
        train_batch = _sample(self.train_batch, cfg.max_train_requests, cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        parts, idx, valid = [], [], []
        with stage("ltr training examples"):
            for ex in tqdm(self.iter_examples(self.ltr_fit, train_batch, keep=False),
                           total=-(-len(train_batch) // EXAMPLE_ROWS), leave=False,
                           desc="ltr training examples", disable=not self.progress):
                parts.append(_groups(ex, cfg.negatives_per_request, rng))
                idx.append(ex.cands.idx)
                valid.append(ex.cands.valid)
        logged = []
        if self.logged_batches:
            with stage("ltr logged-request examples"):
                for fit, batch in self.logged_batches:
                    logged += [_groups(ex, cfg.negatives_per_request, rng)
                               for ex in self.iter_examples(fit, batch, keep=False)]
        vparts = []
        budget = cfg.max_valid_requests
        with stage("ltr validation examples"):
            for b in self.val_batches:
                share = None if budget is None else max(1, budget // len(self.val_batches))
                sampled = _sample(b, share, cfg.seed)
                keep = sampled is b  # unsampled: the same rows the harness scores later
                vparts += [_groups(ex, None, None)
                           for ex in self.iter_examples(self.val_fit, sampled, keep=keep)]
        self.release()
        width = len(self.features)
        x, y, g = _stack(parts + logged, width)
        vx, vy, vg = _stack(vparts, width)
        weights, n_logged = None, sum(len(p[2]) for p in logged)
        if n_logged:
            weights = _logged_weights(sum(len(p[1]) for p in parts),
                                      sum(len(p[1]) for p in logged), cfg.logged_share)
        return TrainingSet(x, y, g, vx, vy, vg, train_batch,
                           np.concatenate(idx) if idx else np.zeros((0, 0), np.int64),
                           np.concatenate(valid) if valid else np.zeros((0, 0), bool),
                           self.features, weights, n_logged)

    def train(self, ablation: str, name: str | None = None) -> LTRModel:
        """Train (once per ablation) on the training requests, stopping early on validation;
        saved as `name` (default `ltr_<ablation>`)."""
        name = name or f"ltr_{ablation}"
        if self.trained is not None:
            return self.context.cached(self, ("ltr_model", ablation, name),
                                       lambda: self._load(name))
        return self.context.cached(self, ("ltr_model", ablation, name),
                                   lambda: self._train(ablation, name))

    def _load(self, name: str) -> LTRModel:
        assert self.trained is not None
        folder = self.trained.get(name)
        if folder is None or not (folder / "meta.json").exists():
            raise ArtifactMissingError(
                f"the ranker {name!r} was not trained for this run"
                + (f" ({folder} is gone)" if folder is not None else "")
                + f"; run `instructrank train` with the same options and --models "
                  f"including {name}")
        return LTRModel.load(folder)

    def _train(self, ablation: str, name: str) -> LTRModel:
        from recdata.stages import stage

        features = feature_names(ablation)
        try:
            require(features, self.available, name)
        except FeatureStoreError as exc:
            raise FeatureStoreError(
                f"{exc} (feature repo {self.repo.path}; built without embeddings? rebuild it "
                "with `instructrank features build`, or evaluate a ranker that reads none, "
                "such as ltr_no_text)") from None
        service = self._service(ablation)
        encoder = getattr(self.context.encoder, "fingerprint", None)
        # the saved sources' format is part of what a model is: a new one retrains it
        key = training_key(self.cfg, ablation,
                           f"{self.data_fingerprint}:{encoder}:sources-v{SOURCES_VERSION}")
        done = self.models_dir / f"{name}-{key}"
        if (done / "meta.json").exists():  # same config, data and encoder: same model
            write_text_atomic(self.models_dir / f"{name}.latest", done.name)
            return LTRModel.load(done)
        ts = self.training_set()
        if len(ts.groups) == 0 or len(ts.vgroups) == 0:
            raise FeatureStoreError("no training or validation request has its target among "
                                    "the candidates; nothing to learn from")
        cols = ts.columns(features)
        with stage(f"{name} training"):
            booster, best, ndcg = fit_lambdarank(
                self.cfg, (ts.x[:, cols], ts.y, ts.groups), (ts.vx[:, cols], ts.vy, ts.vgroups),
                features, ts.weights)
        serving = self.save_serving_sources(encoder)
        model = LTRModel(booster, features, ablation, self.cfg.model_dump(mode="json"), key,
                         best, ndcg, extra={
                             "feature_service": service, "serving_sources": serving,
                             "kg_key": self.kg_key, "encoder": encoder,
                             "data_fingerprint": self.data_fingerprint,
                             "train_requests": len(ts.groups), "valid_requests": len(ts.vgroups),
                             "logged_train_requests": ts.logged_groups,
                             "train_rows": int(ts.x.shape[0])})
        folder = model.save(self.models_dir / f"{name}-{key}")
        write_text_atomic(self.models_dir / f"{name}.latest", folder.name)
        return model


    def save_serving_sources(self, encoder: str | None) -> str | None:
        """Fit the candidate sources on the whole log and save them under
        `<data>/serving/<key>`, the key hashing everything they depend on (candidate
        config, data, encoder, KG): serving loads them and fits nothing. Done once per key;
        the run's other generator is released first (one fitted set alive at a time)."""
        import hashlib
        import json

        from recdata.stages import stage

        if self.serving_fit is None:
            return None
        key = hashlib.sha1(json.dumps({
            "candidates": self.cfg.candidates.model_dump(mode="json"),
            "data": self.data_fingerprint, "encoder": encoder, "kg": self.kg_key,
            "version": SOURCES_VERSION}, sort_keys=True).encode()).hexdigest()[:12]
        folder = self.models_dir.parent / "serving" / key
        if not (folder / SOURCES_FILE).exists():
            self.release()
            with stage("serving sources (fit on the whole log, saved)"):
                CandidateGenerator(self.cfg.candidates, self.context).fit(
                    self.serving_fit).save(folder)
            self.context.forget(self.serving_fit)  # its memoised arrays (EASE: items^2)
        return key

    def _service(self, ablation: str) -> str:
        """The Feast feature service the `ablation` version is trained from: applied in this
        repo's registry, holding exactly the references its features read (the examples
        are read point-in-time for the union of the run's services)."""
        name = service_name(ablation)
        fs.require_service(self.store, name, ranker_service_refs(ablation),
                           f"the {ablation!r} ranker")
        return name


def _sample(batch: RequestBatch, limit: int | None, seed: int) -> RequestBatch:
    """At most `limit` requests of `batch` (seeded, in their order); `batch` itself when
    it is no larger."""
    if limit is None or len(batch) <= limit:
        return batch
    rows = np.sort(np.random.default_rng(seed).choice(len(batch), limit, replace=False))
    return RequestBatch(batch.requests[rows.tolist()], batch.history[rows], batch.n_items)


def _groups(ex: Examples, negatives: int | None, rng: np.random.Generator | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return kept_rows(ex.frame.to_numpy(), ex.labels, ex.cands.valid, negatives, rng)


def kept_rows(x: np.ndarray, labels: np.ndarray, valid: np.ndarray, negatives: int | None,
              rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Requests whose target is a candidate, each with the target and up to `negatives`
    random other candidates (drawn from `rng`, one row of noise per request); every
    feature column. `x` holds (request, candidate) rows in row-major order."""
    n, k = labels.shape
    has = labels.any(axis=1)
    keep = np.zeros((n, k), dtype=bool)
    keep[has] = True
    keep &= valid
    if negatives is not None and negatives < k - 1 and rng is not None:
        noise = rng.random((n, k))
        noise[labels == 1] = -1.0  # the target always stays
        cut = np.sort(noise, axis=1)[:, negatives][:, None]
        keep &= noise <= cut
    mask = keep.ravel()
    return x[mask], labels.ravel()[mask], keep.sum(axis=1)[has]


def _logged_weights(generated: int, logged: int, share: float) -> np.ndarray:
    """Row weights giving the logged rows `share` of the total weight: generated rows weigh
    1, so the ranker's scale (and early stopping) stays that of the generated requests."""
    w = share / (1 - share) * generated / logged if generated else 1.0
    return np.concatenate([np.ones(generated), np.full(logged, w)])


def _stack(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], width: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return (np.zeros((0, width), np.float32), np.zeros(0, np.int32),
                np.zeros(0, np.int64))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))
