"""Turn interaction logs into instruction requests (the InstructRec part).

A request row is (request_id, user_id, task, instruction, target_item_id, timestamp,
phrasing_set) plus `split`, `seq` (the target's position in the user's history) and
`template_id`. Tasks:
- `history`: a vague request; the user's history carries the preference;
- `intent`: a specific intention built from the target's attributes, never its title;
- `search`: the same kind of intention, evaluated with no history (cold start);
- `conversational`: the intention as people write it, with filler, a liked item by name,
  a value ruled out and a range of years (recdata.conversation).
Test requests use held-out phrasings only; train and validation requests use the training
phrasings, so every test figure measures generalisation to unseen wording.
Item popularity and rating levels come from the training window only.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recdata.conversation import conversational_requests
from recdata.dataset import Dataset
from recdata.errors import ConfigError
from recdata.schema import DomainSchema, Levels
from recdata.split import temporal_leave_one_out
from recdata.templates import FAMILIES, render

# what the generator writes, beyond its config: part of every fingerprint of what is built
# from its requests (2: the conversational task; 3: its ruled-out values drawn in a fixed order)
GENERATOR_VERSION = 3
TEMPLATE_TASKS = ("history", "intent", "search")  # one phrasing family each
TASKS = (*TEMPLATE_TASKS, "conversational")
REQUEST_COLUMNS = ["request_id", "user_id", "task", "instruction", "target_item_id",
                   "timestamp", "phrasing_set", "split", "seq", "template_id"]


class InstructionConfig(BaseModel):
    """How requests are generated. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 42
    train_share: float = Field(2 / 3, gt=0, lt=1)
    train_requests_per_user: int = Field(3, ge=0)
    p_second_genre: float = Field(0.35, ge=0, le=1)
    p_decade: float = Field(0.6, ge=0, le=1)
    p_popularity: float = Field(0.35, ge=0, le=1)
    p_rating: float = Field(0.35, ge=0, le=1)


def phrasing_split(seed: int, train_share: float,
                   schema: DomainSchema | None = None) -> pl.DataFrame:
    """(family, template_id, template, phrasing_set): a seeded split of every family, in the
    words of `schema`'s domain."""
    rng = np.random.default_rng(seed)
    w = (schema or DomainSchema(dataset="any")).wording
    frames = []
    for family, raw in FAMILIES.items():
        templates = [render(t, w.verb, w.past, w.nouns[0]) for t in raw]
        order = rng.permutation(len(templates))
        n_train = round(len(templates) * train_share)
        sets = np.where(np.argsort(order) < n_train, "train", "heldout")
        frames.append(pl.DataFrame({
            "family": family, "template_id": np.arange(len(templates)),
            "template": templates, "phrasing_set": sets,
        }))
    return pl.concat(frames).with_columns(
        pl.int_range(pl.len()).over("family", "phrasing_set").alias("slot"),
        pl.len().over("family", "phrasing_set").alias("n_slots"),
    )


def item_levels(items: pl.DataFrame, train: pl.DataFrame,
                levels: Levels | None = None) -> pl.DataFrame:
    """Popularity and rating level per item from training-window interactions only; an item
    is acclaimed only where the schema has that level (the data has ratings)."""
    levels = levels or Levels()
    stats = train.group_by("item_id").agg(
        pl.len().alias("n"), pl.col("rating").mean().alias("mean_rating"))
    out = items.select("item_id", *[c for c in ("genres", "year") if c in items.columns]).join(
        stats, on="item_id", how="left")
    out = out.with_columns(pl.col("n").fill_null(0))
    pop_rank = pl.col("n").rank("ordinal", descending=True) / pl.len()
    return out.with_columns(
        pl.when(pop_rank <= levels.popular_top_share).then(pl.lit("popular"))
        .when(pop_rank > 1 - levels.obscure_bottom_share).then(pl.lit("obscure"))
        .alias("popularity_level"),
        (((pl.col("mean_rating") >= levels.acclaimed_min_mean)
          & (pl.col("n") >= levels.acclaimed_min_count)).fill_null(False)
         if levels.acclaimed and levels.acclaimed_min_mean is not None
         else pl.lit(False)).alias("acclaimed"),
    )


