"""`evaluate()`: every model, same split, same requests, same candidates, one run.

For each model, each configuration of its grid is fitted on the training window and scored
on validation requests; the best by validation NDCG@10 (per task) is refitted on train +
validation and scored on test requests. Test figures are never looked at while choosing.
"""

from __future__ import annotations

import json
import time

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from ranking.evaluation.beyond import beyond_accuracy_of, item_table, popularity_table
from ranking.evaluation.config import EvalConfig
from ranking.evaluation.metrics import metrics_of
from ranking.evaluation.rankings import full_ranking, ranking_rows, sampled_ranking
from ranking.evaluation.result import EvalResult
from ranking.evaluation.sink import RankingSink
from ranking.evaluation.tradeoff import (
    DiversityConfig,
    choose,
    pooled,
    reranked,
    screened,
    setting_columns,
    setting_label,
)
from ranking.inputs import RequestBatch
from ranking.prepare import Prepared, prepare, run_dataset, runnable_models
from ranking.scorers.base import Scorer, ScorerConfig, ScorerContext, scorer_class
from recdata.dataset import Dataset
from recdata.logged import load_logged_requests

__all__ = ["Prepared", "evaluate", "prepare", "run_dataset", "runnable_models"]

TUNE_K = 10


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
         progress: bool, keep: int = 0,
         ) -> tuple[dict[str, ScorerConfig], pl.DataFrame, dict[str, pl.DataFrame]]:
    """Best configuration per task by validation NDCG@10, every configuration's figures,
    and (with `keep` > 0) the chosen configuration's validation lists to rank `keep`, per
    task (what the diversity stage re-ranks).

    Configurations that share a fit (same `fit_params`) are fitted together and score each
    chunk of requests side by side, so what they share per chunk (the instruction
    similarities, say) is computed once; only the rows where a target was ranked are kept."""
    cls = scorer_class(name)
    configs = list(cls.configs()) if cfg.tune else [cls.Config()]
    groups: dict[str, list[int]] = {}
    for i, conf in enumerate(configs):
        groups.setdefault(cls.fit_key(conf), []).append(i)
    hits: dict[str, list[pl.DataFrame]] = {t: [] for t in cfg.tasks}
    lists: dict[tuple[str, int], list[pl.DataFrame]] = {}
    bar = tqdm(total=len(configs), desc=f"tune {name}", disable=not progress, leave=False)
    for members in groups.values():
        scorers = {i: cls(configs[i], context).fit(prep.fits["val"]) for i in members}
        for task in cfg.tasks:
            for chunk in prep.batches[("val", task)].chunks():
                for i, scorer in scorers.items():
                    rows = _rank_full(scorer.score(chunk), chunk, prep, max(TUNE_K, keep))
                    if keep:
                        lists.setdefault((task, i), []).append(rows)
                        rows = rows.filter(pl.col("rank") <= TUNE_K)
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
    chosen = {task: pl.concat(lists[(task, configs.index(best[task]))])
              for task in cfg.tasks if (task, configs.index(best[task])) in lists}
    return best, pl.concat(tuning), chosen


def score_test(name: str, best: dict[str, ScorerConfig], cfg: EvalConfig, prep: Prepared,
               context: ScorerContext, sink: RankingSink, keep: int = 0,
               pool_sink: RankingSink | None = None) -> None:
    """Rankings of the test requests (full and sampled) with each task's chosen config,
    written to `sink` a chunk of requests at a time; with `keep` > `top_k`, the full lists
    to rank `keep` go to `pool_sink` too (what the diversity stage re-ranks: its pool may be
    deeper than the lists every model is scored on)."""
    cls = scorer_class(name)
    fitted: dict[str, Scorer] = {}
    item_ids = prep.catalogue.items["item_id"].to_numpy()
    for task, (tuned, cut) in prep.test_tasks.items():
        key = best[tuned].model_dump_json() + cut
        if key not in fitted:
            fitted[key] = cls(best[tuned], context).fit(prep.fits[cut])
        for chunk in prep.batches[("test", task)].chunks():
            scores = fitted[key].score(chunk)
            full = _rank_full(scores, chunk, prep, max(cfg.top_k, keep))
            if pool_sink is not None and keep:
                pool_sink.add(name, full.select(pl.lit(task).alias("task"), pl.all()))
                full = full.filter(pl.col("rank") <= cfg.top_k)
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
    if pool_sink is not None and keep:
        pool_sink.finish(name)


