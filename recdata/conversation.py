"""Requests as people write them, generated: task `conversational`.

Each request is the target's intention ("a funny 90s <noun>", recdata.instructions.describe)
in one of the `core` phrasings, plus, each with its own probability:
- a sentence of filler before it ("Long week.");
- an item the user took before the target, named by its title ("Something like Toy
  Story."): the most recent of their last ten that shares a category with the target, else
  the most recent; never the target itself;
- a category value the target does not have, ruled out ("No horror please."), drawn from
  the catalogue's most common values;
- a range of years the target lies in ("Made before 1998.", "Between 1988 and 1995.").
The parts are joined in one of two orders, as several sentences. Phrasings of every part are
split into training and held-out ones (recdata.templates.CONVERSATION); test requests use
held-out ones only. Drawn from its own seeded stream, so the other tasks' requests are the
same with or without this one.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recdata.schema import DomainSchema
from recdata.templates import CONVERSATION, render

TASK = "conversational"
COMMON_VALUES = 12  # values to rule out come from the catalogue's most common ones
HISTORY_WINDOW = 10
P = {"filler": 0.5, "like": 0.5, "exclude": 0.45, "range": 0.4}


def _phrasings(seed: int, train_share: float, schema: DomainSchema) -> dict[tuple[str, str],
                                                                             list[str]]:
    """(part, phrasing_set) -> phrasings in the schema's words, a seeded split per part."""
    rng = np.random.default_rng([seed, 7])
    w = schema.wording
    out = {}
    for part, raw in CONVERSATION.items():
        texts = [render(t, w.verb, w.past, w.nouns[0]) for t in raw]
        order = rng.permutation(len(texts))
        n_train = max(1, round(len(texts) * train_share))
        out[(part, "train")] = [texts[i] for i in order[:n_train]]
        out[(part, "heldout")] = [texts[i] for i in order[n_train:]] or out[(part, "train")]
    return out


def display_title(title: pl.Expr) -> pl.Expr:
    """How a person writes a title: no year in brackets, a trailing ', The' moved to the
    front ('Godfather, The (1972)' -> 'The Godfather')."""
    t = title.str.replace_all(r"\s*\([^)]*\)", "").str.strip_chars()
    moved = t.str.extract(r"^(.*),\s*(The|A|An)$", 2)
    return pl.when(moved.is_not_null()).then(
        pl.concat_str(moved, pl.lit(" "), t.str.extract(r"^(.*),\s*(The|A|An)$", 1))
    ).otherwise(t)


