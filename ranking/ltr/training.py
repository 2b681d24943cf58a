"""Everything the ranker learns from, built once per run and shared by every LTR variant.

Training requests sit at each user's last training positions; their candidate sources and
KG are fitted on the training window *without* those positions (`training_targets_removed`),
and their Feast features are point-in-time rows as of each request. Validation requests
(early stopping) are scored by sources fitted on the training window, test requests by
sources fitted on train + validation: every example sees only data from before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from ranking import features as fs
from ranking.candidates import CandidateGenerator, Candidates
from ranking.inputs import Catalogue, FitData, RequestBatch
from ranking.ltr.features import ITEM_COLUMNS, USER_COLUMNS, ItemTables, assemble, feature_names
from ranking.ltr.model import LTRConfig, LTRModel, fit_lambdarank, training_key
from ranking.scorers.base import ScorerContext
from recdata.atomic_io import write_text_atomic
from recdata.errors import FeatureStoreError

USER_REFS = [c.replace("__", ":", 1) for c in USER_COLUMNS]
ITEM_REFS = [c.replace("__", ":", 1) for c in ITEM_COLUMNS]


@dataclass(frozen=True)
class Examples:
    """A batch's candidates, their feature frame (row-major, requests x N) and labels."""

    cands: Candidates
    frame: pl.DataFrame
    labels: np.ndarray  # requests x N, 1 on the target


def _utc(seconds: pl.Series) -> pl.Series:
    return pl.from_epoch(seconds.cast(pl.Int64), "s").dt.cast_time_unit("us") \
        .dt.replace_time_zone("UTC").alias("event_timestamp")


def offline_rows(repo: fs.FeatureRepo, store: Any, batch: RequestBatch,
                 item_ids: np.ndarray) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Point-in-time Feast rows: one per request (user views) and one per (request, candidate)
    (item views), each as of the request's timestamp. `item_ids` is requests x N."""
    n, k = item_ids.shape
    ts = _utc(batch.requests["timestamp"])
    users = pl.DataFrame({"user_id": batch.requests["user_id"], "event_timestamp": ts})
    u = fs.historical_features(repo, store, users.unique(maintain_order=True), USER_REFS)
    user_rows = users.join(u, on=["user_id", "event_timestamp"], how="left",
                           maintain_order="left")
    pairs = pl.DataFrame({"item_id": item_ids.ravel().astype(np.int64),
                          "event_timestamp": ts.gather(np.repeat(np.arange(n), k))})
    it = fs.historical_features(repo, store, pairs.unique(maintain_order=True), ITEM_REFS)
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
    kg_key: str | None = None
    progress: bool = True
    _memo: dict = field(default_factory=dict, repr=False)

    def generator(self, fit: FitData) -> CandidateGenerator:
        return self.context.cached(fit, ("ltr_candidates",), lambda: CandidateGenerator(
            self.cfg.candidates, self.context).fit(fit))

    def examples(self, fit: FitData, batch: RequestBatch) -> Examples:
        """Candidates, Feast rows and features of `batch` with sources fitted on `fit`."""
        def compute() -> Examples:
            gen = self.generator(fit)
            cands = gen.generate(batch)
            ids = self.catalogue.items["item_id"].to_numpy()[cands.idx]
            user_rows, item_rows = offline_rows(self.repo, self.store, batch, ids)
            frame = assemble(batch, cands, user_rows, item_rows, item_tables(gen, self.context),
                             kg=self.context.kg,
                             anonymous=(batch.requests["task"] == "search").to_numpy())
            labels = (cands.idx == batch.requests["target_idx"].to_numpy()[:, None])
            return Examples(cands, frame, labels.astype(np.int32))

        return self.context.cached(batch, ("ltr_examples", id(fit)), compute)

    def train(self, ablation: str, name: str | None = None) -> LTRModel:
        """Train (once per ablation) on the training requests, stopping early on validation;
        saved as `name` (default `ltr_<ablation>`)."""
        name = name or f"ltr_{ablation}"
        return self.context.cached(self, ("ltr_model", ablation, name),
                                   lambda: self._train(ablation, name))

    def _train(self, ablation: str, name: str) -> LTRModel:
        features = feature_names(ablation)
        encoder = getattr(self.context.encoder, "fingerprint", None)
        key = training_key(self.cfg, ablation, f"{self.data_fingerprint}:{encoder}")
        done = self.models_dir / f"{name}-{key}"
        if (done / "meta.json").exists():  # same config, data and encoder: same model
            write_text_atomic(self.models_dir / f"{name}.latest", done.name)
            return LTRModel.load(done)
        steps = tqdm(total=2, desc=f"ltr_{ablation} features", disable=not self.progress,
                     leave=False)
        train = self.examples(self.ltr_fit, self.train_batch)
        steps.update()
        valid = [self.examples(self.val_fit, b) for b in self.val_batches]
        steps.update()
        steps.close()
        x, y, g = _groups(train, features, self.cfg.negatives_per_request, self.cfg.seed)
        vx, vy, vg = _groups_concat(valid, features)
        if len(g) == 0 or len(vg) == 0:
            raise FeatureStoreError("no training or validation request has its target among "
                                    "the candidates; nothing to learn from")
        booster, best, ndcg = fit_lambdarank(self.cfg, (x, y, g), (vx, vy, vg), features)
        model = LTRModel(booster, features, ablation, self.cfg.model_dump(mode="json"), key,
                         best, ndcg, extra={
                             "kg_key": self.kg_key, "encoder": encoder,
                             "data_fingerprint": self.data_fingerprint,
                             "train_requests": len(g), "valid_requests": len(vg),
                             "train_rows": int(x.shape[0])})
        folder = model.save(self.models_dir / f"{name}-{key}")
        write_text_atomic(self.models_dir / f"{name}.latest", folder.name)
        return model


def _groups(ex: Examples, features: list[str], negatives: int | None,
            seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Requests whose target is a candidate, each with the target and up to `negatives`
    random other candidates."""
    n, k = ex.labels.shape
    has = ex.labels.any(axis=1)
    keep = np.zeros((n, k), dtype=bool)
    keep[has] = True
    keep &= ex.cands.valid
    if negatives is not None and negatives < k - 1:
        rng = np.random.default_rng(seed)
        noise = rng.random((n, k))
        noise[ex.labels == 1] = -1.0  # the target always stays
        cut = np.sort(noise, axis=1)[:, negatives][:, None]
        keep &= noise <= cut
    mask = keep.ravel()
    x = ex.frame.select(features).to_numpy()[mask]
    y = ex.labels.ravel()[mask]
    return x, y, keep.sum(axis=1)[has]


def _groups_concat(items: list[Examples], features: list[str]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = [_groups(e, features, None, 0) for e in items]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))
