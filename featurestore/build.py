"""`build_features()`: raw data -> polars jobs -> parquet sources -> `feast apply` ->
materialize. `refresh_features()`: append new interactions, rerun the jobs, and
materialize incrementally, so exactly the entities the new interactions touch change online.

The raw log and catalogue the sources were built from are kept beside them
(data/sources/interactions.parquet, items.parquet): the offline store's ground truth, and
what a refresh appends to. Data flows one way: raw -> sources -> online store.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from pydantic import Field
from tqdm.auto import tqdm

from featurestore import store as fs
from recdata.atomic_io import atomic_path, write_parquet_atomic, write_text_atomic
from recdata.dataset import INTERACTION_SCHEMA, Dataset, item_text
from recdata.datasets import DatasetSource
from recdata.errors import FeatureStoreError
from recdata.ids import IdMap
from recdata.instructions import GENERATOR_VERSION, InstructionConfig, generate_requests
from recdata.stages import stage


class FeatureBuildConfig(DatasetSource):
    repo: Path = fs.PACKAGE_REPO
    online: str = "sqlite"
    redis_url: str | None = None
    encoder_path: Path | None = None
    instructions: InstructionConfig = Field(default_factory=InstructionConfig)
    embeddings: bool = True  # off for scale benchmarks: the 384-d views dominate the cost


@dataclass
class FeatureBuildResult:
    repo: str
    online: str
    rows: dict[str, int]
    as_of: str
    fingerprint: str
    seconds: dict[str, float] = field(default_factory=dict)
    reused_sources: bool = False

    def save(self) -> Path:
        target = Path(self.repo) / "data" / f"build.{self.online}.json"
        write_text_atomic(target, json.dumps(asdict(self), indent=2))
        return target


def _fingerprint(ds: Dataset, cfg: FeatureBuildConfig, encoder_id: str) -> str:
    h = hashlib.sha1()
    h.update(ds.fingerprint().encode())
    h.update(f"{cfg.instructions.model_dump_json()}:{GENERATOR_VERSION}".encode())
    h.update(f"{encoder_id}:{cfg.embeddings}".encode())
    for job in sorted((fs.PACKAGE_REPO / "jobs").glob("*.py")):
        h.update(job.read_bytes())
    return h.hexdigest()[:12]


def genre_vocabulary(items: pl.DataFrame) -> list[str]:
    return sorted(set(items["genres"].explode().drop_nulls().to_list()))


# Interactions per partition of the feature jobs: the user views are computed a partition of
# users at a time and the item views a partition of items at a time, each written as row
# groups of one parquet file, so the jobs' memory follows a partition, not the log.
PART_ROWS = 2_000_000


@contextmanager
def writer_lock(repo: fs.FeatureRepo) -> Iterator[None]:
    """Hold the repo's writer lock for a build or a refresh: two writers interleaving their
    source files, registry and materializations would leave a repo neither of them built, so
    a second one is refused at once with a message naming the holder. An advisory lock
    (flock) on `<repo>/data/.writer.lock`, released by the kernel if its process dies."""
    import fcntl

    path = repo.path / "data" / ".writer.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FeatureStoreError(
                f"the feature repo {repo.path} is being written by {holder}: one `features "
                f"build` or `features refresh` at a time; run this one when it has finished"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {datetime.now().isoformat(timespec='seconds')}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _partitions(interactions: pl.DataFrame, key: str, n: int) -> Iterator[pl.DataFrame]:
    if n == 1:
        yield interactions
        return
    bucket = pl.col(key).hash(seed=0) % n
    for p in range(n):
        yield interactions.filter(bucket == p)


def source_parts(ds: Dataset, requests: pl.DataFrame | None, encoder: object | None,
                 ) -> Iterator[tuple[str, pl.DataFrame]]:
    """(view, frame) pairs whose concatenation per view is that view's source: pure
    computation apart from the encoder's cache, one partition at a time."""
    from feature_repo.jobs import items as item_jobs
    from feature_repo.jobs import users as user_jobs

    genres = genre_vocabulary(ds.items)
    packed = fs.packed_views()["item_serving"][2]
    n = max(1, -(-ds.interactions.height // PART_ROWS))
    ids = vectors = None
    if encoder is not None:
        ids = ds.items["item_id"].to_numpy()
        vectors = encoder.encode(item_text(ds.items, ds.text_columns).to_list(), desc="items")
        yield "item_text_embedding", item_jobs.item_text_embedding(ids, vectors)
    for part in _partitions(ds.interactions, "user_id", n):
        yield "user_history", user_jobs.user_history(part, ds.items, genres)
        yield "user_seen", user_jobs.user_seen(part)
        if vectors is not None:
            yield "user_profile_embedding", user_jobs.user_profile_embedding(part, ids, vectors)
    for part in _partitions(ds.interactions, "item_id", n):
        stats = item_jobs.item_stats(part)
        yield "item_stats", stats
        yield "item_serving", item_jobs.item_serving(stats, packed)
    yield "item_content", item_jobs.item_content(ds.items)
    if encoder is not None and requests is not None:
        texts = requests["instruction"].to_list()
        yield "instruction_embedding", item_jobs.instruction_embedding(
            requests, encoder.encode(texts, desc="instructions"))


def compute_sources(ds: Dataset, requests: pl.DataFrame | None, encoder: object | None,
                    progress: bool = True) -> dict[str, pl.DataFrame]:
    """Every view's source frame, whole (for data known to be small, and tests)."""
    out: dict[str, list[pl.DataFrame]] = {}
    for view, frame in source_parts(ds, requests, encoder):
        out.setdefault(view, []).append(frame)
    return {view: pl.concat(frames) for view, frames in out.items()}


TIME_VARYING = ("user_history", "item_stats")  # their latest row time is the data's "now"


def _write_sources(repo: fs.FeatureRepo, parts: Iterator[tuple[str, pl.DataFrame]],
                   ) -> tuple[dict[str, int], datetime]:
    """Stream `parts` into one parquet file per view (row groups, renamed into place when
    complete); returns the rows per view and the as-of time."""
    views = fs.feature_views()
    writers: dict[str, tuple[pq.ParquetWriter, Path, Path]] = {}
    rows: dict[str, int] = {}
    latest: list[datetime] = []
    try:
        for view, frame in parts:
            table = frame.to_arrow()
            if view not in writers:
                tmp, target = atomic_path(repo.source_path(views[view]))
                writers[view] = (pq.ParquetWriter(tmp, table.schema), tmp, target)
            writers[view][0].write_table(table)
            rows[view] = rows.get(view, 0) + frame.height
            if view in TIME_VARYING and frame.height:
                latest.append(frame["event_timestamp"].max())  # type: ignore[arg-type]
        for writer, tmp, target in writers.values():
            writer.close()
            os.replace(tmp, target)
    finally:
        for writer, tmp, _ in writers.values():
            if tmp.exists():
                writer.close()
                tmp.unlink()
    return rows, max(latest)


def _write_raw(repo: fs.FeatureRepo, ds: Dataset, meta: dict) -> None:
    (ds.ids or IdMap()).save(repo.ids)
    write_parquet_atomic(ds.interactions, repo.sources / "interactions.parquet")
    write_parquet_atomic(ds.items, repo.sources / "items.parquet")
    write_text_atomic(repo.sources / "meta.json", json.dumps(meta, indent=2, default=str))


def _encoder(cfg: FeatureBuildConfig, progress: bool) -> object | None:
    if not cfg.embeddings:
        return None
    from encoders.text import TextEncoder

    return TextEncoder(cfg.encoder_path, cache_dir=cfg.data_dir / "cache", show_progress=progress)


def build_features(cfg: FeatureBuildConfig, *, dataset: Dataset | None = None,
                   progress: bool = True) -> FeatureBuildResult:
    """Build every source, apply the definitions and backfill the online store (one writer
    per repo at a time: see `writer_lock`)."""
    with writer_lock(fs.FeatureRepo(cfg.repo)):
        return _build_features(cfg, dataset, progress)


def _build_features(cfg: FeatureBuildConfig, dataset: Dataset | None,
                    progress: bool) -> FeatureBuildResult:

    seconds: dict[str, float] = {}
    repo = fs.FeatureRepo(cfg.repo)
    steps = tqdm(total=4, desc="features", disable=not progress)
    t = time.perf_counter()
    ds = dataset or cfg.load_dataset()
    encoder = _encoder(cfg, progress)
    fingerprint = _fingerprint(ds, cfg, getattr(encoder, "fingerprint", "none"))
    meta_file = repo.sources / "meta.json"
    reuse = meta_file.exists() and json.loads(meta_file.read_text()).get(
        "fingerprint") == fingerprint
    if reuse:
        meta = json.loads(meta_file.read_text())
        rows = meta["rows"]
    else:
        requests = generate_requests(ds, cfg.instructions) if encoder is not None else None
        with stage("feature jobs"):
            rows, as_of = _write_sources(repo, source_parts(ds, requests, encoder))
        meta = {"fingerprint": fingerprint, "dataset": ds.name,
                "data_fingerprint": ds.fingerprint(), "rows": rows,
                "genres": genre_vocabulary(ds.items), "as_of": as_of.isoformat()}
        _write_raw(repo, ds, meta)
    seconds["jobs"] = time.perf_counter() - t
    steps.update()
    store = repo.store(cfg.online, cfg.redis_url)
    t = time.perf_counter()
    fs.apply(repo, store)
    seconds["apply"] = time.perf_counter() - t
    steps.update()
    t = time.perf_counter()
    as_of = datetime.fromisoformat(meta["as_of"])
    with stage(f"materialize ({cfg.online})"):
        fs.materialize(repo, store, end=as_of)
    seconds["materialize"] = time.perf_counter() - t
    steps.update(2)
    steps.close()
    return FeatureBuildResult(str(repo.path), cfg.online, rows, as_of.isoformat(), fingerprint,
                              {k: round(v, 2) for k, v in seconds.items()}, reuse)


def _encoded(ids: IdMap, new: pl.DataFrame) -> tuple[IdMap, pl.DataFrame]:
    """New interactions on internal ids: users the map has not seen are numbered after
    the last (a store built on string ids); an id the store cannot hold is an error naming
    it, never a dropped row."""
    for col in ("user_id", "item_id"):
        if col not in new.columns:
            raise FeatureStoreError(f"new interactions have no {col!r} column")
        nulls = new.filter(pl.col(col).is_null() | (pl.col(col).cast(pl.String)
                                                    .str.strip_chars() == ""))
        if nulls.height:
            raise FeatureStoreError(f"{nulls.height} new interaction(s) have no {col}")
    ids, _ = ids.with_users(new["user_id"].cast(pl.String))
    for col, kind in (("user_id", "user"), ("item_id", "item")):
        bad = new.filter(~ids.known(col, kind))  # type: ignore[arg-type]
        if bad.height:
            shown = bad[col].cast(pl.String).unique(maintain_order=True).to_list()[:10]
            what = ("unknown items" if kind == "item" and ids.items is not None else
                    f"{col}s that are not integers like the ids this store was built with")
            raise FeatureStoreError(f"new interactions name {what}: {shown}")
        new = ids.encode(new, col, kind)  # type: ignore[arg-type]
    return ids, new


def refresh_features(repo_path: Path, new_interactions: pl.DataFrame, *, online: str = "sqlite",
                     redis_url: str | None = None, data_dir: Path = Path("data"),
                     encoder_path: Path | None = None, progress: bool = False,
                     ) -> FeatureBuildResult:
    """Append interactions that happened after the last build and materialize incrementally.

    New interactions must be later than the data already materialized: older ones would fall
    before the incremental window and never reach the online store, so they are refused
    (rebuild with `instructrank features build` instead)."""
    with writer_lock(fs.FeatureRepo(repo_path)):
        return _refresh_features(repo_path, new_interactions, online=online,
                                 redis_url=redis_url, data_dir=data_dir,
                                 encoder_path=encoder_path, progress=progress)


def _refresh_features(repo_path: Path, new_interactions: pl.DataFrame, *, online: str,
                      redis_url: str | None, data_dir: Path, encoder_path: Path | None,
                      progress: bool) -> FeatureBuildResult:
    repo = fs.FeatureRepo(repo_path)
    meta = json.loads((repo.sources / "meta.json").read_text())
    as_of = datetime.fromisoformat(meta["as_of"])
    if "rating" not in new_interactions.columns:
        new_interactions = new_interactions.with_columns(pl.lit(None, pl.Float64).alias("rating"))
    ids, new = _encoded(IdMap.load(repo.ids), new_interactions)
    new = new.select(pl.col(c).cast(t) for c, t in INTERACTION_SCHEMA.items())
    log = pl.read_parquet(repo.sources / "interactions.parquet")
    # a refresh run again (a retried job, the same file twice) changes nothing: what the
    # log already holds is skipped, and with nothing left nothing is rewritten
    key = ["user_id", "item_id", "timestamp"]
    new = new.unique(key, keep="first", maintain_order=True).join(
        log.select(key), on=key, how="anti", nulls_equal=True)
    if new.is_empty():
        return FeatureBuildResult(str(repo.path), online, meta["rows"], as_of.isoformat(),
                                  meta.get("fingerprint", "refreshed"), {}, reused_sources=True)
    too_old = new.filter(pl.col("timestamp") <= int(as_of.timestamp()))
    if too_old.height:
        raise FeatureStoreError(
            f"{too_old.height} new interaction(s) are not after the materialized time "
            f"{as_of.isoformat()}; rebuild with `instructrank features build`")
    items = pl.read_parquet(repo.sources / "items.parquet")
    unknown = new.join(items.select("item_id"), on="item_id", how="anti")
    if unknown.height:
        raise FeatureStoreError(f"new interactions name unknown items: "
                                f"{unknown['item_id'].unique().to_list()[:10]}")
    ds = Dataset(meta["dataset"], pl.concat([log, new]), items,
                 ids=None if ids.empty else ids)
    encoder = None
    if "item_text_embedding" in meta["rows"]:
        from encoders.text import TextEncoder

        encoder = TextEncoder(encoder_path, cache_dir=data_dir / "cache", show_progress=progress)
    t = time.perf_counter()
    parts = source_parts(ds, None, encoder)
    if "instruction_embedding" in meta["rows"]:  # logged requests are unchanged
        old = pl.read_parquet(repo.source_path(fs.feature_views()["instruction_embedding"]))
        parts = itertools.chain(parts, [("instruction_embedding", old)])
    rows, new_as_of = _write_sources(repo, parts)
    meta.update(rows=rows, as_of=new_as_of.isoformat(), fingerprint="refreshed",
                data_fingerprint=ds.fingerprint())
    _write_raw(repo, ds, meta)
    store = repo.store(online, redis_url)
    jobs_s = time.perf_counter() - t
    t = time.perf_counter()
    fs.materialize_incremental(repo, store, end=new_as_of)
    return FeatureBuildResult(str(repo.path), online, rows, new_as_of.isoformat(), "refreshed",
                              {"jobs": round(jobs_s, 2),
                               "materialize": round(time.perf_counter() - t, 2)})