def _liked(targets: pl.DataFrame, split: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """(user_id, seq, liked_title): the item each request names, from the user's last
    HISTORY_WINDOW items before the target."""
    genres = items.select("item_id", pl.col("genres"), display_title(pl.col("title"))
                          .alias("liked_title"))
    past = targets.select("user_id", "seq", pl.col("item_id").alias("target")).join(
        split.select("user_id", pl.col("seq").alias("s"), "item_id"), on="user_id",
    ).filter((pl.col("s") < pl.col("seq")) & (pl.col("s") >= pl.col("seq") - HISTORY_WINDOW)
             & (pl.col("item_id") != pl.col("target")))
    target_genres = genres.select(pl.col("item_id").alias("target"),
                                  pl.col("genres").alias("tg"))
    scored = past.join(genres, on="item_id").join(target_genres, on="target").with_columns(
        pl.col("genres").list.set_intersection("tg").list.len().gt(0).alias("shares"))
    return scored.sort(["user_id", "seq", "shares", "s"], descending=[False, False, True, True]
                       ).group_by(["user_id", "seq"], maintain_order=True).first().select(
        "user_id", "seq", "liked_title")


def conversational_requests(targets: pl.DataFrame, split: pl.DataFrame, items: pl.DataFrame,
                            desc: pl.Series, schema: DomainSchema, seed: int,
                            train_share: float) -> pl.DataFrame:
    """One `conversational` request per target (rows of `targets`: user_id, seq, item_id,
    timestamp, split; `desc`: each target's intention), in the generator's layout."""
    rng = np.random.default_rng([seed, 11])
    n = targets.height
    phrasings = _phrasings(seed, train_share, schema)
    counts = items["genres"].explode().drop_nulls().value_counts()
    common = counts.sort(["count", "genres"], descending=[True, False]).head(
        COMMON_VALUES)["genres"].to_list()  # ties by name: the same requests every run
    phrase = {v: schema.phrases(v)[0] for v in common}
    rows = targets.with_columns(
        pl.Series("desc", desc),
        pl.when(pl.col("split") == "test").then(pl.lit("heldout")).otherwise(pl.lit("train"))
        .alias("phrasing_set"),
        *[pl.Series(f"u_{k}", rng.random(n)) for k in ("filler", "like", "exclude", "range",
                                                         "order", "kind")],
        *[pl.Series(f"r_{k}", rng.integers(0, 1 << 30, n)) for k in
          ("core", "filler", "like", "exclude", "range", "value", "d1", "d2")],
    ).join(_liked(targets, split, items), on=["user_id", "seq"], how="left").join(
        items.select(pl.col("item_id"), pl.col("genres").alias("target_genres"),
                     pl.col("year").alias("target_year") if "year" in items.columns
                     else pl.lit(None, pl.Int32).alias("target_year")),
        on="item_id", how="left")
    # a value to rule out: a common one the target lacks (the draw's first such in order)
    # a fixed order (not sorted, not hashed): the same draw every run and process
    lacking = pl.lit(pl.Series([common])).list.set_difference("target_genres")
    value = pl.when(lacking.list.len() > 0).then(
        lacking.list.get(pl.col("r_value") % lacking.list.len().clip(lower_bound=1),
                         null_on_oob=True))
    rows = rows.with_columns(value.replace_strict(phrase, default=None).alias("value"))

    def pick(part: str, r: str) -> pl.Expr:
        train, held = phrasings[(part, "train")], phrasings[(part, "heldout")]
        return pl.when(pl.col("phrasing_set") == "train").then(
            pl.lit(pl.Series([train])).list.get(pl.col(r) % len(train))
        ).otherwise(pl.lit(pl.Series([held])).list.get(pl.col(r) % len(held)))

    year = pl.col("target_year")
    d1, d2 = 1 + pl.col("r_d1") % 6, 1 + pl.col("r_d2") % 6
    kind = pl.col("u_kind")
    range_text = (
        pl.when(kind < 0.4).then(pick("before", "r_range").str.replace(
            "{hi}", (year + d1).cast(pl.String), literal=True))
        .when(kind < 0.8).then(pick("after", "r_range").str.replace(
            "{lo}", (year - d1).cast(pl.String), literal=True))
        .otherwise(pick("between", "r_range").str.replace(
            "{lo}", (year - d1).cast(pl.String), literal=True).str.replace(
            "{hi}", (year + d2).cast(pl.String), literal=True)))
    core = pick("core", "r_core").str.replace("{desc}", pl.col("desc"), literal=True)
    core = pl.concat_str(core.str.slice(0, 1).str.to_uppercase(), core.str.slice(1))
    parts = {
        "filler": pl.when(pl.col("u_filler") < P["filler"]).then(pick("filler", "r_filler")),
        "like": pl.when((pl.col("u_like") < P["like"]) & pl.col("liked_title").is_not_null())
        .then(pick("like", "r_like").str.replace("{title}", pl.col("liked_title"),
                                                 literal=True)),
        "exclude": pl.when((pl.col("u_exclude") < P["exclude"]) & pl.col("value").is_not_null())
        .then(pick("exclude", "r_exclude").str.replace("{value}", pl.col("value"),
                                                       literal=True)),
        "range": pl.when((pl.col("u_range") < P["range"]) & year.is_not_null()).then(range_text),
    }
    first = pl.concat_str([parts["filler"], core, parts["like"], parts["exclude"],
                           parts["range"]], separator=" ", ignore_nulls=True)
    second = pl.concat_str([parts["filler"], parts["like"], core, parts["range"],
                            parts["exclude"]], separator=" ", ignore_nulls=True)
    instruction = pl.when(pl.col("u_order") < 0.5).then(first).otherwise(second)
    return rows.select(
        pl.format("{}-{}-{}-{}", "split", pl.lit(TASK), "user_id", "seq").alias("request_id"),
        "user_id", pl.lit(TASK).alias("task"), instruction.alias("instruction"),
        pl.col("item_id").alias("target_item_id"), "timestamp", "phrasing_set", "split",
        "seq", (pl.col("r_core") % len(CONVERSATION["core"])).cast(pl.Int64)
        .alias("template_id"),
    )
