"""`train()`: the stage that fits everything a run's models read, so that evaluation and
serving only load.

It trains (each cached by a hash of its inputs, so a rerun with nothing changed fits
nothing):
- the hold-out KG (`<data>/kg/<key>`), trained without the positions the ranker's training
  requests sit on;
- each ranker version the config names (`<data>/models/<name>-<key>`), with the candidate
  sources serving loads (`<data>/serving/<key>`);
- the instruction-tuned encoder (`<data>/encoders/encoder-<key>`) and, for `ltr_tuned`, the
  feature repo built from it (`<data>/repos/tuned-<key>`);

and writes a manifest, `<data>/trained/<fingerprint>.json`, naming them. The fingerprint
hashes the config less its evaluation-only fields (EvalConfig.training_fingerprint), so
`evaluate()` with the same options finds the manifest and reads every artifact from it; an
artifact it needs and does not find is an error that says to run `instructrank train`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from ranking.evaluation.config import EvalConfig
from ranking.inputs import FitData, request_batch
from ranking.prepare import Prepared, prepare, run_dataset, runnable_models
from ranking.scorers.base import ScorerContext, scorer_class
from recdata.atomic_io import write_text_atomic
from recdata.dataset import Dataset
from recdata.errors import ArtifactMissingError, ConfigError

if TYPE_CHECKING:
    from kg.train import KGResult
    from ranking.ltr.training import LTRResources

MANIFESTS = "trained"
TRAIN_COMMAND = "`instructrank train` with the same dataset and config options"


class Manifest(BaseModel):
    """What `train()` made for one training fingerprint. Paths are relative to the data
    directory where they live under it (models, KG), absolute otherwise."""

    model_config = ConfigDict(extra="forbid")
    fingerprint: str
    dataset: str
    kg: str | None = None  # folder under <data>/kg
    models: dict[str, str] = {}  # model name -> folder under <data>/models
    encoder: str | None = None  # the tuned encoder's directory
    tuned_repo: str | None = None  # the feature repo built from the tuned encoder
    path: Path | None = None  # where it was read from (not saved)

    @staticmethod
    def file(data_dir: Path, fingerprint: str) -> Path:
        return Path(data_dir) / MANIFESTS / f"{fingerprint}.json"

    @classmethod
    def load(cls, data_dir: Path, fingerprint: str) -> Manifest | None:
        path = cls.file(data_dir, fingerprint)
        if not path.exists():
            return None
        return cls.model_validate({**json.loads(path.read_text()), "path": path})

    def save(self, data_dir: Path) -> Path:
        path = self.file(data_dir, self.fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, self.model_dump_json(indent=2, exclude={"path"}))
        return path

    def require(self, name: str, what: str) -> Any:
        value = getattr(self, name)
        if value is None:
            raise ArtifactMissingError(f"{what} was not trained for this run (manifest "
                                       f"{self.path}); run {TRAIN_COMMAND} first")
        return value

    def model_paths(self, data_dir: Path) -> dict[str, Path]:
        return {name: Path(data_dir) / "models" / folder for name, folder in self.models.items()}


def needs_training(models: list[str]) -> bool:
    """Whether any of `models` reads an artifact of `train()` (the baselines fit in the
    evaluation itself: their fits are part of its protocol, grid and all)."""
    return any(c.uses_kg or c.uses_feature_store or c.uses_tuned_encoder
               for c in map(scorer_class, models))


def require_manifest(cfg: EvalConfig, ds: Dataset) -> Manifest:
    """The manifest of `train()` for this config and data, or an error saying what to run."""
    fingerprint = cfg.training_fingerprint(ds.fingerprint())
    manifest = Manifest.load(cfg.data_dir, fingerprint)
    if manifest is None:
        raise ArtifactMissingError(
            f"nothing was trained for this dataset and config (no "
            f"{Manifest.file(cfg.data_dir, fingerprint)}); run {TRAIN_COMMAND} first")
    return manifest


def run_context(cfg: EvalConfig, ds: Dataset, prep: Prepared, models: list[str], *,
                progress: bool, trained: Manifest | None) -> tuple[ScorerContext, Manifest]:
    """The resources `models` read. With `trained` None this is the training context (the
    KG trained, the ranker's resources able to train, the encoder tuned) and the returned
    manifest records what was made; with a manifest every artifact is loaded from it and
    nothing is fitted."""
    from recdata.stages import stage

    record = trained or Manifest(fingerprint=cfg.training_fingerprint(ds.fingerprint()),
                                 dataset=cfg.dataset)
    classes = [scorer_class(m) for m in models]
    encoder = None
    if any(c.uses_instruction for c in classes):
        from encoders.text import TextEncoder

        encoder = TextEncoder(cfg.encoder_path, cache_dir=cfg.data_dir / "cache",
                              show_progress=progress)
    context = ScorerContext(encoder=encoder, artifacts=cfg.data_dir / "indexes")
    kg_key = None
    if any(c.uses_kg for c in classes):
        if trained is None:
            kg = holdout_kg(cfg, ds, progress)
            record.kg = kg.key
        else:
            from kg.train import KGResult

            kg = KGResult.load(cfg.data_dir / "kg" / trained.require("kg", "the hold-out KG"))
        context.kg, kg_key = kg.embeddings, kg.key
    paths = None if trained is None else trained.model_paths(cfg.data_dir)
    if any(c.uses_feature_store and not c.uses_tuned_encoder for c in classes):
        context.ltr = ltr_resources(cfg, ds, prep, context, progress, trained=paths)
        context.ltr.kg_key = kg_key
    if any(c.uses_tuned_encoder for c in classes):
        with stage("encoder tuning" if trained is None else "tuned encoder"):
            context.tuned = tuned_context(
                cfg, ds, prep, context, progress,
                ltr=any(c.uses_tuned_encoder and c.uses_feature_store for c in classes),
                manifest=trained, record=record)
        if context.tuned.ltr is not None:
            context.tuned.ltr.kg_key = kg_key
    return context, record


def close_context(context: ScorerContext) -> None:
    """Release the example stores (and their spill files) of both ranker resources."""
    for ctx in (context, context.tuned):
        if ctx is not None and ctx.ltr is not None:
            ctx.ltr.close()


@dataclass
class TrainResult:
    """What `train()` made: the manifest (already saved, at `manifest.path`) and the
    stages' times and peak memory."""

    manifest: Manifest
    data_dir: Path
    seconds: float
    skipped: dict[str, str] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)

    def save(self) -> Path:
        """Write the manifest (train() already has: a rewrite of the same text is a no-op)."""
        return self.manifest.save(self.data_dir)


