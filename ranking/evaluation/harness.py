"""`evaluate()`: every model, same split, same requests, same candidates, one run.

For each model, each configuration of its grid is fitted on the training window and scored
on validation requests; the best by validation NDCG@10 (per task) is refitted on train +
validation and scored on test requests. Test figures are never looked at while choosing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import scipy.sparse as sp
from tqdm.auto import tqdm

from ranking.evaluation.config import EvalConfig
from ranking.evaluation.metrics import metrics_of
from ranking.evaluation.rankings import (
    full_ranking,
    ranking_rows,
    sample_negatives,
    sampled_ranking,
    tie_permutation,
)
from ranking.evaluation.result import EvalResult
from ranking.evaluation.sink import RankingSink
from ranking.inputs import (
    Catalogue,
    FitData,
    RequestBatch,
    fit_data,
    request_batch,
    split_interactions,
)
from ranking.scorers.base import Scorer, ScorerConfig, ScorerContext, scorer_class
from recdata.dataset import Dataset
from recdata.datasets import load_dataset
from recdata.instructions import generate_requests
from recdata.logged import LOGGED_TASK, load_logged_requests

if TYPE_CHECKING:
    from kg.train import KGResult
    from ranking.ltr.training import LTRResources

TUNE_K = 10


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


def prepare(cfg: EvalConfig, ds: Dataset, logged: pl.DataFrame | None = None) -> Prepared:
    """Requests, fits and batches of a run. `logged` (see recdata.logged) adds test requests
    of task `logged`, scored with the configuration tuned for `intent` by models fitted on
    everything before the earliest logged request."""
    requests = generate_requests(ds, cfg.instructions)
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
        requests = pl.concat([requests, logged.select(requests.columns)], how="vertical_relaxed")
        start = logged["timestamp"].min()
        fits["logged"] = FitData("logged", split.filter(pl.col("timestamp") < start), catalogue)
        batches[("test", LOGGED_TASK)] = request_batch(logged, split, catalogue)
        tuned = "intent" if "intent" in cfg.tasks else cfg.tasks[0]
        test_tasks[LOGGED_TASK] = (tuned, "logged")
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
                    tie_permutation(catalogue.n_items, cfg.seed), test_tasks)


def _rank_full(scores: np.ndarray, batch: RequestBatch, prep: Prepared,
               k: int) -> pl.DataFrame:
    top, top_scores = full_ranking(scores, batch.history,
                                   batch.requests["target_idx"].to_numpy(), prep.tiebreak, k)
    return ranking_rows(batch.requests["request_id"], top, top_scores,
                        prep.catalogue.items["item_id"].to_numpy())


def _hits(rows: pl.DataFrame, batch: RequestBatch, model: str) -> pl.DataFrame:
    """The rows of a ranking where the target sits, plus one row that can never be a hit
    (so a configuration without hits still gets its zeros): all the metrics SQL needs."""
    targets = batch.requests.select("request_id", pl.col("target_item_id").alias("item_id"))
    hit = rows.join(targets, on=["request_id", "item_id"], how="semi")
    never = pl.DataFrame({"request_id": batch.requests["request_id"].head(1),
                          "rank": pl.Series([10**6], dtype=pl.Int32),
                          "item_id": pl.Series([-1], dtype=rows.schema["item_id"]),
                          "score": [0.0]}).head(len(batch) and 1)
    return pl.concat([hit, never]).with_columns(pl.lit(model).alias("model"))


def tune(name: str, cfg: EvalConfig, prep: Prepared, context: ScorerContext,
         progress: bool) -> tuple[dict[str, ScorerConfig], pl.DataFrame]:
    """Best configuration per task by validation NDCG@10, and every configuration's figures.

    Configurations that share a fit (same `fit_params`) are fitted together and score each
    chunk of requests side by side, so what they share per chunk (the instruction
    similarities, say) is computed once; only the rows where a target was ranked are kept."""
    cls = scorer_class(name)
    configs = list(cls.configs()) if cfg.tune else [cls.Config()]
    groups: dict[str, list[int]] = {}
    for i, conf in enumerate(configs):
        groups.setdefault(cls.fit_key(conf), []).append(i)
    hits: dict[str, list[pl.DataFrame]] = {t: [] for t in cfg.tasks}
    bar = tqdm(total=len(configs), desc=f"tune {name}", disable=not progress, leave=False)
    for members in groups.values():
        scorers = {i: cls(configs[i], context).fit(prep.fits["val"]) for i in members}
        for task in cfg.tasks:
            for chunk in prep.batches[("val", task)].chunks():
                for i, scorer in scorers.items():
                    rows = _rank_full(scorer.score(chunk), chunk, prep, TUNE_K)
                    hits[task].append(_hits(rows, chunk, str(i)))
                context.forget(chunk)
        bar.update(len(members))
        del scorers
    bar.close()
    best: dict[str, ScorerConfig] = {}
    tuning = []
    for task in cfg.tasks:
        val_requests = prep.batches[("val", task)].requests
        frame = pl.concat(hits[task]).with_columns(pl.lit(task).alias("task"),
                                                   pl.lit("full").alias("protocol"))
        m = metrics_of(frame, val_requests).with_columns(
            pl.col("model").cast(pl.Int64).alias("config_index"))
        m = m.sort("config_index")
        best_index = int(m.sort(["ndcg@10", "config_index"], descending=[True, False])
                         ["config_index"][0])
        best[task] = configs[best_index]
        tuning.append(m.select(
            pl.lit(name).alias("model"), pl.lit(task).alias("task"),
            pl.Series("params", [json.dumps(configs[j].model_dump()) for j in
                                 m["config_index"]]),
            pl.col("ndcg@10").alias("val_ndcg@10"), pl.col("hr@10").alias("val_hr@10"),
            (pl.col("config_index") == best_index).alias("chosen"),
        ))
    return best, pl.concat(tuning)


def score_test(name: str, best: dict[str, ScorerConfig], cfg: EvalConfig, prep: Prepared,
               context: ScorerContext, sink: RankingSink) -> None:
    """Rankings of the test requests (full and sampled) with each task's chosen config,
    written to `sink` a chunk of requests at a time."""
    cls = scorer_class(name)
    fitted: dict[str, Scorer] = {}
    item_ids = prep.catalogue.items["item_id"].to_numpy()
    for task, (tuned, cut) in prep.test_tasks.items():
        key = best[tuned].model_dump_json() + cut
        if key not in fitted:
            fitted[key] = cls(best[tuned], context).fit(prep.fits[cut])
        for chunk in prep.batches[("test", task)].chunks():
            scores = fitted[key].score(chunk)
            full = _rank_full(scores, chunk, prep, cfg.top_k)
            targets = chunk.requests["target_idx"].to_numpy()[:, None]
            negatives = prep.negatives[task][chunk.offset:chunk.offset + len(chunk)]
            candidates = np.concatenate([targets, negatives], axis=1)
            top, top_scores = sampled_ranking(scores, candidates, prep.tiebreak, cfg.top_k)
            sampled = ranking_rows(chunk.requests["request_id"], top, top_scores, item_ids)
            for protocol, rows in (("full", full), ("sampled", sampled)):
                sink.add(name, rows.select(
                    pl.lit(name).alias("model"), pl.lit(task).alias("task"),
                    pl.lit(protocol).alias("protocol"), pl.all()))
            context.forget(chunk)
    sink.finish(name)


def run_dataset(cfg: EvalConfig, dataset: Dataset | None = None) -> Dataset:
    """The dataset a run evaluates: `dataset` or the one `cfg` names, user-sampled as
    configured."""
    ds = dataset or load_dataset(cfg.dataset, cfg.data_dir, interactions=cfg.interactions,
                                 items=cfg.items, text_columns=tuple(cfg.text_columns))
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


def evaluate(cfg: EvalConfig, *, dataset: Dataset | None = None,
             progress: bool = True) -> EvalResult:
    """Run every model of `cfg` on every task; the result saves itself (see EvalResult)."""
    from recdata.stages import RECORDS, records_since, stage

    started = time.perf_counter()
    first_stage = len(RECORDS)
    with stage("load and prepare"):
        ds = run_dataset(cfg, dataset)
        logged = load_logged_requests(cfg.requests_file, ds) if cfg.requests_file else None
        prep = prepare(cfg, ds, logged)
    models, skipped = runnable_models(cfg.models, prep.catalogue.n_items)
    for m, why in skipped.items():
        tqdm.write(f"skipping {m}: {why}")
    encoder = None
    if any(scorer_class(m).uses_instruction for m in models):
        from encoders.text import TextEncoder

        encoder = TextEncoder(cfg.encoder_path, cache_dir=cfg.data_dir / "cache",
                              show_progress=progress)
    context = ScorerContext(encoder=encoder, artifacts=cfg.data_dir / "indexes")
    classes = [scorer_class(m) for m in models]
    if any(c.uses_kg for c in classes):
        with stage("kg (hold-out)"):
            kg = ltr_kg(cfg, ds, progress)
        context.kg = kg.embeddings
    if any(c.uses_feature_store and not c.uses_tuned_encoder for c in classes):
        context.ltr = ltr_resources(cfg, ds, prep, context, progress)
        context.ltr.kg_key = kg.key
    if any(c.uses_tuned_encoder for c in classes):
        with stage("encoder tuning"):
            context.tuned = tuned_context(cfg, ds, prep, context, progress,
                                          ltr=any(c.uses_tuned_encoder and c.uses_feature_store
                                                  for c in classes))
        if context.tuned.ltr is not None:
            context.tuned.ltr.kg_key = kg.key
    fingerprint = cfg.fingerprint(ds.fingerprint())
    sink = RankingSink(cfg.data_dir / "runs" / fingerprint / "rankings")
    tuning, chosen = [], {}
    try:
        for name in tqdm(models, desc="models", disable=not progress):
            with stage(f"model {name}"):
                best, tuned = tune(name, cfg, prep, context, progress)
                tuning.append(tuned)
                chosen[name] = {t: c.model_dump() for t, c in best.items()}
                score_test(name, best, cfg, prep, context, sink)
        test_requests = prep.requests.filter(pl.col("split") == "test")
        test_requests = test_requests.filter(pl.col("task").is_in(list(prep.test_tasks)))
        metrics = metrics_of(sink.folder, test_requests)
        recall = candidate_recall(cfg, prep, context) if context.ltr is not None else None
    finally:
        for ctx in (context, context.tuned):
            if ctx is not None and ctx.ltr is not None:
                ctx.ltr.close()
    return EvalResult(
        config=cfg, dataset_summary=ds.summary(), fingerprint=fingerprint,
        requests=prep.requests, items=ds.items, rankings=sink.scan(), metrics=metrics,
        tuning=pl.concat(tuning), chosen=chosen, seconds=time.perf_counter() - started,
        candidate_recall=recall, skipped=skipped, stages=records_since(first_stage),
    )


def ltr_kg(cfg: EvalConfig, ds: Dataset, progress: bool) -> KGResult:
    """The KG every KG feature of the run reads: trained without each user's last training
    positions, where the ranker's training requests sit, so no KG feature has seen a target
    (the served KG of `instructrank kg train` is newer; see kg/triples.py)."""
    from kg.train import train_kg
    from kg.triples import build_triples

    triples = build_triples(ds, hold_out_last=cfg.instructions.train_requests_per_user,
                            max_edges=cfg.kg.max_triples, seed=cfg.kg.seed)
    return train_kg(triples, cfg.kg, cfg.data_dir / "kg", progress=progress)


def ltr_resources(cfg: EvalConfig, ds: Dataset, prep: Prepared, context: ScorerContext,
                  progress: bool) -> LTRResources:
    import json as _json

    from featurestore import store as fs
    from ranking.ltr.training import LTRResources
    from recdata.errors import FeatureStoreError
    from recdata.split import training_targets_removed

    repo = fs.FeatureRepo(cfg.feature_repo or fs.PACKAGE_REPO)
    meta = repo.sources / "meta.json"
    built = _json.loads(meta.read_text()) if meta.exists() else None
    if built is None or built.get("data_fingerprint") != ds.fingerprint():
        raise FeatureStoreError(
            f"the feature repo {repo.path} holds no features for this dataset "
            f"({'none built' if built is None else 'built for ' + str(built.get('dataset'))}"
            f"); run `instructrank features build` with the same dataset options first")
    held = training_targets_removed(prep.split, cfg.instructions.train_requests_per_user)
    train_requests = prep.requests.filter(pl.col("split") == "train")
    if cfg.ltr.max_train_requests and train_requests.height > cfg.ltr.max_train_requests:
        # sampled before their histories are built: those are the size of the log
        rows = np.random.default_rng(cfg.ltr.seed).choice(
            train_requests.height, cfg.ltr.max_train_requests, replace=False)
        train_requests = train_requests[np.sort(rows).tolist()]
    return LTRResources(
        cfg=cfg.ltr, context=context, catalogue=prep.catalogue, repo=repo,
        store=repo.store(), ltr_fit=FitData("ltr", held, prep.catalogue),
        val_fit=prep.fits["val"], serving_fit=FitData("serving", prep.split, prep.catalogue),
        train_batch=request_batch(train_requests, prep.split, prep.catalogue),
        val_batches=[prep.batches[("val", t)] for t in cfg.tasks],
        data_fingerprint=cfg.fingerprint(ds.fingerprint()),
        models_dir=cfg.data_dir / "models", progress=progress)


def candidate_recall(cfg: EvalConfig, prep: Prepared, context: ScorerContext) -> pl.DataFrame:
    """Share of test targets among the ranker's candidates, per task: its ceiling."""
    rows = []
    for task, (_, cut) in prep.test_tasks.items():
        batch = prep.batches[("test", task)]
        hit, n = [], 0
        for ex in context.ltr.iter_examples(prep.fits[cut], batch):
            hit.append(ex.labels.any(axis=1))
            n = ex.cands.idx.shape[1]
        rows.append({"task": task, "candidates": n,
                     "recall": float(np.concatenate(hit).mean()) if hit else 0.0,
                     "requests": len(batch)})
    return pl.DataFrame(rows)