def evaluate(cfg: EvalConfig, *, dataset: Dataset | None = None,
             progress: bool = True) -> EvalResult:
    """Run every model of `cfg` on every task; the result saves itself (see EvalResult).

    Evaluation fits only what its protocol fits (each baseline's grid on validation); the
    KG, the ranker versions and the tuned encoder are read from `train()`'s manifest for the
    same options, and their absence is an error that says to run `instructrank train`."""
    from ranking.train import close_context, needs_training, require_manifest, run_context
    from recdata.stages import RECORDS, records_since, stage

    started = time.perf_counter()
    first_stage = len(RECORDS)
    with stage("load and prepare"):
        ds = run_dataset(cfg, dataset)
        logged = load_logged_requests(cfg.requests_file, ds) if cfg.requests_file else None
        prep = prepare(cfg, ds, logged)
    if prep.held_out_users:
        tqdm.write(f"{prep.held_out_users} users' test requests are not scored: their logged "
                   f"requests ({cfg.train_requests_file}) train the ranker")
    models, skipped = runnable_models(cfg.models, prep.catalogue.n_items)
    for m, why in skipped.items():
        tqdm.write(f"skipping {m}: {why}")
    manifest = require_manifest(cfg, ds) if needs_training(models) else None
    context, _ = run_context(cfg, ds, prep, models, progress=progress, trained=manifest)
    fingerprint = cfg.fingerprint(ds.fingerprint())
    sink = RankingSink(cfg.data_dir / "runs" / fingerprint / "rankings")
    tuning, chosen = [], {}
    diverse = cfg.diversity if cfg.diversity is not None and cfg.diversity.model in models \
        else None
    pool_sink = RankingSink(sink.folder.parent / "pool") if diverse is not None else None
    validation_lists: dict[str, pl.DataFrame] = {}
    try:
        for name in tqdm(models, desc="models", disable=not progress):
            with stage(f"model {name}"):
                keep = diverse.pool if diverse is not None and name == diverse.model else 0
                best, tuned, kept = tune(name, cfg, prep, context, progress, keep)
                validation_lists.update(kept)
                tuning.append(tuned)
                chosen[name] = {t: c.model_dump() for t, c in best.items()}
                score_test(name, best, cfg, prep, context, sink, keep, pool_sink)
        test_requests = prep.requests.filter(pl.col("split") == "test")
        test_requests = test_requests.filter(pl.col("task").is_in(list(prep.test_tasks)))
        with stage("beyond accuracy"):
            items = beyond_items(cfg, prep, context)
            test_pop = pl.concat([popularity_table(
                task, items["item_id"].to_numpy(), prep.fits[cut].popularity())
                for task, (_, cut) in prep.test_tasks.items()])
            metrics = metrics_of(sink.folder, test_requests).join(
                beyond_accuracy_of(sink.folder, items, test_pop, prep.catalogue.n_items),
                on=["model", "task"], how="left")
        tradeoff_table, diversity_chosen = None, {}
        if diverse is not None and validation_lists:
            with stage(f"diversity ({diverse.model} + MMR)"):
                assert pool_sink is not None
                tradeoff_table, diversity_chosen, mmr_metrics = diversity_tradeoff(
                    diverse, prep, items, test_pop, validation_lists, pool_sink,
                    test_requests)
                metrics = pl.concat([metrics, mmr_metrics], how="diagonal_relaxed")
                chosen[f"{diverse.model}_mmr"] = diversity_chosen
        recall = candidate_recall(cfg, prep, context) if context.ltr is not None else None
    finally:
        close_context(context)
    return EvalResult(
        config=cfg, dataset_summary=ds.summary(), fingerprint=fingerprint,
        requests=prep.requests, items=ds.items, rankings=sink.scan(), metrics=metrics,
        tuning=pl.concat(tuning), chosen=chosen, seconds=time.perf_counter() - started,
        candidate_recall=recall, skipped=skipped, stages=records_since(first_stage),
        trained=None if manifest is None else str(manifest.path), ids=ds.ids,
        tradeoff=tradeoff_table, diversity_chosen=diversity_chosen,
    )