def train(cfg: EvalConfig, *, dataset: Dataset | None = None,
          progress: bool = True) -> TrainResult:
    """Fit every artifact the models of `cfg` read (see the module docstring); a model list
    that grows adds to the same manifest."""
    from recdata.stages import RECORDS, records_since, stage

    started = time.perf_counter()
    first_stage = len(RECORDS)
    with stage("load and prepare"):
        ds = run_dataset(cfg, dataset)
        prep = prepare(cfg, ds)
    models, skipped = runnable_models(cfg.models, prep.catalogue.n_items)
    fingerprint = cfg.training_fingerprint(ds.fingerprint())
    before = Manifest.load(cfg.data_dir, fingerprint)
    context, made = run_context(cfg, ds, prep, models, progress=progress, trained=None)
    try:
        for name in models:
            cls = scorer_class(name)
            if not cls.uses_feature_store:
                continue
            res = context.tuned.ltr if cls.uses_tuned_encoder else context.ltr
            model = res.train(cls.ablation, name)
            made.models[name] = f"{name}-{model.key}"
    finally:
        close_context(context)
    if before is not None:  # what an earlier, wider model list made stays listed
        made = Manifest.model_validate({
            **before.model_dump(exclude={"path"}),
            **made.model_dump(exclude={"path", "models"}, exclude_none=True),
            "models": {**before.models, **made.models}})
    made.path = made.save(cfg.data_dir)
    return TrainResult(made, cfg.data_dir, time.perf_counter() - started, skipped,
                       records_since(first_stage))


def train_holdout_kg(cfg: EvalConfig, *, dataset: Dataset | None = None,
                     progress: bool = True) -> KGResult | None:
    """Only the hold-out KG `train()` starts with, cached where `train()` looks for it
    (None when none of the models it would train reads a KG). It reads the interactions
    alone, not the feature repo, so it can train while `features build` runs (make run) and
    the `train` after it finds it made."""
    ds = run_dataset(cfg, dataset)
    models, _ = runnable_models(cfg.models, ds.items.height)
    if not any(scorer_class(m).uses_kg for m in models):
        return None
    return holdout_kg(cfg, ds, progress)


def holdout_kg(cfg: EvalConfig, ds: Dataset, progress: bool) -> KGResult:
    """`ltr_kg` as the stage `train()` reports."""
    from recdata.stages import stage

    with stage("kg (hold-out)"):
        return ltr_kg(cfg, ds, progress)


