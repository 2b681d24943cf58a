"""The ranker's features, each declared once: its name, what it reads, its tags, its family.

Everything else is derived from this list: the ranker's feature order, the Feast feature
service each model version is trained and served from (`definitions.py` generates one per
ablation), the point-in-time and online reads, `assemble()`, the ablations and the
explanation families. A feature either reads Feast features (`reads`, `view:feature`
references) or is computed at request time (`compute`, a function registered by that name
in `ranking.ltr.features`), or both (a store value turned into a request-time quantity,
such as days since a timestamp). A declared feature whose inputs are neither served nor
computable is an error naming it, never a column of NaN.

Adding a feature is one `Field` in a view (definitions.py), one column in the job that
writes that view's source (jobs/), and one line here.

Pure data on purpose: this module imports nothing, so the Feast definitions can generate
services from it and the ranker can read it without either importing the other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class RankerFeature:
    """One ranker feature. `tags` (space-separated) decide the ablations that drop it;
    `family` groups it into a reason a person understands (None: never said); `compute`
    names the request-time function (default `value`: the one store value as it is)."""

    name: str
    tags: str
    family: str | None
    reads: tuple[str, ...] = ()
    compute: str = "value"
    arg: str | None = None

    @property
    def tag_set(self) -> frozenset[str]:
        return frozenset(self.tags.split())


def _source(name: str, tags: str, family: str) -> tuple[RankerFeature, RankerFeature]:
    """A candidate source's score and its rank in the whole catalogue."""
    return (RankerFeature(f"src_{name}", tags, family, compute="source_score", arg=name),
            RankerFeature(f"rank_{name}", tags, family, compute="source_rank", arg=name))


def _match(name: str) -> RankerFeature:
    """Attribute match between the parsed instruction and the item."""
    return RankerFeature(f"attr_{name}", "instruction", "request_match",
                         compute="attribute_match", arg=name)


FEATURES: tuple[RankerFeature, ...] = (
    *_source("transition", "history", "after_last"),
    *_source("cf", "history", "similar"),
    *_source("itemknn", "history", "similar"),
    *_source("popularity", "item", "item"),
    *_source("attribute", "instruction", "request_match"),
    *_source("embedding", "instruction text", "request_meaning"),
    *_source("kg", "kg history", "kg"),
    _match("asked"), _match("genre_asked"), _match("genre_match"), _match("decade_match"),
    _match("level_match"), _match("all_match"),
    # items the request names ("like Alien"): how close a candidate is to them in text
    # (their co-occurrence reaches the ranker through the history sources they seed)
    RankerFeature("mention_similarity", "instruction text", None,
                  compute="mention_similarity"),
    RankerFeature("mention_count", "instruction", None, compute="mention_count"),
    # the user, as of the request (Feast: user_history, user_profile_embedding)
    RankerFeature("user_interactions", "history", None, ("user_history:n_interactions",)),
    RankerFeature("user_mean_rating", "history", None, ("user_history:mean_rating",)),
    RankerFeature("user_days_since_last", "history", None,
                  ("user_history:last_interaction_ts",), compute="days_since"),
    RankerFeature("user_genre_affinity", "history", "taste", ("user_history:genre_share",),
                  compute="genre_affinity"),
    RankerFeature("profile_cosine", "text history", "taste",
                  ("user_profile_embedding:embedding",), compute="vector_cosine"),
    RankerFeature("kg_user_score", "kg history", "kg", compute="kg_user_score"),
    # the item, as of the request (Feast: item_stats; the catalogue)
    RankerFeature("item_interactions", "item", "item", ("item_stats:interactions",)),
    RankerFeature("item_mean_rating", "item", "item", ("item_stats:mean_rating",)),
    RankerFeature("item_pop_7d", "item", "item", ("item_stats:popularity_7d",)),
    RankerFeature("item_pop_30d", "item", "item", ("item_stats:popularity_30d",)),
    RankerFeature("item_days_since_last", "item", "item", ("item_stats:last_interaction_ts",),
                  compute="days_since"),
    RankerFeature("item_year", "item", "item", compute="catalogue", arg="year"),
)

# an ablation drops every feature carrying one of its tags
ABLATIONS: dict[str, frozenset[str]] = {
    "full": frozenset(), "no_kg": frozenset({"kg"}),
    "no_instruction": frozenset({"instruction"}), "no_text": frozenset({"text"}),
}


# store values a request is built from, not ranker features: everything the user has
# interacted with, most recent first, is the history the candidate sources start from
# online, what is excluded, and where "which you rated 4" comes from
REQUEST_INPUTS: tuple[str, ...] = ("user_seen:items", "user_seen:ratings")


def by_name() -> dict[str, RankerFeature]:
    return {f.name: f for f in FEATURES}


def ablation_features(ablation: str) -> list[RankerFeature]:
    if ablation not in ABLATIONS:
        raise KeyError(ablation)
    return [f for f in FEATURES if not f.tag_set & ABLATIONS[ablation]]


def store_refs(features: list[RankerFeature]) -> list[str]:
    """The Feast references `features` read, each once, in declaration order."""
    return list(dict.fromkeys(r for f in features for r in f.reads))


def service_refs(ablation: str) -> list[str]:
    """What the `ablation` version's feature service holds: its features' references and
    the request inputs."""
    return refs_of([f.name for f in ablation_features(ablation)])


def refs_of(names: list[str]) -> list[str]:
    """The references a service for the features `names` holds (a trained model's list)."""
    specs = by_name()
    return list(dict.fromkeys([*store_refs([specs[n] for n in names]), *REQUEST_INPUTS]))


def service_name(ablation: str) -> str:
    """The feature service of a ranker version: the ablation, and a hash of the references
    it reads, so a model trained before a feature was added names a service that no longer
    matches the declarations (and is refused), never one whose contents changed under it."""
    refs = service_refs(ablation)
    digest = hashlib.sha1("\n".join(refs).encode()).hexdigest()[:8]
    return f"ranker_{ablation}_{digest}"