def encoder_examples(cfg: EvalConfig, prep: Prepared, context: ScorerContext) -> pl.DataFrame:
    """(query, positive, negatives) rows for instruction tuning, from the training requests
    only: the query is the instruction with the titles of the user's recent items, the
    positive the target's text, the hard negative one of the best-ranked other candidates
    (merged sources, fitted without the training targets) drawn with the run's seed."""
    from ranking.candidates import CandidateGenerator
    from ranking.queries import query_texts
    from recdata.split import training_targets_removed

    if context.ltr is not None:  # the ranker's candidates, on the same cut: reuse them
        ts = context.ltr.training_set()
        batch, idx, valid = ts.train_batch, ts.train_idx, ts.train_valid
    else:
        held = training_targets_removed(prep.split, cfg.instructions.train_requests_per_user)
        batch = request_batch(prep.requests.filter(pl.col("split") == "train"), prep.split,
                              prep.catalogue)
        generator = CandidateGenerator(cfg.ltr.candidates, ScorerContext(
            encoder=context.require_encoder(), kg=context.kg)).fit(
                FitData("encoder_tuning", held, prep.catalogue))
        idx, valid = [], []
        for chunk in batch.chunks():  # only the indices are kept, and nothing per chunk
            cands = generator.generate(chunk)
            idx.append(cands.idx)
            valid.append(cands.valid)
            generator.context.forget(chunk)
        idx, valid = np.concatenate(idx), np.concatenate(valid)
    targets = batch.requests["target_idx"].to_numpy()
    top = idx[:, :HARD_NEGATIVE_POOL + 1]
    noise = np.random.default_rng(cfg.seed).random(top.shape)
    noise[(top == targets[:, None]) | ~valid[:, :top.shape[1]]] = np.inf
    negative = top[np.arange(len(top)), noise.argmin(axis=1)]
    text = prep.catalogue.text.to_numpy()
    titles = prep.catalogue.items["title"].to_numpy()
    return pl.DataFrame({
        "query": query_texts(batch, titles),
        "positive": text[targets],
        "negatives": [[t] for t in text[negative]],
        "task": batch.requests["task"],
    })