def ltr_kg(cfg: EvalConfig, ds: Dataset, progress: bool) -> KGResult:
    """The KG every KG feature of the run reads: trained without each user's last training
    positions, where the ranker's training requests sit, so no KG feature has seen a target
    (the served KG of `instructrank kg train` is newer; see kg/triples.py)."""
    from kg.train import train_kg
    from kg.triples import build_triples

    external = None
    if (cfg.external_triples is None) != (cfg.entity_map is None):
        raise ConfigError("an external KG needs both --external-triples and --entity-map")
    if cfg.external_triples is not None and cfg.entity_map is not None:
        from kg.external import load_external

        external = load_external(cfg.external_triples, cfg.entity_map,
                                 ds.items["item_id"], ds.ids).triples
    triples = build_triples(ds, external, hold_out_last=cfg.instructions.train_requests_per_user,
                            max_edges=cfg.kg.max_triples, seed=cfg.kg.seed)
    return train_kg(triples, cfg.kg, cfg.data_dir / "kg", progress=progress)


def ltr_resources(cfg: EvalConfig, ds: Dataset, prep: Prepared, context: ScorerContext,
                  progress: bool, trained: dict[str, Path] | None = None) -> LTRResources:
    """The ranker's inputs for this run. `trained` (model name -> folder, from a manifest)
    makes them read-only: each ranker version is loaded from its folder, none is fitted."""
    import json as _json

    from featurestore import store as fs
    from ranking.ltr.training import LTRResources
    from recdata.errors import FeatureStoreError
    from recdata.split import training_targets_removed

    repo = fs.FeatureRepo(cfg.feature_repo or fs.PACKAGE_REPO)
    meta = repo.sources / "meta.json"
    built = _json.loads(meta.read_text()) if meta.exists() else None
    if built is None or built.get("data_fingerprint") != ds.fingerprint():
        raise FeatureStoreError(
            f"the feature repo {repo.path} holds no features for this dataset "
            f"({'none built' if built is None else 'built for ' + str(built.get('dataset'))}"
            f"); run `instructrank features build` with the same dataset options first")
    held = training_targets_removed(prep.split, cfg.instructions.train_requests_per_user)
    train_requests = prep.requests.filter(pl.col("split") == "train")
    if cfg.ltr.max_train_requests and train_requests.height > cfg.ltr.max_train_requests:
        # sampled before their histories are built: those are the size of the log
        rows = np.random.default_rng(cfg.ltr.seed).choice(
            train_requests.height, cfg.ltr.max_train_requests, replace=False)
        train_requests = train_requests[np.sort(rows).tolist()]
    return LTRResources(
        cfg=cfg.ltr, context=context, catalogue=prep.catalogue, repo=repo,
        store=repo.store(), ltr_fit=FitData("ltr", held, prep.catalogue),
        val_fit=prep.fits["val"], serving_fit=FitData("serving", prep.split, prep.catalogue),
        train_batch=request_batch(train_requests, prep.split, prep.catalogue),
        val_batches=[prep.batches[("val", t)] for t in cfg.tasks],
        logged_batches=prep.train_logged,
        data_fingerprint=cfg.training_fingerprint(ds.fingerprint()),
        models_dir=cfg.data_dir / "models", progress=progress, trained=trained)


