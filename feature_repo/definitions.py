"""instructrank's features, read top to bottom: entities, sources, views, services.

Adding a ranker feature = one `Field` in one view here + one column in the job that writes
that view's source (feature_repo/jobs/) + one declaration in feature_repo/ranker.py.
Sources are parquet files under data/sources/, written by `instructrank features build`;
paths are relative to this folder.

Time semantics (what makes training sets point-in-time correct):
- user views hold one row per (user, second with interactions), timestamped one second
  *after* it: a request at T sees exactly the interactions strictly before T;
- item_stats holds one row per (item, day with interactions), timestamped at the end of that
  day: a request sees only days that ended before it;
- static views (content, text embeddings) are timestamped 1970-01-01 and never expire.

The hot path is one user row plus one compact row per candidate (`item_serving`: every
item_stats field packed into one vector, in the view's field order, because the online
read costs per (entity, feature) pair). The 384-d item vectors are static and loaded once
into the scoring process, so per request only the user's profile vector travels.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Float32, Float64, Int64, String
from feast.value_type import ValueType

from feature_repo import ranker

FOREVER = timedelta(0)  # Feast: a ttl of 0 means the value never expires

# --- entities -----------------------------------------------------------------------------

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A person with a history of interactions.")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64,
              description="A catalogue item.")
request = Entity(name="request", join_keys=["request_id"], value_type=ValueType.STRING,
                 description="A logged instruction request.")

# --- sources (written by feature_repo/jobs) -------------------------------------------------

user_history_source = FileSource(name="user_history_source",
                                 path="data/sources/user_history.parquet",
                                 timestamp_field="event_timestamp")
user_seen_source = FileSource(name="user_seen_source", path="data/sources/user_seen.parquet",
                              timestamp_field="event_timestamp")
user_profile_source = FileSource(name="user_profile_source",
                                 path="data/sources/user_profile_embedding.parquet",
                                 timestamp_field="event_timestamp")
item_stats_source = FileSource(name="item_stats_source", path="data/sources/item_stats.parquet",
                               timestamp_field="event_timestamp")
item_serving_source = FileSource(name="item_serving_source",
                                 path="data/sources/item_serving.parquet",
                                 timestamp_field="event_timestamp")
item_content_source = FileSource(name="item_content_source",
                                 path="data/sources/item_content.parquet",
                                 timestamp_field="event_timestamp")
item_text_source = FileSource(name="item_text_source",
                              path="data/sources/item_text_embedding.parquet",
                              timestamp_field="event_timestamp")
user_kg_source = FileSource(name="user_kg_source", path="data/sources/user_kg_embedding.parquet",
                            timestamp_field="event_timestamp")
item_kg_source = FileSource(name="item_kg_source", path="data/sources/item_kg_embedding.parquet",
                            timestamp_field="event_timestamp")
instruction_source = FileSource(name="instruction_source",
                                path="data/sources/instruction_embedding.parquet",
                                timestamp_field="event_timestamp")

# --- feature views ---------------------------------------------------------------------------

user_history = FeatureView(
    name="user_history", entities=[user], ttl=FOREVER, source=user_history_source,
    description="The user's history as of each interaction (strictly before the row time).",
    schema=[
        Field(name="n_interactions", dtype=Int64),
        Field(name="mean_rating", dtype=Float32, description="null when nothing was rated"),
        Field(name="last_interaction_ts", dtype=Int64, description="unix seconds"),
        Field(name="genre_share", dtype=Array(Float32),
              description="share of the history in each genre, order in data/sources/meta.json"),
        Field(name="last_items", dtype=Array(Int64), description="most recent first, up to 5"),
    ],
)

user_seen = FeatureView(
    name="user_seen", entities=[user], ttl=FOREVER, source=user_seen_source,
    description="Everything the user has interacted with, one row per user as of the last "
                "interaction: what serving excludes and explains ratings from, read from "
                "the store so a `features refresh` reaches a running service.",
    schema=[
        Field(name="items", dtype=Array(Int64), description="most recent first"),
        Field(name="ratings", dtype=Array(Float32), description="aligned with items; NaN: "
                                                                "not rated"),
    ],
)

user_profile_embedding = FeatureView(
    name="user_profile_embedding", entities=[user], ttl=FOREVER, source=user_profile_source,
    description="Recency-weighted mean of the history's item text vectors (half-life 20 items).",
    schema=[Field(name="embedding", dtype=Array(Float32))],
)

item_stats = FeatureView(
    name="item_stats", entities=[item], ttl=FOREVER, source=item_stats_source,
    description="Popularity and rating as of the end of each day with interactions.",
    schema=[
        Field(name="interactions", dtype=Int64, description="all-time count"),
        Field(name="mean_rating", dtype=Float32),
        Field(name="popularity_7d", dtype=Float32,
              description="interaction count decayed with a 7-day half-life, at row time"),
        Field(name="popularity_30d", dtype=Float32,
              description="interaction count decayed with a 30-day half-life, at row time"),
        Field(name="last_interaction_ts", dtype=Int64),
    ],
)

item_serving = FeatureView(
    name="item_serving", entities=[item], ttl=FOREVER, source=item_serving_source,
    description="Every item_stats field packed into one vector per item for the hot path, "
                "in item_stats' field order; unpacked by name when read.",
    schema=[Field(name="vector", dtype=Array(Float64))], tags={"packs": "item_stats"},
)

item_content = FeatureView(
    name="item_content", entities=[item], ttl=FOREVER, source=item_content_source,
    description="Static attributes.",
    schema=[
        Field(name="title", dtype=String),
        Field(name="year", dtype=Int64),
        Field(name="genres", dtype=Array(String)),
    ],
)

item_text_embedding = FeatureView(
    name="item_text_embedding", entities=[item], ttl=FOREVER, source=item_text_source,
    description="all-MiniLM-L6-v2 vector of the item's text (title, genres, decade).",
    schema=[Field(name="embedding", dtype=Array(Float32))],
)

user_kg_embedding = FeatureView(
    name="user_kg_embedding", entities=[user], ttl=FOREVER, source=user_kg_source,
    description="PyKEEN entity vector of the user (KG built from the training window only).",
    schema=[Field(name="embedding", dtype=Array(Float32))],
)

item_kg_embedding = FeatureView(
    name="item_kg_embedding", entities=[item], ttl=FOREVER, source=item_kg_source,
    description="PyKEEN entity vector of the item.",
    schema=[Field(name="embedding", dtype=Array(Float32))],
)

instruction_embedding = FeatureView(
    name="instruction_embedding", entities=[request], ttl=FOREVER, source=instruction_source,
    online=False,  # logged requests are for training; online requests are encoded live
    description="all-MiniLM-L6-v2 vector of each logged instruction.",
    schema=[Field(name="embedding", dtype=Array(Float32))],
)

# --- feature services: one per ranker version, generated from feature_repo/ranker.py -------
#
# A model names the service it was trained from; training reads it point-in-time, serving
# reads it online (item_stats through its packed twin item_serving), and a model whose
# service this registry does not hold is refused at load. Feast collects module-level
# objects, hence the names put into this module's namespace.


def _ranker_service(ablation: str) -> FeatureService:
    views = {v.name: v for v in globals().values() if isinstance(v, FeatureView)}
    fields: dict[str, list[str]] = {}
    for ref in ranker.service_refs(ablation):
        view, feature = ref.split(":")
        fields.setdefault(view, []).append(feature)
    return FeatureService(
        name=ranker.service_name(ablation),
        features=[views[view][names] for view, names in fields.items()],
        tags={"ablation": ablation},
        description=f"What the ranker's {ablation!r} version reads from the store "
                    "(generated from feature_repo/ranker.py).")


RANKER_SERVICES = {ablation: _ranker_service(ablation) for ablation in ranker.ABLATIONS}
globals().update({service.name: service for service in RANKER_SERVICES.values()})
