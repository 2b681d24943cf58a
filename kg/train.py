"""`train_kg()`: PyKEEN on CPU with early stopping on held-out triples, cached by a hash of
the triples and the config, returning a result that saves and loads itself.

PyKEEN writes under PYSTOW_HOME (default ~/.data); it is pointed at the project's data
directory before PyKEEN is imported. No PyKEEN dataset that downloads is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from kg.embeddings import KGEmbeddings
from kg.known_filter import sorted_lookup_filter
from kg.triples import relation_counts
from recdata.atomic_io import write_text_atomic
from recdata.errors import ConfigError, UnknownNameError
from recdata.stages import stage

PYKEEN_MODELS = {"transe": "TransE", "distmult": "DistMult", "complex": "ComplEx",
                 "rotate": "RotatE"}


class KGConfig(BaseModel):
    """How the KG model is trained. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")
    model: str = "transe"
    dim: int = Field(64, ge=2)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(4096, ge=1)
    lr: float = Field(0.01, gt=0)
    eval_every: int = Field(10, ge=1)
    patience: int = Field(
        1, ge=0, description="evaluations without improvement before training stops; the "
                             "best epoch's weights are kept, so every epoch after it is "
                             "spent only to confirm it (ML-100k: best at 20 of 60, the "
                             "same weights with 1 as with 2, 10 epochs and one evaluation "
                             "sooner)")
    validation_share: float = Field(0.02, gt=0, lt=0.5)
    test_share: float = Field(0.03, gt=0, lt=0.5)
    max_eval_triples: int = Field(
        5_000, ge=10, description="held-out triples for early stopping and for the final "
                                  "MRR, each: filtered ranking scores every held-out triple "
                                  "against every entity, which a share of a large graph "
                                  "would turn into the longest part of training")
    test_eval_triples: int = Field(
        1_000, ge=10, description="held-out test triples the final MRR and hits@10 are "
                                  "measured on (a seeded sample of the test split; the "
                                  "split itself, hence training, does not depend on it): "
                                  "filtered ranking costs ~2.5 ms a triple on 2 cores, and "
                                  "1,000 give the MRR to about +-0.005")
    max_eval_scores: float = Field(
        2e7, gt=0, description="and at most this many (held-out triple, entity) scores "
                               "each: filtered ranking scores every held-out triple against "
                               "every entity, 2*10^5 of them at 10^7 interactions")
    max_triples: int | None = Field(
        250_000, ge=10, description="collaborative edges (interacted, liked) are sampled, "
                                    "seeded, down to this many triples in all: 500,000 took "
                                    "6 min to train on two cores, and a 10^7-interaction "
                                    "log holds 1.5*10^7. Attribute and external triples are "
                                    "always kept, and collaborative edges keep at least half "
                                    "of the cap however many those are. None: no cap")
    seed: int = 42

    def pykeen_name(self) -> str:
        if self.model not in PYKEEN_MODELS:
            raise UnknownNameError("KG model", self.model, list(PYKEEN_MODELS))
        return PYKEEN_MODELS[self.model]