def _pick(phrases: list[str], r: pl.Expr) -> pl.Expr:
    return pl.lit(pl.Series([phrases])).list.get(r % len(phrases))


def _genre_phrase(genre: pl.Expr, r: pl.Expr, schema: DomainSchema) -> pl.Expr:
    cats = schema.by_role("categories")
    table = dict(cats.phrases) if cats is not None else {}
    if not table:
        return genre.str.to_lowercase()
    phrases = genre.replace_strict(
        list(table), list(table.values()), default=None, return_dtype=pl.List(pl.String))
    phrases = pl.coalesce(phrases, pl.concat_list(genre.str.to_lowercase()))
    return phrases.list.get(r % phrases.list.len())


def _decade_phrase(year: pl.Expr, form: pl.Expr, words: dict[int, str]) -> pl.Expr:
    decade = year // 10 * 10
    word = decade.replace_strict(list(words), list(words.values()), default=None,
                                 return_dtype=pl.String) if words else pl.lit(None, pl.String)
    short = (decade % 100).cast(pl.String).str.zfill(2)
    full = decade.cast(pl.String)
    return (
        pl.when(form == 1).then(pl.format("from the '{}s", short))
        .when((form == 2) & word.is_not_null()).then(pl.format("from the {}", word))
        .when(form == 3).then(pl.format("made in the {}s", full))
        .otherwise(pl.format("from the {}s", full))
    )


def describe(frame: pl.DataFrame, cfg: InstructionConfig, schema: DomainSchema,
             rng: np.random.Generator) -> pl.Series:
    """The intention text for each row of `frame` (columns genres, year, popularity_level,
    acclaimed), with an article, in the schema's words: 'an acclaimed funny <noun> from the
    '90s'."""
    levels, nouns = schema.levels, schema.wording.nouns
    if "genres" not in frame.columns:
        frame = frame.with_columns(pl.lit([], pl.List(pl.String)).alias("genres"))
    if "year" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.Int32).alias("year"))
    n = frame.height
    rand = {k: rng.integers(0, 1 << 30, n) for k in ("g1", "g2", "s1", "s2", "form", "pp",
                                                      "rp", "noun")}
    coin = {k: rng.random(n) for k in ("second", "decade", "pop", "rating")}
    f = frame.with_columns(
        *[pl.Series(f"r_{k}", v) for k, v in rand.items()],
        *[pl.Series(f"u_{k}", v) for k, v in coin.items()],
    )
    n_genres = pl.col("genres").list.len()
    i1 = pl.col("r_g1") % n_genres
    g1 = pl.when(n_genres > 0).then(pl.col("genres").list.get(i1, null_on_oob=True))
    i2 = (i1 + 1 + pl.col("r_g2") % (n_genres - 1).clip(lower_bound=1)) % n_genres
    g2 = pl.when((n_genres > 1) & (pl.col("u_second") < cfg.p_second_genre)).then(
        pl.col("genres").list.get(i2, null_on_oob=True))
    genre_part = pl.concat_str(
        [_genre_phrase(g1, pl.col("r_s1"), schema), _genre_phrase(g2, pl.col("r_s2"), schema)],
        separator=" and ", ignore_nulls=True)
    pop = (
        pl.when((pl.col("popularity_level") == "popular") & (pl.col("u_pop") < cfg.p_popularity))
        .then(_pick(levels.popular, pl.col("r_pp")))
        .when((pl.col("popularity_level") == "obscure") & (pl.col("u_pop") < cfg.p_popularity))
        .then(_pick(levels.obscure, pl.col("r_pp")))
    )
    rating = pl.when(pl.col("acclaimed") & (pl.col("u_rating") < cfg.p_rating)).then(
        _pick(levels.acclaimed or [""], pl.col("r_rp")))
    decade = pl.when(pl.col("year").is_not_null() & (pl.col("u_decade") < cfg.p_decade)).then(
        _decade_phrase(pl.col("year"), pl.col("r_form") % 4, schema.wording.decades))
    desc = pl.concat_str(
        [rating, pop, pl.when(genre_part != "").then(genre_part),
         _pick(list(nouns), pl.col("r_noun")), decade],
        separator=" ", ignore_nulls=True)
    article = pl.when(desc.str.contains(r"^[aeiouAEIOU]")).then(pl.lit("an ")).otherwise(
        pl.lit("a "))
    return f.select((article + desc).alias("desc"))["desc"]