HARD_NEGATIVE_POOL = 10  # the hard negative is drawn from the top this many other candidates


def tuned_context(cfg: EvalConfig, ds: Dataset, prep: Prepared, context: ScorerContext,
                  progress: bool, ltr: bool) -> ScorerContext:
    """The run's resources again with the encoder instruction-tuned on its training requests:
    the tuned model directory is cached by a hash of its inputs, and (for `ltr_tuned`) a
    feature repo of its own is built from it by the usual feature build, so the ranker's
    Feast embedding features come from the same encoder as its request-time ones."""
    import shutil

    from encoders.text import TextEncoder, default_model_path
    from encoders.tuning import tune_encoder
    from featurestore import store as fs
    from featurestore.build import FeatureBuildConfig, build_features

    examples = encoder_examples(cfg, prep, context)
    tuned = tune_encoder(cfg.encoder_tuning, examples, cfg.encoder_path or default_model_path(),
                         cfg.data_dir / "encoders", progress=progress)
    del examples  # the training pairs: not needed by the feature build that follows
    encoder = TextEncoder(tuned.path, cache_dir=cfg.data_dir / "cache", show_progress=progress)
    out = ScorerContext(encoder=encoder, kg=context.kg, artifacts=context.artifacts,
                        query_titles=prep.catalogue.items["title"].to_numpy())
    if ltr:
        repo = (cfg.data_dir / "repos" / f"tuned-{tuned.key}").resolve()  # Feast: absolute
        repo.mkdir(parents=True, exist_ok=True)
        source = fs.FeatureRepo(cfg.feature_repo or fs.PACKAGE_REPO).path
        for name in ("feature_store.yaml", "feature_store.redis.yaml"):
            if (source / name).exists():
                shutil.copy(source / name, repo / name)
        build_features(FeatureBuildConfig(dataset=cfg.dataset, repo=repo,
                                          data_dir=cfg.data_dir, encoder_path=tuned.path,
                                          instructions=cfg.instructions),
                       dataset=ds, progress=progress)
        out.ltr = ltr_resources(cfg.model_copy(update={"feature_repo": repo}), ds, prep, out,
                                progress)
    return out