@dataclass
class KGResult:
    """Embeddings plus what produced them; `save()` writes the directory, `load()` reads it."""

    embeddings: KGEmbeddings
    config: dict
    key: str
    triples: int
    entities: int
    relations: dict[str, int]
    epochs: int
    train_s: float
    mrr: float
    hits_at_10: float
    cached: bool = False
    embeddings_sha256: str | None = None  # of embeddings.npz as saved (None: older saves)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.embeddings.save(directory / EMBEDDINGS_FILE)
        self.embeddings_sha256 = _sha256(directory / EMBEDDINGS_FILE)
        meta = {k: v for k, v in asdict(self).items() if k not in {"embeddings", "cached"}}
        write_text_atomic(directory / RESULT_FILE, json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path) -> KGResult:
        """The saved result; a ConfigError naming the file when it is missing, unreadable or
        not the file that was saved (a checksum), never another model's vectors."""
        again = "rerun `instructrank train`, which trains it again"
        try:
            meta = json.loads((directory / RESULT_FILE).read_text())
            fields = {f.name for f in dataclass_fields(cls)} - {"embeddings", "cached"}
            missing = {"key", "config"} - set(meta)
            if not isinstance(meta, dict) or missing or set(meta) - fields:
                raise ValueError(f"fields {sorted(missing or set(meta) - fields)}")
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{directory / RESULT_FILE} is missing or damaged "
                              f"({type(exc).__name__}: {exc}); {again}") from exc
        path = directory / EMBEDDINGS_FILE
        expected = meta.get("embeddings_sha256")
        try:
            if expected is not None and _sha256(path) != expected:
                raise ValueError("its checksum differs from the one saved: truncated or "
                                 "altered")
            embeddings = KGEmbeddings.load(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise ConfigError(f"{path} is missing or damaged ({type(exc).__name__}: {exc}); "
                              f"{again}") from exc
        return cls(embeddings, **meta, cached=True)


RESULT_FILE, EMBEDDINGS_FILE = "result.json", "embeddings.npz"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


COLLABORATIVE = ("interacted", "liked")


def cap_triples(triples: pl.DataFrame, cfg: KGConfig) -> pl.DataFrame:
    """`triples` with collaborative edges sampled (seeded, uniformly) so that at most
    `cfg.max_triples` remain; every other triple is kept, and the edges keep at least half
    of the cap when the other triples crowd it (10^5 items have 3.4*10^5 of them)."""
    if cfg.max_triples is None or triples.height <= cfg.max_triples:
        return triples
    collab = pl.col("relation").is_in(list(COLLABORATIVE))
    kept = triples.filter(~collab)
    edges = triples.filter(collab)
    room = max(cfg.max_triples // 2, cfg.max_triples - kept.height)
    return pl.concat([kept, edges.sample(n=min(room, edges.height), seed=cfg.seed)]).sort(
        "relation", "head", "tail")


def cache_key(triples: pl.DataFrame, cfg: KGConfig) -> str:
    h = hashlib.sha1(str(triples.sort("head", "relation", "tail").hash_rows(seed=0).sum())
                     .encode())
    h.update(str(triples.height).encode())
    h.update(cfg.model_dump_json().encode())
    return h.hexdigest()[:12]


def _export(model: object, factory: object, name: str) -> KGEmbeddings:
    import torch

    with torch.no_grad():
        ent = model.entity_representations[0](indices=None).cpu().numpy()  # type: ignore[attr-defined]
        rel = model.relation_representations[0](indices=None).cpu().numpy()  # type: ignore[attr-defined]
    ent_labels = np.array([factory.entity_id_to_label[i] for i in range(len(ent))])  # type: ignore[attr-defined]
    rel_labels = np.array([factory.relation_id_to_label[i] for i in range(len(rel))])  # type: ignore[attr-defined]
    return KGEmbeddings(name, ent_labels, ent, rel_labels, rel)


EVAL_BLOCK_BYTES = 128 * 2**20


def _sample(factory: Any, n: int, seed: int) -> Any:
    """At most `n` of `factory`'s triples, seeded; the factory itself when it has no more."""
    if factory.num_triples <= n:
        return factory
    import torch

    keep = np.sort(np.random.default_rng(seed).choice(factory.num_triples, n, replace=False))
    return factory.clone_and_exchange_triples(factory.mapped_triples[torch.from_numpy(keep)])


def train_kg(triples: pl.DataFrame, cfg: KGConfig, cache_dir: Path, *,
             progress: bool = True) -> KGResult:
    """Train (or load from cache) a KG embedding model on (head, relation, tail) triples."""
    name = cfg.pykeen_name()
    triples = cap_triples(triples, cfg)
    if triples.height < 10:
        raise ConfigError(f"the KG has only {triples.height} triples; nothing to learn from")
    key = cache_key(triples, cfg)
    directory = cache_dir / key
    if (directory / RESULT_FILE).exists():
        try:
            return KGResult.load(directory)
        except ConfigError as exc:  # a damaged cache is trained again, not trusted
            warnings.warn(f"{exc}: training it again", stacklevel=2)
    os.environ.setdefault("PYSTOW_HOME", str(cache_dir.parent / "pystow"))
    import torch
    from pykeen.pipeline import pipeline
    from pykeen.triples import TriplesFactory

    for noisy in ("pykeen", "torch_max_mem"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.manual_seed(cfg.seed)
    labeled = triples.select("head", "relation", "tail").to_numpy().astype(str)
    factory = TriplesFactory.from_labeled_triples(labeled)
    n = factory.num_triples
    held = max(100, min(cfg.max_eval_triples, int(cfg.max_eval_scores / factory.num_entities)))
    val_share = min(cfg.validation_share, held / n)
    test_share = min(cfg.test_share, held / n)
    training, validation, testing = factory.split(
        [1 - val_share - test_share, val_share, test_share], random_state=cfg.seed)
    # ranking a held-out triple scores it against every entity at once: batch x entities x
    # dim floats (512 x 30,000 x 64 = 3.9 GB at 10^4 items and 2*10^4 users); the batch is
    # sized so that block stays near EVAL_BLOCK_BYTES. Scores do not depend on the batch.
    eval_batch = int(max(1, min(512, EVAL_BLOCK_BYTES // (factory.num_entities * cfg.dim * 4))))
    # the final metrics on a sample of the test split, still filtered by every held-out
    # triple (a known fact is not ranked as a miss because it was left out of the sample)
    measured = _sample(testing, cfg.test_eval_triples, cfg.seed)
    started = time.perf_counter()
    with (warnings.catch_warnings(), stage("kg training"), _torch_threads(training_threads()),
          sorted_lookup_filter()):
        warnings.simplefilter("ignore")
        result = pipeline(
            training=training, validation=validation, testing=measured, model=name,
            model_kwargs={"embedding_dim": cfg.dim}, optimizer="Adam",
            optimizer_kwargs={"lr": cfg.lr},
            training_kwargs={"num_epochs": cfg.epochs, "batch_size": cfg.batch_size,
                             "use_tqdm": progress, "use_tqdm_batch": False},
            stopper="early",
            stopper_kwargs={"frequency": cfg.eval_every, "patience": cfg.patience,
                            "metric": "mrr", "relative_delta": 0.002,
                            "evaluation_batch_size": eval_batch},
            evaluation_kwargs={"batch_size": eval_batch, "use_tqdm": False,
                               "additional_filter_triples": [testing.mapped_triples]},
            random_seed=cfg.seed, device="cpu",
        )
    seconds = time.perf_counter() - started
    metrics = result.metric_results
    out = KGResult(
        embeddings=_export(result.model, training, cfg.model),
        config=cfg.model_dump(), key=key, triples=triples.height,
        entities=factory.num_entities, relations=relation_counts(triples),
        epochs=len(result.losses), train_s=round(seconds, 1),
        mrr=float(metrics.get_metric("both.realistic.inverse_harmonic_mean_rank")),
        hits_at_10=float(metrics.get_metric("both.realistic.hits_at_10")),
    )
    out.save(directory)
    return out


THREADS_ENV = "INSTRUCTRANK_KG_THREADS"


def training_threads() -> int | None:
    """PyTorch's threads while a KG trains, from INSTRUCTRANK_KG_THREADS (None: its default,
    one per core). PyKEEN's epochs over small batches keep about one core busy whatever the
    count (ML-100k: 7.6 s for 10 epochs on one thread, 7.1 s on two for 11.7 s of CPU), so
    two trainings side by side take one each (`make run`: the serving KG beside the
    ranker's hold-out KG); the weights came out the same to the bit on one thread and two."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{THREADS_ENV}={raw!r}: a thread count (a positive whole number) "
                          "was expected")
    return int(raw)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch on `threads` threads inside the block (None: as it is), restored after."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