def _targets(split: pl.DataFrame, per_user: int, rng: np.random.Generator) -> pl.DataFrame:
    """Validation and test targets, plus each user's last `per_user` training positions
    (each with at least one interaction before it) for learning-to-rank.

    The last positions, not random ones: the ranker's candidate sources and KG are then fitted
    on the training window *without* them (`training_targets_removed`), exactly as validation
    requests are scored by models fitted without the validation targets."""
    evals = split.filter(pl.col("split").is_in(["val", "test"]))
    train = split.filter((pl.col("split") == "train") & (pl.col("seq") >= 1))
    rng.random(train.height)  # keeps the seeded stream (and every other request) unchanged
    train = train.filter(pl.col("seq").rank("ordinal", descending=True).over("user_id")
                         <= per_user)
    return pl.concat([train, evals]).sort("user_id", "seq")


def generate_requests(ds: Dataset, cfg: InstructionConfig | None = None) -> pl.DataFrame:
    """Request rows for every user and task, deterministic for `cfg.seed`."""
    cfg = cfg or InstructionConfig()
    schema = ds.domain
    if "genres" not in ds.items.columns and "year" not in ds.items.columns:
        raise ConfigError(
            f"items of {ds.name!r} have no categories and no year to build intent requests "
            "from; give the schema an attribute with role 'categories' (a categorical column) "
            "or 'time' (a year)")
    rng = np.random.default_rng(cfg.seed)
    split = temporal_leave_one_out(ds.interactions)
    levels = item_levels(ds.items, split.filter(pl.col("split") == "train"), schema.levels)
    targets = _targets(split, cfg.train_requests_per_user, rng)
    rows = targets.join(pl.DataFrame({"task": list(TEMPLATE_TASKS)}), how="cross").with_columns(
        pl.when(pl.col("split") == "test").then(pl.lit("heldout")).otherwise(pl.lit("train"))
        .alias("phrasing_set"),
        pl.Series("_r", rng.integers(0, 1 << 30, targets.height * len(TEMPLATE_TASKS))),
    )
    phrasings = phrasing_split(cfg.seed, cfg.train_share, schema).rename({"family": "task"})
    sizes = phrasings.select("task", "phrasing_set", "n_slots").unique()
    rows = rows.join(sizes, on=["task", "phrasing_set"]).with_columns(
        (pl.col("_r") % pl.col("n_slots")).alias("slot")
    ).join(phrasings.drop("n_slots"), on=["task", "phrasing_set", "slot"])
    rows = rows.sort("user_id", "seq", "task").join(
        levels.rename({"item_id": "_item"}), left_on="item_id", right_on="_item", how="left")
    desc = describe(rows, cfg, schema, rng)
    parts = pl.col("template").str.split("{desc}")
    instruction = pl.when(pl.col("task") == "history").then(pl.col("template")).otherwise(
        parts.list.first() + pl.col("_desc") + parts.list.last())
    out = rows.with_columns(pl.Series("_desc", desc)).select(
        pl.format("{}-{}-{}-{}", "split", "task", "user_id", "seq").alias("request_id"),
        "user_id", "task", instruction.alias("instruction"),
        pl.col("item_id").alias("target_item_id"), "timestamp", "phrasing_set", "split",
        "seq", "template_id",
    )
    # its own stream: the template tasks' requests are the same with or without it
    with_levels = targets.join(levels.rename({"item_id": "_item"}), left_on="item_id",
                               right_on="_item", how="left").sort("user_id", "seq")
    talk = conversational_requests(
        with_levels, split, ds.items,
        describe(with_levels, cfg, schema, np.random.default_rng([cfg.seed, 3])), schema,
        cfg.seed, cfg.train_share)
    out = pl.concat([out, talk.select(out.columns)], how="vertical_relaxed")
    return out.sort("split", "task", "user_id", "seq")