def beyond_items(cfg: EvalConfig, prep: Prepared, context: ScorerContext) -> pl.DataFrame:
    """The catalogue's unit text vectors (the run's encoder, from its cache) and attribute
    sets, for the beyond-accuracy metrics and MMR."""
    encoder = context.encoder
    if encoder is None:
        from encoders.text import TextEncoder

        encoder = TextEncoder(cfg.encoder_path, cache_dir=cfg.data_dir / "cache",
                              show_progress=False)
    items = prep.catalogue.items
    vectors = encoder.encode(prep.catalogue.text.to_list(), desc="item vectors")
    attributes = items["genres"].to_list() if "genres" in items.columns else \
        [None] * items.height
    return item_table(items["item_id"].to_numpy(), vectors, attributes)


def diversity_tradeoff(cfg: DiversityConfig, prep: Prepared, items: pl.DataFrame,
                       test_pop: pl.DataFrame, validation: dict[str, pl.DataFrame],
                       pool_sink: RankingSink, test_requests: pl.DataFrame,
                       ) -> tuple[pl.DataFrame, dict[str, dict[str, float]], pl.DataFrame]:
    """The ranker's validation and test lists (to rank `pool`; the test ones from
    `pool_sink`) re-ranked by MMR: (the trade-off table, per task the setting chosen on
    validation and its ILD floor, the full-ranking metrics of `<ranker>_mmr`: the chosen
    setting's test lists).

    Validation screens the whole grid (temperature x head share x lambda) for NDCG@10 and
    ILD@10 in numpy (tradeoff.screened; a test holds it equal to the metrics queries) and
    the setting is chosen there; on test, each task's lambda line at its chosen temperature
    and head share is scored by the metrics queries, every metric, as every model is."""
    unit = np.stack(items["vec"].to_numpy())
    ids = items["item_id"].to_numpy()
    val_requests = prep.requests.filter(pl.col("split") == "val")
    target_of = dict(zip(val_requests["request_id"].to_list(),
                         val_requests["target_item_id"].to_list(), strict=True))
    screen = []
    for task, rows in validation.items():
        req, its, sc = pooled(rows, cfg.pool)
        screen.append(screened(its, sc, np.array([target_of[r] for r in req]), ids, unit,
                               cfg.settings(), TUNE_K).select(
            pl.lit("val").alias("split"), pl.lit(task).alias("task"), pl.all()))
    val = pl.concat(screen)
    picked = choose(val, cfg)
    for task, (tuned, _) in prep.test_tasks.items():  # a task tuned on another (logged)
        if task not in picked and tuned in picked:
            picked[task] = picked[tuned]

    test_rows = pool_sink.scan().filter(pl.col("rank") <= cfg.pool).collect()
    ranked = []
    for task, rows in test_rows.partition_by("task", as_dict=True, include_key=False).items():
        pick = picked.get(task[0])
        if pick is None:
            continue
        line = [(pick["temperature"], pick["head_share"], lam) for lam in cfg.lambdas]
        for setting, frame in reranked(*pooled(rows, cfg.pool), ids, unit, line,
                                       TUNE_K).items():
            ranked.append(frame.with_columns(pl.lit(setting_label(setting)).alias("model"),
                                             pl.lit(task[0]).alias("task"),
                                             pl.lit("full").alias("protocol")))
    # every lambda and task in one pass of each metrics query
    everything = pl.concat(ranked)
    figures = metrics_of(everything, test_requests).join(
        beyond_accuracy_of(everything, items, test_pop, prep.catalogue.n_items),
        on=["model", "task"]).drop("sampled_hr@10", "sampled_ndcg@10")
    test = figures.select(pl.lit("test").alias("split"), "task",
                          *setting_columns(pl.col("model")), pl.exclude("model", "task",
                                                                        "requests"))
    # `<ranker>_mmr`: each task's chosen point of its line, already scored above
    label = pl.col("task").replace_strict(
        list(picked), [setting_label((p["temperature"], p["head_share"], p["lambda"]))
                       for p in picked.values()], default=None)
    mmr = figures.filter(pl.col("model") == label).with_columns(
        pl.lit(f"{cfg.model}_mmr").alias("model"))
    tradeoff = pl.concat([val, test], how="diagonal_relaxed").with_columns(
        pl.col("lambda").round(4))
    return tradeoff, picked, mmr


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