def encoder_examples(cfg: EvalConfig, prep: Prepared, context: ScorerContext) -> pl.DataFrame:
    """(query, positive, negatives) rows for instruction tuning, from the training requests
    only: the query is the instruction with the titles of the user's recent items, the
    positive the target's text, the hard negative one of the best-ranked other candidates
    (merged sources, fitted without the training targets) drawn with the run's seed."""
    from ranking.candidates import CandidateGenerator
    from ranking.queries import history_label, query_texts
    from recdata.split import training_targets_removed

    if context.ltr is not None:  # the ranker's candidates, on the same cut: reuse them
        ts = context.ltr.training_set()
        batch, idx, valid = ts.train_batch, ts.train_idx, ts.train_valid
    else:
        held = training_targets_removed(prep.split, cfg.instructions.train_requests_per_user)
        batch = request_batch(prep.requests.filter(pl.col("split") == "train"), prep.split,
                              prep.catalogue)
        generator = CandidateGenerator(cfg.ltr.candidates, ScorerContext(
            encoder=context.require_encoder(), kg=context.kg)).fit(
                FitData("encoder_tuning", held, prep.catalogue))
        from ranking.constraints import with_items
        from ranking.intent_parser import parsed_for
        from ranking.ltr.training import item_tables

        tables = item_tables(generator, generator.context)
        idx, valid = [], []
        for chunk in batch.chunks():  # only the indices are kept, and nothing per chunk
            # named items seed the history, as the ranker's own candidates do (_compute)
            parsed = parsed_for(generator.context, chunk, tables.genres, tables.schema,
                                tables.titles)
            seeded = with_items(chunk, parsed.mentions(len(chunk)))
            cands = generator.generate(seeded)
            idx.append(cands.idx)
            valid.append(cands.valid)
            generator.context.forget(chunk)
            generator.context.forget(seeded)
        idx, valid = np.concatenate(idx), np.concatenate(valid)
    targets = batch.requests["target_idx"].to_numpy()
    top = idx[:, :HARD_NEGATIVE_POOL + 1]
    noise = np.random.default_rng(cfg.seed).random(top.shape)
    noise[(top == targets[:, None]) | ~valid[:, :top.shape[1]]] = np.inf
    negative = top[np.arange(len(top)), noise.argmin(axis=1)]
    text = prep.catalogue.text.to_numpy()
    titles = prep.catalogue.items["title"].to_numpy()
    return pl.DataFrame({
        "query": query_texts(batch, titles, label=history_label(prep.catalogue.schema)),
        "positive": text[targets],
        "negatives": [[t] for t in text[negative]],
        "task": batch.requests["task"],
    })


HARD_NEGATIVE_POOL = 10  # the hard negative is drawn from the top this many other candidates


def tuned_context(cfg: EvalConfig, ds: Dataset, prep: Prepared, context: ScorerContext,
                  progress: bool, ltr: bool, manifest: Manifest | None = None,
                  record: Manifest | None = None) -> ScorerContext:
    """The run's resources again with the encoder instruction-tuned on its training requests:
    the tuned model directory is cached by a hash of its inputs, and (for `ltr_tuned`) a
    feature repo of its own is built from it by the usual feature build, so the ranker's
    Feast embedding features come from the same encoder as its request-time ones.

    With `manifest`, both are read from it (nothing is tuned or built); otherwise what was
    made is written into `record`."""
    import shutil

    from encoders.text import TextEncoder, default_model_path
    from featurestore import store as fs
    from ranking.queries import history_label

    if manifest is not None:
        path = Path(manifest.require("encoder", "the instruction-tuned encoder"))
        repo = Path(manifest.require("tuned_repo", "the tuned encoder's feature repo")) if ltr \
            else None
    else:
        from encoders.tuning import tune_encoder
        from featurestore.build import FeatureBuildConfig, build_features

        examples = encoder_examples(cfg, prep, context)
        tuned = tune_encoder(cfg.encoder_tuning, examples,
                             cfg.encoder_path or default_model_path(),
                             cfg.data_dir / "encoders", progress=progress)
        del examples  # the training pairs: not needed by the feature build that follows
        path, repo = tuned.path, None
        if ltr:
            repo = (cfg.data_dir / "repos" / f"tuned-{tuned.key}").resolve()  # Feast: absolute
            repo.mkdir(parents=True, exist_ok=True)
            source = fs.FeatureRepo(cfg.feature_repo or fs.PACKAGE_REPO).path
            for name in ("feature_store.yaml", "feature_store.redis.yaml"):
                if (source / name).exists():
                    shutil.copy(source / name, repo / name)
            build_features(FeatureBuildConfig(dataset=cfg.dataset, repo=repo,
                                              data_dir=cfg.data_dir, encoder_path=tuned.path,
                                              instructions=cfg.instructions),
                           dataset=ds, progress=progress)
        if record is not None:
            record.encoder = str(Path(path).resolve())
            record.tuned_repo = str(repo) if repo is not None else record.tuned_repo
    encoder = TextEncoder(path, cache_dir=cfg.data_dir / "cache", show_progress=progress)
    out = ScorerContext(encoder=encoder, kg=context.kg, artifacts=context.artifacts,
                        query_titles=prep.catalogue.items["title"].to_numpy(),
                        query_label=history_label(prep.catalogue.schema))
    if ltr:
        out.ltr = ltr_resources(cfg.model_copy(update={"feature_repo": repo}), ds, prep, out,
                                progress, trained=None if manifest is None
                                else manifest.model_paths(cfg.data_dir))
    return out
