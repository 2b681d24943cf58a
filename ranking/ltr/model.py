"""The LambdaRank model: configuration, training with early stopping, and an artifact that
saves itself atomically and refuses to load against a store that no longer serves its
features."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from feature_repo.ranker import service_name
from ranking.candidates import CandidateConfig
from ranking.ltr.dask_fit import DaskConfig
from ranking.ltr.features import FEATURES, feature_names, store_columns
from recdata.errors import ConfigError, UnknownNameError

ENGINES = ("local", "dask")

MODEL_FILE = "model.txt"
META_FILE = "meta.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LTRConfig(BaseModel):
    """Everything that shapes the ranker; its hash (with the data's) versions the model."""

    model_config = ConfigDict(extra="forbid")
    candidates: CandidateConfig = Field(default_factory=CandidateConfig)
    negatives_per_request: int | None = Field(
        100, ge=1, description="random candidates kept as negatives per training request "
                               "(None: all); candidates are hard negatives by construction")
    max_train_requests: int | None = Field(
        30_000, ge=1, description="training requests sampled (seeded) when there are more: "
                                  "what the ranker learns saturates long before memory does")
    max_valid_requests: int | None = Field(
        10_000, ge=1, description="validation requests (all their candidates) for early "
                                  "stopping, shared over the tasks")
    logged_share: float = Field(
        0.2, ge=0, lt=1, description="share of the training weight carried by logged requests "
                                     "(`train_requests_file`) when there are any: a few hundred "
                                     "of them against tens of thousands of generated ones would "
                                     "otherwise teach nothing. 0.2: where the cross-validated "
                                     "NDCG@10 on ML-100k's hand-written dev set stops rising, "
                                     "at 1% of generated validation NDCG@10 "
                                     "(bench/logged_share.py)")
    n_estimators: int = Field(600, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, ge=2)
    min_child_samples: int = Field(50, ge=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    early_stopping_rounds: int = Field(40, ge=1)
    seed: int = 42
    engine: str = Field("local", description="where LightGBM trains: 'local' (this process) "
                                             "or 'dask' (lightgbm.dask on a Dask cluster)")
    dask: DaskConfig = Field(default_factory=DaskConfig)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, engine: str) -> str:
        if engine not in ENGINES:
            raise UnknownNameError("training engine", engine, list(ENGINES))
        return engine


@dataclass
class LTRModel:
    """A trained ranker: the booster, the ordered feature list it expects, its config and
    the hash of its training inputs."""

    booster: Any
    features: list[str]
    ablation: str
    config: dict[str, Any]
    key: str
    best_iteration: int
    valid_ndcg: float
    extra: dict[str, Any]
    # ranking.ltr.compiled's predictor once `compile()` found one: the same scores, cheaper
    compiled: Any = field(default=None, repr=False, compare=False)

    def predict(self, frame: pl.DataFrame, threads: int = 0) -> np.ndarray:
        """Scores; `threads=1` for one request's few hundred rows, where starting OpenMP
        threads costs more than it saves and concurrent requests would fight over them
        (0: LightGBM's default, all cores)."""
        return self.predict_array(frame.select(self.features).to_numpy(), threads)

    def predict_array(self, x: np.ndarray, threads: int = 0) -> np.ndarray:
        """Scores of rows already in the model's feature order (by the compiled forest
        after `compile()`: equal to the bit)."""
        if self.compiled is not None:  # threads 0 (LightGBM's "all"): one, as serving runs
            return self.compiled(x, threads)
        return self.booster.predict(x, num_iteration=self.best_iteration or None,
                                    num_threads=threads)

    def compile(self, cache_dir: Path) -> bool:
        """Score with the trees compiled to machine code from now on, when they compile
        here and pass their check (ranking.ltr.compiled); False: LightGBM's predictor
        stays, and a warning said why."""
        from ranking.ltr.compiled import compiled_predictor

        self.compiled = compiled_predictor(self.booster, self.best_iteration or None,
                                           cache_dir)
        return self.compiled is not None

    def contributions(self, x: np.ndarray, threads: int = 0) -> np.ndarray:
        """Per-row, per-feature contributions (SHAP values) of rows in the model's feature
        order; the last column is the bias."""
        return self.booster.predict(x, pred_contrib=True,
                                    num_iteration=self.best_iteration or None,
                                    num_threads=threads)

    def save(self, directory: Path) -> Path:
        """Write into a temporary folder beside `directory`, then rename it into place."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
        self.booster.save_model(str(tmp / MODEL_FILE))
        user_columns, item_columns = store_columns(self.features)
        meta = {**self.extra, "features": self.features, "ablation": self.ablation,
                "config": self.config, "key": self.key, "best_iteration": self.best_iteration,
                "valid_ndcg@10": self.valid_ndcg, "user_columns": user_columns,
                "item_columns": item_columns,
                "model_sha256": _sha256((tmp / MODEL_FILE).read_bytes())}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
        return directory

    @classmethod
    def load(cls, directory: Path) -> LTRModel:
        import lightgbm as lgb

        directory = Path(directory)
        if not (directory / META_FILE).exists():
            raise ConfigError(f"{directory} is not a ranker model folder (no {META_FILE}); "
                              "train one with `instructrank train`")
        retrain = "retrain it with `instructrank train`"
        try:
            meta = json.loads((directory / META_FILE).read_text())
            features = list(meta["features"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{directory / META_FILE} is damaged ({type(exc).__name__}: "
                              f"{exc}); {retrain}") from exc
        unknown = [f for f in features if f not in FEATURES]
        if unknown:
            raise ConfigError(f"model {directory.name} expects features this version does not "
                              f"compute: {', '.join(unknown)}; retrain it")
        model_file = directory / MODEL_FILE
        if not model_file.exists():
            raise ConfigError(f"{model_file} is missing; {retrain}")
        # a file cut short can still parse, as fewer trees: a different model, silently
        data = model_file.read_bytes()  # read once: hashed, then parsed
        expected = meta.get("model_sha256")
        if expected is not None and _sha256(data) != expected:
            raise ConfigError(f"{model_file} is not the file this model saved (its checksum "
                              f"differs: truncated or altered); {retrain}")
        try:
            booster = lgb.Booster(model_str=data.decode("utf-8", errors="replace"))
        except lgb.basic.LightGBMError as exc:
            raise ConfigError(f"{model_file} is not a readable LightGBM model ({exc}); "
                              f"{retrain}") from exc
        if booster.num_feature() != len(features):
            raise ConfigError(f"{model_file} holds a model of {booster.num_feature()} "
                              f"features where {META_FILE} lists {len(features)}; {retrain}")
        known = {"features", "ablation", "config", "key", "best_iteration", "valid_ndcg@10",
                 "model_sha256"}
        return cls(booster, meta["features"], meta["ablation"], meta["config"], meta["key"],
                   meta["best_iteration"], meta["valid_ndcg@10"],
                   {k: v for k, v in meta.items() if k not in known})

    @property
    def feature_service(self) -> str:
        """The Feast feature service this model was trained from and is served through."""
        name = self.extra.get("feature_service")
        if not name:
            raise ConfigError(f"model {self.key} names no feature service (trained by an "
                              "older version); retrain it with `instructrank train`")
        return str(name)

    def check_served(self, served_columns: set[str]) -> None:
        """Raise if the feature store no longer serves a column this model's features read."""
        user, item = store_columns(self.features)
        missing = [c for c in user + item if c not in served_columns]
        if missing:
            raise ConfigError(
                f"model {self.key} was trained on features the online store does not serve: "
                f"{', '.join(missing)}. Re-apply the feature repo (`instructrank features "
                f"build`) or retrain the model")


def training_key(cfg: LTRConfig, ablation: str, data_fingerprint: str) -> str:
    text = json.dumps({"config": cfg.model_dump(mode="json"), "ablation": ablation,
                       "features": feature_names(ablation),
                       "service": service_name(ablation)}, sort_keys=True)
    return hashlib.sha1((text + data_fingerprint).encode()).hexdigest()[:12]


def fit_lambdarank(cfg: LTRConfig, train: tuple[np.ndarray, np.ndarray, np.ndarray],
                   valid: tuple[np.ndarray, np.ndarray, np.ndarray],
                   features: list[str], weights: np.ndarray | None = None
                   ) -> tuple[Any, int, float]:
    """(X, y, group sizes) for train and validation -> (booster, best iteration, valid
    NDCG@10). Early stopping follows validation NDCG@10. `weights`: one per training row
    (logged requests weigh more than generated ones). With `engine="dask"` the same
    model trains through lightgbm.dask (ranking.ltr.dask_fit)."""
    if cfg.engine == "dask":
        if weights is not None:
            raise ConfigError("the dask engine does not take row weights yet: train with "
                              "logged requests on engine 'local'")
        from ranking.ltr.dask_fit import fit_lambdarank_dask

        return fit_lambdarank_dask(cfg, train, valid, features, cfg.dask)
    import lightgbm as lgb

    ranker = lgb.LGBMRanker(
        objective="lambdarank", n_estimators=cfg.n_estimators, learning_rate=cfg.learning_rate,
        num_leaves=cfg.num_leaves, min_child_samples=cfg.min_child_samples,
        colsample_bytree=cfg.colsample_bytree, random_state=cfg.seed, n_jobs=2,
        deterministic=True, force_row_wise=True, verbose=-1, lambdarank_truncation_level=20)
    x, y, g = train
    vx, vy, vg = valid
    ranker.fit(x, y, group=g, sample_weight=weights, eval_X=(vx,), eval_y=(vy,),
               eval_group=[vg], eval_at=[10], feature_name=features,
               callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)])
    best = int(ranker.best_iteration_ or cfg.n_estimators)
    score = float(next(iter(ranker.best_score_.values()))["ndcg@10"])
    return ranker.booster_, best, score
