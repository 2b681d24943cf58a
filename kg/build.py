"""`build_kg()`: data -> triples (+ an external KG) -> PyKEEN embeddings -> Feast views.

kg/ knows nothing of Feast; this stage writes the KG embedding sources into the feature repo,
applies and materializes them, so `get_online_features` serves user and item KG vectors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field

from featurestore import store as fs
from kg.external import ExternalKG, load_external
from kg.train import KGConfig, KGResult, train_kg
from kg.triples import build_triples
from recdata.atomic_io import write_parquet_atomic
from recdata.dataset import Dataset
from recdata.datasets import DatasetSource
from recdata.errors import ConfigError

KG_VIEWS = ("user_kg_embedding", "item_kg_embedding")


class KGBuildConfig(DatasetSource):
    external_triples: Path | None = None
    entity_map: Path | None = None
    repo: Path = fs.PACKAGE_REPO
    online: str = "sqlite"
    redis_url: str | None = None
    serve: bool = True
    kg: KGConfig = Field(default_factory=KGConfig)


@dataclass
class KGBuildReport:
    result: KGResult
    external: ExternalKG | None
    served: bool


def serve_embeddings(result: KGResult, repo: fs.FeatureRepo, online: str = "sqlite",
                     redis_url: str | None = None) -> None:
    """Write the KG views' sources, apply, and materialize just those views."""
    from feature_repo.jobs.kg import kg_embedding_sources

    emb = result.embeddings
    views = fs.feature_views()
    for name, frame in kg_embedding_sources(emb.entities, emb.real_vectors()).items():
        write_parquet_atomic(frame, repo.source_path(views[name]))
    store = repo.store(online, redis_url)
    fs.apply(repo, store)
    meta = repo.sources / "meta.json"
    end = (datetime.fromisoformat(json.loads(meta.read_text())["as_of"]) if meta.exists()
           else datetime.now(tz=UTC))
    fs.materialize(repo, store, end=end, views=list(KG_VIEWS))


def build_kg(cfg: KGBuildConfig, *, dataset: Dataset | None = None,
             progress: bool = True) -> KGBuildReport:
    ds = dataset or cfg.load_dataset()
    if (cfg.external_triples is None) != (cfg.entity_map is None):
        raise ConfigError("an external KG needs both --external-triples and --entity-map")
    external = None
    if cfg.external_triples is not None and cfg.entity_map is not None:
        external = load_external(cfg.external_triples, cfg.entity_map, ds.items["item_id"],
                                 ds.ids)
    triples = build_triples(ds, external.triples if external else None,
                            max_edges=cfg.kg.max_triples, seed=cfg.kg.seed)
    result = train_kg(triples, cfg.kg, cfg.data_dir / "kg", progress=progress)
    if cfg.serve:
        serve_embeddings(result, fs.FeatureRepo(cfg.repo), cfg.online, cfg.redis_url)
    return KGBuildReport(result, external, cfg.serve)
