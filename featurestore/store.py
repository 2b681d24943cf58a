"""Everything that talks to Feast: open a store by profile, check sources against views,
apply, materialize, and read features back offline (point-in-time) and online.

Feature columns always come back with full names (`view__feature`): several views share
feature names (`mean_rating`), and a silent collision would feed one into the other.
Types are restored from the view schemas, because nulls change dtypes on the way through
DuckDB and pandas (an Int64 with a null comes back as float64).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import yaml

from recdata.errors import FeatureStoreError, StoreUnavailableError, UnknownNameError
from recdata.frames import float_block, python_floats

PACKAGE_REPO = Path(__file__).resolve().parents[1] / "feature_repo"
ONLINE_STORES = ("sqlite", "redis")
BEGINNING = datetime(1900, 1, 1, tzinfo=UTC)  # logs reach back before 1970 (Last.fm: 1956)
ENTITY_TYPES = {"INT64": pl.Int64(), "STRING": pl.String()}


def definitions() -> Any:
    """The declarations module (imported lazily: it imports Feast)."""
    return importlib.import_module("feature_repo.definitions")


def feast_objects() -> list[Any]:
    from feast import Entity, FeatureService, FeatureView

    mod = definitions()
    kinds = (Entity, FeatureView, FeatureService)
    return [v for v in vars(mod).values() if isinstance(v, kinds)]


def feature_views() -> dict[str, Any]:
    from feast import FeatureView

    return {v.name: v for v in vars(definitions()).values() if isinstance(v, FeatureView)}


def polars_dtype(feast_type: Any) -> pl.DataType:
    """The polars type a Feast field type comes back as."""
    from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String

    scalar = {Int64: pl.Int64(), Int32: pl.Int32(), Float32: pl.Float32(),
              Float64: pl.Float64(), String: pl.String(), Bool: pl.Boolean()}
    if isinstance(feast_type, Array):
        return pl.List(polars_dtype(feast_type.base_type))
    for k, v in scalar.items():
        if feast_type == k:
            return v
    raise FeatureStoreError(f"no polars type for Feast type {feast_type}")


@dataclass(frozen=True)
class FeatureRepo:
    """A Feast repository folder: feature_store.yaml(s) and data/ (sources, registry,
    SQLite online store). The declarations always come from `feature_repo.definitions`."""

    path: Path

    def __post_init__(self) -> None:
        # absolute: offline calls run from inside the repo (offline_calls), where a relative
        # path would name another folder and Feast would find no views
        object.__setattr__(self, "path", Path(self.path).resolve())

    @property
    def sources(self) -> Path:
        return self.path / "data" / "sources"

    @property
    def ids(self) -> Path:
        """The original keys of string ids (recdata.ids): what serving speaks to callers."""
        return self.path / "data" / "ids"

    def source_path(self, view: Any) -> Path:
        return self.path / view.batch_source.path

    def store(self, online: str = "sqlite", redis_url: str | None = None, *,
              sqlite_path: str | None = None) -> Any:
        """A FeatureStore for this repo with the named online store profile (`sqlite_path`:
        another SQLite file than the profile's, relative to the repo)."""
        from feast import FeatureStore, RepoConfig

        if online not in ONLINE_STORES:
            raise UnknownNameError("online store", online, list(ONLINE_STORES))
        name = "feature_store.yaml" if online == "sqlite" else f"feature_store.{online}.yaml"
        yaml_file = self.path / name
        if not yaml_file.exists():
            yaml_file = PACKAGE_REPO / name
        config = yaml.safe_load(yaml_file.read_text())
        if online == "redis" and redis_url:
            config["online_store"]["connection_string"] = redis_url
        if online == "sqlite" and sqlite_path:
            config["online_store"]["path"] = sqlite_path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return FeatureStore(config=RepoConfig(**config, repo_path=self.path),
                                repo_path=str(self.path))


def check_sources(repo: FeatureRepo, views: dict[str, Any] | None = None) -> None:
    """Every view's parquet source exists and has each declared column with its type; the
    error names the view, the column and both types, before Feast gives a vaguer one."""
    from feast import Entity

    entities = {v.name: v for v in vars(definitions()).values() if isinstance(v, Entity)}
    problems = []
    for name, view in (views or feature_views()).items():
        path = repo.source_path(view)
        if not path.exists():
            problems.append(f"feature view {name!r}: source {path} does not exist "
                            "(run `instructrank features build`)")
            continue
        schema = pl.from_arrow(pq.read_schema(path).empty_table()).schema
        wanted = {f.name: polars_dtype(f.dtype) for f in view.features}
        wanted |= {entities[e].join_key: ENTITY_TYPES[entities[e].value_type.name]
                   for e in view.entities}
        wanted[view.batch_source.timestamp_field] = pl.Datetime("us", "UTC")
        for col, dtype in wanted.items():
            if col not in schema:
                problems.append(f"feature view {name!r}: column {col!r} is missing from {path}")
            elif schema[col] != dtype:
                problems.append(f"feature view {name!r}: column {col!r} is {schema[col]} in "
                                f"{path}, the view declares {dtype}")
    if problems:
        raise FeatureStoreError("sources do not match their views:\n  " + "\n  ".join(problems))


@contextlib.contextmanager
def offline_calls(repo: FeatureRepo) -> Iterator[None]:
    """Run offline-store calls from inside the repo folder. Feast 0.67's DuckDB store reads a
    relative FileSource path against the working directory, not `repo_path` (the file source
    itself resolves it right), which is why `cd feature_repo && feast ...` works and a call
    from elsewhere finds no files. Process-wide, so only for batch jobs, never the service."""
    previous = Path.cwd()
    os.chdir(repo.path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        os.chdir(previous)


def built_views(repo: FeatureRepo) -> dict[str, Any]:
    """The views whose sources exist (a build without embeddings has no vector views)."""
    return {n: v for n, v in feature_views().items() if repo.source_path(v).exists()}


def apply(repo: FeatureRepo, store: Any) -> list[str]:
    """`feast apply` for the built views and the services whose views are all built, after
    checking each source against its view. Returns the applied view names."""
    from feast import FeatureService, FeatureView

    views = built_views(repo)
    check_sources(repo, views)
    objects = [o for o in feast_objects()
               if (not isinstance(o, FeatureView) or o.name in views)
               and (not isinstance(o, FeatureService)
                    or all(p.name in views for p in o.feature_view_projections))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        store.apply(objects)
    return list(views)


def _online_views(repo: FeatureRepo) -> list[str]:
    return [n for n, v in built_views(repo).items() if v.online]


def materialize(repo: FeatureRepo, store: Any, end: datetime,
                start: datetime | None = None, views: list[str] | None = None) -> None:
    """Backfill [start, end] (default: from the beginning) for `views` (default: every built
    online view). The first `materialize_incremental` would start at now - ttl and skip
    older rows, hence this."""
    check_sources(repo, built_views(repo))
    with swapped_in(repo, store) as target, offline_calls(repo):
        target.materialize(start_date=start or BEGINNING, end_date=end,
                           feature_views=views or _online_views(repo))


def materialize_incremental(repo: FeatureRepo, store: Any, end: datetime) -> None:
    """From where each view's last materialization ended up to `end`."""
    check_sources(repo, built_views(repo))
    with swapped_in(repo, store) as target, offline_calls(repo):
        target.materialize_incremental(end_date=end, feature_views=_online_views(repo))


@contextlib.contextmanager
def swapped_in(repo: FeatureRepo, store: Any) -> Iterator[Any]:
    """A store to materialize into that readers see only whole. Feast writes view by view,
    so a service reading a SQLite file while it is materialized could take one view of a
    user from before and another from after. Instead the file is copied (SQLite's backup
    API), the copy materialized, and renamed over the live file in one step; readers
    (OnlineReader) move to the new file on their next read. A failure leaves the live file
    as it was. Redis, written in place, has no such step: a request during its
    materialization can mix views of the two states (README, "Operating the service")."""
    import shutil
    import sqlite3

    config = store.config.online_store
    live = Path(store.config.online_store.path) if config.type == "sqlite" else None
    if live is not None and not live.is_absolute():
        live = Path(store.config.repo_path or repo.path) / live
    if live is None or not live.exists():  # nothing is being served from it yet
        yield store
        return
    nxt = live.with_name(live.name + ".next")
    nxt.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(live)) as src, \
            contextlib.closing(sqlite3.connect(nxt)) as dst:
        src.backup(dst)
    # Feast records each view's materialized interval in the registry as it goes: if the
    # copy is dropped, the registry must not say its rows were written (the next
    # incremental refresh would skip them)
    registry = _registry_file(store)
    saved = registry.with_name(registry.name + ".before") if registry is not None and \
        registry.exists() else None
    if saved is not None:
        shutil.copy2(registry, saved)
    try:
        yield repo.store("sqlite", sqlite_path=str(nxt))
        with open(nxt, "rb") as f:
            os.fsync(f.fileno())
        os.replace(nxt, live)
    except BaseException:
        if saved is not None:
            os.replace(saved, registry)
        raise
    finally:
        nxt.unlink(missing_ok=True)
        if saved is not None:
            saved.unlink(missing_ok=True)


def _feature_types(refs: list[str]) -> dict[str, pl.DataType]:
    views = feature_views()
    out = {}
    for ref in refs:
        view, feature = ref.split(":")
        field = next(f for f in views[view].features if f.name == feature)
        out[f"{view}__{feature}"] = polars_dtype(field.dtype)
    return out


def service_refs(store: Any, service: str) -> list[str]:
    svc = store.get_feature_service(service)
    return [f"{p.name}:{f.name}" for p in svc.feature_view_projections for f in p.features]


def require_service(store: Any, name: str, refs: list[str], what: str) -> None:
    """Raise unless `store` has feature service `name` applied holding exactly `refs`; the
    error names what differs (the references the store lacks) and what to run. Training
    checks the service it reads, serving the one its model was trained from."""
    applied = {s.name for s in store.list_feature_services()}
    if name in applied:
        held = service_refs(store, name)
        if sorted(held) == sorted(refs):
            return
        problem = f"holds {held}, {what} reads {refs}"
    else:
        fields = {f"{v.name}:{f.name}" for v in store.list_feature_views() for f in v.features}
        missing = [r for r in refs if r not in fields]
        problem = "is not applied" + (f"; the store lacks {', '.join(missing)}" if missing
                                      else "")
    raise FeatureStoreError(
        f"feature service {name!r} ({what}'s) {problem}; apply the current declarations "
        "with `instructrank features build`, or retrain with `instructrank train`")


def historical_features(repo: FeatureRepo, store: Any, entity_df: pl.DataFrame,
                        features: str | list[str]) -> pl.DataFrame:
    """Point-in-time features for each entity row (join keys + `event_timestamp`), typed
    from the view schemas, in the entity rows' order. `features` is a service name or a
    list of 'view:feature' references."""
    if "event_timestamp" not in entity_df.columns:
        raise FeatureStoreError("entity rows need an 'event_timestamp' column")
    refs = service_refs(store, features) if isinstance(features, str) else features
    rows = entity_df.with_row_index("__row").with_columns(
        pl.col("event_timestamp").dt.replace_time_zone("UTC")
        if entity_df.schema["event_timestamp"].time_zone is None  # type: ignore[union-attr]
        else pl.col("event_timestamp"))
    with offline_calls(repo):
        job = store.get_historical_features(entity_df=rows.to_pandas(), features=refs,
                                            full_feature_names=True)
        result = pl.from_pandas(job.to_df())
    types = _feature_types(refs)
    result = result.with_columns(
        pl.col(c).cast(t) for c, t in types.items() if c in result.columns)
    return result.sort("__row").drop("__row")


def point_in_time(repo: FeatureRepo, entity_df: pl.DataFrame, refs: list[str],
                  via_feast: Collection[str] = ()) -> pl.DataFrame:
    """What `historical_features` returns for `refs`, computed in polars: per view, its
    parquet source (path, join key, timestamp field and ttl as the Feast definitions
    declare them) is scanned for the entity keys present only, then joined as of each entity
    row's time (`join_asof`, backward: the latest row at or before it). Feast's DuckDB
    offline store scans and sorts every source in full on each call, and DuckDB's own
    ASOF JOIN took 133 s for 200,000 (request, candidate) rows at 10^6 interactions where
    this takes 0.2 s; tests check it returns exactly what Feast returns. Views whose
    source is not a parquet file (a warehouse table) go through the offline store's
    `get_historical_features`, so the same definitions work on Snowflake, BigQuery, Spark
    or Postgres stores (`via_feast` names views to send there even when they are files).
    """
    from feast import Entity, FileSource

    if "event_timestamp" not in entity_df.columns:
        raise FeatureStoreError("entity rows need an 'event_timestamp' column")
    rows = entity_df.with_row_index("__row").with_columns(
        pl.col("event_timestamp").dt.replace_time_zone("UTC")
        if entity_df.schema["event_timestamp"].time_zone is None  # type: ignore[union-attr]
        else pl.col("event_timestamp"))
    views = feature_views()
    entities = {v.name: v for v in vars(definitions()).values() if isinstance(v, Entity)}
    wanted: dict[str, list[str]] = {}
    for ref in refs:
        view, feature = ref.split(":")
        if view not in views:
            raise UnknownNameError("feature view", view, list(views))
        wanted.setdefault(view, []).append(feature)
    out = rows
    by_time = rows.sort("event_timestamp")

    def in_warehouse(name: str) -> bool:
        return name in via_feast or not isinstance(views[name].batch_source, FileSource)

    elsewhere = [f"{name}:{f}" for name, features in wanted.items() if in_warehouse(name)
                 for f in features]
    if elsewhere:  # a warehouse source: the offline store's own point-in-time join runs it
        found = historical_features(repo, repo.store(), rows.select(
            pl.exclude("__row")), elsewhere).with_row_index("__row")
        out = out.join(found.select("__row", *[c for c in found.columns
                                               if c not in rows.columns]),
                       on="__row", how="left")
    for name, features in wanted.items():
        view = views[name]
        if in_warehouse(name):
            continue
        key = entities[view.entities[0]].join_key
        ts = view.batch_source.timestamp_field
        path = repo.source_path(view)
        if not path.exists():
            raise FeatureStoreError(f"feature view {name!r}: source {path} does not exist "
                                    "(run `instructrank features build`)")
        source = pl.scan_parquet(path).filter(
            pl.col(key).is_in(rows[key].unique().implode())).select(
            key, pl.col(ts).alias("__feature_ts"),
            *[pl.col(f).alias(f"{name}__{f}") for f in features]).collect()
        part = by_time.select("__row", key, "event_timestamp").join_asof(
            source.sort("__feature_ts"), left_on="event_timestamp", right_on="__feature_ts",
            by=key, strategy="backward", check_sortedness=False)
        if view.ttl and view.ttl.total_seconds() > 0:  # older than ttl: no value
            stale = pl.col("__feature_ts") < pl.col("event_timestamp") - view.ttl
            part = part.with_columns(pl.when(stale).then(None).otherwise(pl.col(c)).alias(c)
                                     for c in part.columns if c.startswith(f"{name}__"))
        out = out.join(part.drop(key, "event_timestamp", "__feature_ts"), on="__row",
                       how="left")
    types = _feature_types(refs)
    order = [f"{name}__{f}" for name, features in wanted.items() for f in features]
    return out.with_columns(pl.col(c).cast(t) for c, t in types.items()).sort(
        "__row").select(*[c for c in rows.columns if c != "__row"], *order)


def sql_string(text: str) -> str:
    """`text` as a SQL string literal (DuckDB cannot take a prepared parameter in a view)."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class OnlineFeatures:
    """One user's features and one row per candidate, as the ranker consumes them. Item
    columns use the offline names (`item_stats__popularity_7d`) whichever view served them."""

    user: dict[str, Any]
    items: pl.DataFrame
    user_known: bool


def _value(v: Any) -> Any:
    """A Feast ValueProto as a Python value (None when unset)."""
    kind = v.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    x = getattr(v, kind)
    return list(x.val) if kind.endswith("_list_val") else x


def packed_views() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """Serving views that pack every field of another view into one vector (tagged
    `packs` in the definitions): view -> (vector field, packed view, its fields in order).
    A field added to the packed view is packed, served and unpacked with nothing else
    edited."""
    views = feature_views()
    out = {}
    for name, view in views.items():
        packs = view.tags.get("packs")
        if packs:
            out[name] = (view.features[0].name, packs,
                         tuple(f.name for f in views[packs].features))
    return out


def _registry_file(store: Any) -> Path | None:
    """The store's registry when it is a local file (its stamp dates the last
    materialization), else None."""
    registry = getattr(store.config, "registry", None)
    path = getattr(registry, "path", registry)
    if not isinstance(path, str) or "://" in path:
        return None
    file = Path(path)
    return file if file.is_absolute() else Path(store.repo_path) / file


class _ItemRows:
    """Item rows read since the registry had `stamp` (OnlineReader.cached_items)."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.reset(None)

    def reset(self, stamp: tuple | None) -> None:
        self.stamp = stamp
        self.table: pl.DataFrame | None = None
        self.floats: np.ndarray | None = None  # `table`'s numeric columns (float_block)
        self.numeric: list[str] = []
        self.at: dict[int, int] = {}  # item id -> row of `table`

    def add(self, ids: list[int], rows: pl.DataFrame) -> None:
        start = 0 if self.table is None else self.table.height
        self.table = rows if self.table is None else pl.concat([self.table, rows])
        self.numeric, block = float_block(rows)
        self.floats = block if self.floats is None else np.vstack([self.floats, block])
        self.at.update(zip(ids, range(start, start + len(ids)), strict=True))


class OnlineReader:
    """Reads a feature service for one user and N candidates with one online-store read per
    view: user views with the user's key, item views with the candidates' keys, through
    Feast's `OnlineStore.online_read`. A view packed into a serving twin (item_stats into
    item_serving) is read through the twin, one vector per candidate, and unpacked to the
    fields the service asks for. Everything a request needs (views, names, types,
    unpacking) is resolved here once, at start-up, so a request does no registry work and
    the user's rows are not copied once per candidate as `get_online_features` does."""

    def __init__(self, store: Any, service: str) -> None:
        self.store = store
        self.service = service
        self.provider = store._get_provider()
        bound_waits(store)
        config = store.config.online_store
        self._db: Path | None = None  # the SQLite file served, followed across refreshes
        if config.type == "sqlite":
            self._db = Path(config.path) if Path(config.path).is_absolute() else \
                Path(store.repo_path) / config.path
        self._generation: tuple[tuple[int, int] | None, Any] = (
            self._identity(), self.provider.online_store)
        applied = [s.name for s in store.list_feature_services()]
        if service not in applied:
            raise FeatureStoreError(f"feature service {service!r} is not applied in this "
                                    f"store; applied: {', '.join(sorted(applied)) or 'none'}")
        svc = store.get_feature_service(service)
        entities = {e.name: e for e in store.list_entities()}
        online = {v.name for v in store.list_feature_views()}
        views = feature_views()
        twin = {source: (name, vector, fields)
                for name, (vector, source, fields) in packed_views().items() if name in online}
        # (view, join key, fields read, unpack: (packed view, [(field, position)]))
        self.plan: list[tuple[Any, str, list[str], tuple[str, list[tuple[str, int]]]
                              | None]] = []
        self.types: dict[str, pl.DataType] = {}
        for proj in svc.feature_view_projections:
            names = [f.name for f in proj.features]
            declared = {f.name: f.dtype for f in views[proj.name].features}
            self.types |= {f"{proj.name}__{n}": polars_dtype(declared[n]) for n in names}
            if proj.name in twin:
                name, vector, fields = twin[proj.name]
                view = store.get_feature_view(name)
                self.plan.append((view, entities[view.entities[0]].join_key, [vector],
                                  (proj.name, [(n, fields.index(n)) for n in names])))
            else:
                view = store.get_feature_view(proj.name)
                self.plan.append((view, entities[view.entities[0]].join_key, names, None))
        self.user_columns = [c for c in self.types if _view_of(c) in _user_views()]
        self._registry = _registry_file(store)
        self._items = _ItemRows()

    def _identity(self) -> tuple[int, int] | None:
        return None if self._db is None else _sqlite_identity(self._db)

    def _online(self) -> tuple[tuple[int, int] | None, Any]:
        """(the served file's identity, the online store reading it). A refresh renames a
        new SQLite file over the old (swapped_in): the next read opens it, with its own
        connection, while reads already under way finish on the old one. A file that has
        gone (moved away) is not recreated empty: reads go on from the one open."""
        current = self._generation
        if self._db is None:
            return current
        found = self._identity()
        if found is None or found == current[0]:
            return current
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        fresh = SqliteOnlineStore()
        bound_waits(self.store, fresh)
        self._generation = (found, fresh)
        return self._generation

    def read(self, user_id: int, item_ids: list[int]) -> OnlineFeatures:
        user = self.read_user(user_id)
        return OnlineFeatures(user, self.read_items(item_ids),
                              any(v is not None for v in user.values()))

    def read_user(self, user_id: int) -> dict[str, Any]:
        """The user views' values (None where the store has no row for the user)."""
        return self.read_users([user_id])[0]

    def read_users(self, user_ids: list[int]) -> list[dict[str, Any]]:
        """`read_user` of several users in one read per view."""
        columns = self._read("user_id", user_ids)
        return [{c: columns[c][i] for c in self.user_columns} for i in range(len(user_ids))]

    def user_values(self, users: list[dict[str, Any]], columns: list[str]
                    ) -> dict[str, np.ndarray] | None:
        """`columns` of `read_users`' answers as arrays (recdata.frames.python_floats: what
        a frame of them would convert to), or None when one of them cannot be one (not
        numeric, or lists of several lengths): then the caller builds the frame."""
        out = {}
        for c in columns:
            values = python_floats([u.get(c) for u in users], self.types[c])
            if values is None:
                return None
            out[c] = values
        return out

    def read_items(self, item_ids: list[int]) -> pl.DataFrame:
        """One row per item id, in order, with the item views' values (offline names)."""
        columns: dict[str, list[Any]] = {"item_id": [int(i) for i in item_ids]}
        columns |= self._read("item_id", item_ids)
        return pl.DataFrame(columns, schema={"item_id": pl.Int64(), **{
            c: t for c, t in self.types.items() if c not in self.user_columns}}, strict=False)

    def cached_items(self, item_ids: list[int]) -> pl.DataFrame:
        """`read_items` from the rows kept since the last materialization
        (`cached_item_block`)."""
        return self.cached_item_block(item_ids)[0]

    def cached_item_block(self, item_ids: list[int]
                          ) -> tuple[pl.DataFrame, dict[str, np.ndarray] | None]:
        """`read_items`, and its numeric columns as floats (`recdata.frames.float_block`, converted
        once per kept row, not per request: None when nothing is kept), from rows kept
        since the last materialization: item views change
        only when the store is materialized (`features build`/`refresh`), which rewrites
        the registry file, so its modification stamp (one stat per call) tells when every
        kept row is stale and all are dropped at once: each answer's item rows come from one
        materialization. Without a local registry file nothing is kept."""
        if self._registry is None:
            return self.read_items(item_ids), None
        try:
            info = os.stat(self._registry)
            stamp = (info.st_mtime_ns, info.st_size, self._online()[0])
        except OSError:
            return self.read_items(item_ids), None
        with self._items.lock:
            kept = self._items
            if kept.stamp != stamp:
                kept.reset(stamp)
            missing = [i for i in dict.fromkeys(item_ids) if i not in kept.at]
            if missing:
                kept.add(missing, self.read_items(missing))
            rows = [kept.at[i] for i in item_ids]
            block = kept.floats[rows]  # type: ignore[index]
            return kept.table[rows], dict(zip(kept.numeric, block.T, strict=True))

    def _read(self, entity: str, ids: list[int]) -> dict[str, list[Any]]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        keys = [EntityKey(join_keys=[entity], entity_values=[Value(int64_val=int(i))])
                for i in ids]
        columns: dict[str, list[Any]] = {}
        _, online = self._online()  # every view of this read from the same file
        for view, key, names, unpack in self.plan:
            if key != entity:
                continue
            try:
                # a copy: Feast's Redis store appends '_ts:<view>' to the list it is given
                rows = online.online_read(self.store.config, view, keys, list(names))
            except Exception as exc:
                if _is_connection_error(exc):
                    raise StoreUnavailableError(f"online store unreachable: {exc}") from exc
                raise
            for name in names:
                values = [None if d is None or name not in d else _value(d[name])
                          for _, d in rows]
                if unpack is None:
                    columns[f"{view.name}__{name}"] = values
                    continue
                source, positions = unpack
                for f, j in positions:
                    columns[f"{source}__{f}"] = [
                        None if v is None or j >= len(v) else v[j] for v in values]
        return columns


def _sqlite_identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def online_features_api(store: Any, user_id: int, item_ids: list[int],
                        service: str) -> dict[str, list[Any]]:
    """The same lookup through the public `get_online_features` (one call, the user's rows
    repeated per candidate): the reference the reader is tested and benchmarked against."""
    rows = {"user_id": [int(user_id)] * len(item_ids), "item_id": [int(i) for i in item_ids]}
    svc = store.get_feature_service(service)
    return store.get_online_features(features=svc, entity_rows=rows,
                                     full_feature_names=True).to_dict()


def _view_of(column: str) -> str:
    return column.split("__", 1)[0]


def _user_views() -> set[str]:
    return {name for name, v in feature_views().items() if list(v.entities) == ["user"]}


STORE_WAIT_S = 0.25  # the longest one online-store call may wait on a lock or a socket


def bound_waits(store: Any, online: Any = None, seconds: float = STORE_WAIT_S) -> None:
    """Make an online store that cannot answer fail fast, so a request gets its 503 within a
    second instead of hanging. SQLite: wait at most `seconds` on another process's lock
    (Python's default is 5 s). Redis: connect and read timeouts of `seconds` (redis-py has
    none), and one immediate retry on a broken connection, none on a timeout (redis-py's
    default retries three times with back-offs of up to seconds each); a server restarted
    under a pooled connection costs that one retry, not an error. Values a connection
    string sets itself are kept. `online`: the online store object to set (default: the
    store's own)."""
    config = store.config.online_store
    online = online if online is not None else store._get_provider().online_store
    if config.type == "sqlite":
        path = Path(online._get_db_path(store.config))
        if path.exists():  # connecting would create an empty file
            online._get_conn(store.config).execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
    elif config.type == "redis":
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.retry import Retry

        client = online._get_client(config)
        kwargs = client.connection_pool.connection_kwargs
        for name in ("socket_timeout", "socket_connect_timeout"):
            if kwargs.get(name) is None:
                kwargs[name] = seconds
        client.set_retry(Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))


def _is_connection_error(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e}
    return bool(names & {"ConnectionError", "ConnectionRefusedError", "TimeoutError",
                         "OperationalError"})
