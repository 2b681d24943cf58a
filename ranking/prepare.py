"""The inputs every stage of a run shares: the dataset, its generated requests, the split,
the fits of each cut and the request batches, built once from the same config and seed so
that `train()` and `evaluate()` see exactly the same requests."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

from ranking.evaluation.config import EvalConfig
from ranking.evaluation.rankings import sample_negatives, tie_permutation
from ranking.inputs import (
    Catalogue,
    FitData,
    RequestBatch,
    fit_data,
    request_batch,
    split_interactions,
)
from ranking.scorers.base import scorer_class
from recdata.dataset import Dataset
from recdata.errors import ConfigError
from recdata.instructions import generate_requests
from recdata.logged import LOGGED_TASK, load_logged_requests


@dataclass
class Prepared:
    """Everything shared by all models of a run, built once."""

    dataset: Dataset
    catalogue: Catalogue
    requests: pl.DataFrame
    split: pl.DataFrame
    fits: dict[str, FitData]
    batches: dict[tuple[str, str], RequestBatch]
    negatives: dict[str, np.ndarray]  # task -> test requests x n_negatives
    tiebreak: np.ndarray
    # test task -> (task whose tuned config scores it, cut its models are fitted on)
    test_tasks: dict[str, tuple[str, str]]
    # logged requests the ranker learns from, each group with the fit of its cut
    train_logged: list[tuple[FitData, RequestBatch]] = field(default_factory=list)
    held_out_users: int = 0  # users whose test requests left evaluation (train_logged's)


def prepare(cfg: EvalConfig, ds: Dataset, logged: pl.DataFrame | None = None,
            train_logged: pl.DataFrame | None = None) -> Prepared:
    """Requests, fits and batches of a run. `logged` (see recdata.logged) adds test requests
    scored with the configuration tuned for `intent`, each by the models of the cut the
    protocol gives its position (see `_logged_groups`). `train_logged` are logged requests
    the ranker learns from, placed the same way; their users' test requests (generated and
    logged) are not evaluated: under leave-one-out their targets are the same items."""
    if train_logged is None and cfg.train_requests_file is not None:
        train_logged = load_logged_requests(cfg.train_requests_file, ds)
    requests = generate_requests(ds, cfg.instructions)
    learners: list[int] = []  # known users whose logged requests train the ranker
    if train_logged is not None:
        learners = train_logged.filter(pl.col("user_id") >= 0)["user_id"].unique().to_list()
        learner = pl.col("user_id").is_in(learners)
        requests = requests.filter((pl.col("split") != "test") | ~learner)
        if logged is not None:
            scored = logged.filter(~learner)
            if scored.height == 0:
                raise ConfigError(
                    f"every logged request to score ({cfg.requests_file}) comes from a user "
                    f"the ranker learns from ({cfg.train_requests_file}): their targets would "
                    "be training labels; score requests of other users")
            logged = scored
    if cfg.eval_users is not None:
        users = requests.select(pl.col("user_id").unique().sort()).sample(
            n=min(cfg.eval_users, requests["user_id"].n_unique()), seed=cfg.seed)
        requests = requests.filter((pl.col("split") == "train")
                                   | pl.col("user_id").is_in(users["user_id"].implode()))
    catalogue = Catalogue.from_dataset(ds)
    split = split_interactions(ds, catalogue)
    fits = {cut: fit_data(split, catalogue, cut) for cut in ("val", "test")}
    batches = {
        (cut, task): request_batch(
            requests.filter((pl.col("split") == cut) & (pl.col("task") == task)),
            split, catalogue)
        for cut in ("val", "test") for task in cfg.tasks
    }
    test_tasks = {t: (t, "test") for t in cfg.tasks}
    if logged is not None:
        tuned = "intent" if "intent" in cfg.tasks else cfg.tasks[0]
        for task, cut, part in _logged_groups(logged, split):
            requests = pl.concat([requests, part.select(requests.columns)],
                                 how="vertical_relaxed")
            if cut == "early":
                cut = task
                fits[task] = FitData(task, split.filter(
                    pl.col("timestamp") < part["timestamp"].min()), catalogue)
            batches[("test", task)] = request_batch(part, split, catalogue)
            test_tasks[task] = (tuned, cut)
    learned = []
    if train_logged is not None:
        for _, cut, part in _logged_groups(train_logged, split):
            part = part.with_columns(pl.concat_str(pl.lit("learn-"), "request_id")
                                     .alias("request_id"))
            fit = fits.get(cut) or FitData("train_logged", split.filter(
                pl.col("timestamp") < part["timestamp"].min()), catalogue)
            learned.append((fit, request_batch(part, split, catalogue)))
    negatives = {}
    for task in test_tasks:
        batch = batches[("test", task)]
        ever = batch.requests.select("user_id").with_row_index("row").join(
            split.select("user_id", "item_idx"), on="user_id")
        seen = sp.csr_matrix(
            (np.ones(ever.height), (ever["row"].to_numpy(), ever["item_idx"].to_numpy())),
            shape=(len(batch), catalogue.n_items))
        negatives[task] = sample_negatives(
            seen, batch.requests["target_idx"].to_numpy(), cfg.sampled_negatives, cfg.seed)
    return Prepared(ds, catalogue, requests, split, fits, batches, negatives,
                    tie_permutation(catalogue.n_items, cfg.seed), test_tasks, learned,
                    len(learners))


def run_dataset(cfg: EvalConfig, dataset: Dataset | None = None) -> Dataset:
    """The dataset a run evaluates: `dataset` or the one `cfg` names, user-sampled as
    configured."""
    ds = dataset or cfg.load_dataset(text_columns=tuple(cfg.text_columns))
    return ds.sample_users(cfg.sample_users, cfg.seed) if cfg.sample_users else ds


def runnable_models(models: list[str], n_items: int) -> tuple[list[str], dict[str, str]]:
    """The models that can be fitted on a catalogue of `n_items`, and why the others
    cannot (EASE's dense inverse has a size limit; see ranking.scorers.history)."""
    keep, skipped = [], {}
    for m in models:
        limit = scorer_class(m).max_items
        if limit is not None and n_items > limit:
            skipped[m] = (f"{n_items:,} items exceed its limit of {limit:,} (a dense "
                          "items x items matrix); als_lastn and itemknn_lastn scale")
        else:
            keep.append(m)
    return keep, skipped


def _logged_groups(logged: pl.DataFrame, split: pl.DataFrame
                   ) -> list[tuple[str, str, pl.DataFrame]]:
    """Logged requests grouped by where they sit in their user's history, as (task, cut,
    rows): at the test position (all but the user's last interaction before it, or later)
    the test-cut models score them, as they score generated test requests; at the
    validation position the val-cut models; earlier (or from a user the data does not
    know), models fitted on everything before the group's earliest request. The test group
    is task `logged`; the others `logged_val` and `logged_early` (a file of one kind is all
    `logged`)."""
    counts = split.group_by("user_id").agg(pl.len().alias("_n"))
    placed = logged.join(counts, on="user_id", how="left").with_columns(
        pl.when(pl.col("_n").is_null()).then(pl.lit("early"))
        .when(pl.col("seq") >= pl.col("_n") - 1).then(pl.lit("test"))
        .when(pl.col("seq") == pl.col("_n") - 2).then(pl.lit("val"))
        .otherwise(pl.lit("early")).alias("_cut"))
    cuts = [c for c in ("test", "val", "early") if (placed["_cut"] == c).any()]
    out = []
    for cut in cuts:
        task = LOGGED_TASK if len(cuts) == 1 or cut == "test" else f"{LOGGED_TASK}_{cut}"
        part = placed.filter(pl.col("_cut") == cut).drop("_n", "_cut").with_columns(
            pl.lit(task).alias("task"))
        out.append((task, cut, part))
    return out
