"""Scale benchmark: the whole pipeline on synthetic data of 10^5, 10^6 and 10^7 interactions.

Each size runs in a process of its own (so its peak memory is its own) and times every
stage with its peak resident memory: synthetic data, feature jobs, materialization into
SQLite and into Redis, KG training, candidate sources and ranker training, evaluation on a
sample of users, service start-up, and request latency. Users and items grow with the log:
N interactions = N/100 users x 100 interactions over min(N/100, 10^5) items.

    .venv/bin/python bench/scale.py                       # all sizes -> bench/results/scale.csv
    .venv/bin/python bench/scale.py --sizes 1e5,1e6       # some of them
    .venv/bin/python bench/scale.py --plot-only           # redraw scale.png from scale.csv

Needs redis-server on PATH for the Redis rows (`make redis`); without it they are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from latency import redis_server  # bench/ is this script's folder: its private redis-server

from recdata.dataset import Dataset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PER_USER = 100
MAX_ITEMS = 100_000
EVAL_USERS = 1_000
LATENCY_REQUESTS = 300
RANKER = "ltr_no_text"  # scale runs build no 384-d views (see bench/README.md)
MODELS = ["popularity", "transition", "itemknn_lastn", "als_lastn", "filter_popularity",
          "embedding", "kg", RANKER]
INSTRUCTIONS = ["something new", "a funny comedy", "a scary horror story from the 90s",
                "an acclaimed drama", "popular action", "a little-known romance",
                "recommend me something for tonight", "a documentary", "sci-fi please",
                "an animation from the 2000s"]


def shape(interactions: int) -> tuple[int, int]:
    users = max(interactions // PER_USER, 10)
    return users, min(MAX_ITEMS, users)


def _synthetic(users: int, items: int) -> Dataset:
    from recdata.synthetic import make_synthetic, synthetic_schema

    folder = ROOT / "data" / "bench-synthetic" / f"{users}x{items}x{PER_USER}"
    if not (folder / "items.parquet").exists():
        ds = make_synthetic(n_users=users, n_items=items, interactions_per_user=PER_USER,
                            seed=0)
        folder.mkdir(parents=True, exist_ok=True)
        ds.interactions.write_parquet(folder / "interactions.parquet")
        ds.items.write_parquet(folder / "items.parquet")
        return ds
    return Dataset(f"synthetic-{users}x{items}", pl.read_parquet(folder / "interactions.parquet"),
                   pl.read_parquet(folder / "items.parquet"), None, ("title",),
                   synthetic_schema(f"synthetic-{users}x{items}"))


def run_size(interactions: int, work: Path) -> list[dict]:
    """Every stage of the pipeline at one size; returns the stage records (and latency)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from featurestore.build import FeatureBuildConfig, build_features
    from featurestore.store import PACKAGE_REPO
    from kg.train import KGConfig, train_kg
    from kg.triples import build_triples
    from ranking.evaluation.config import EvalConfig
    from ranking.evaluation.harness import evaluate
    from ranking.recommend import Recommender, RecommenderConfig
    from ranking.train import train
    from recdata.stages import RECORDS, stage

    users, items = shape(interactions)
    data, repo = work / "data", work / "repo"
    repo.mkdir(parents=True)
    for name in ("feature_store.yaml", "feature_store.redis.yaml"):
        shutil.copy(PACKAGE_REPO / name, repo / name)
    with stage("synthetic data"):  # generated once per size, then read back
        ds = _synthetic(users, items)
    build = FeatureBuildConfig(dataset="synthetic", repo=repo, data_dir=data, embeddings=False)
    built = build_features(build, dataset=ds, progress=False)  # stages: jobs, materialize
    online_rows = sum(n for view, n in built.rows.items() if view != "instruction_embedding")
    with redis_server() as url:  # None where redis-server is not installed: no Redis rows
        if url is not None:
            build_features(build.model_copy(update={"online": "redis", "redis_url": url}),
                           dataset=ds, progress=False)
    with stage("kg (served graph)"):
        kg = KGConfig()
        train_kg(build_triples(ds, max_edges=kg.max_triples, seed=kg.seed), kg, data / "kg",
                 progress=False)
    cfg = EvalConfig(dataset="synthetic", models=MODELS, tune=False, eval_users=EVAL_USERS,
                     feature_repo=repo, data_dir=data, results_dir=work / "results")
    with stage("train (hold-out KG, ranker)"):
        train(cfg, dataset=ds, progress=False)
    with stage("evaluate (fits, ranker, user sample)"):
        result = evaluate(cfg, dataset=ds, progress=False)
    quality = result.metrics.select("model", "task", "ndcg@10").to_dicts()
    del result
    model = next((data / "models").glob(f"{RANKER}-*"))
    with stage("service load"):
        rec = Recommender.load(RecommenderConfig(model=model, repo=repo, data_dir=data,
                                                 torch_threads=1))
    rng = np.random.default_rng(0)
    known = rng.integers(1, users + 1, LATENCY_REQUESTS)
    times = []
    with stage("request latency"):
        for i, user in enumerate(known):
            instruction = f"{INSTRUCTIONS[i % len(INSTRUCTIONS)]} #{i}"  # distinct: encoded
            started = time.perf_counter()
            rec.recommend(int(user) if i % 10 else None, instruction, 10)
            times.append((time.perf_counter() - started) * 1000)
    rows = [{"interactions": interactions, "users": users, "items": items, **vars(r),
             "source_rows": online_rows if r.stage.startswith("materialize") else None}
            for r in RECORDS]
    rows.append({"interactions": interactions, "users": users, "items": items,
                 "stage": "request p50/p99 ms", "seconds": None, "peak_rss_gb": None,
                 "p50_ms": round(float(np.percentile(times, 50)), 2),
                 "p99_ms": round(float(np.percentile(times, 99)), 2)})
    rows.append({"interactions": interactions, "users": users, "items": items,
                 "stage": "quality", "quality": quality})
    return rows


# the stages a data scientist's pipeline runs, in order (SQLite as the online store; Redis is
# measured beside it, and the synthetic data is the benchmark's, not the pipeline's)
PIPELINE = ["feature jobs", "materialize (sqlite)", "kg (served graph)",
            "evaluate (fits, ranker, user sample)", "service load"]
PLOTTED = ["feature jobs", "materialize (sqlite)", "materialize (redis)", "kg (served graph)",
           "kg (hold-out)", "model embedding", "ltr training examples",
           "evaluate (fits, ranker, user sample)", "service load", "pipeline (SQLite)",
           # a run stopped part-way leaves lower bounds under these names
           "ltr training examples (stopped unfinished)", "pipeline (SQLite) so far, unfinished"]


def plot(csv: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = pl.read_csv(csv).filter(pl.col("seconds").is_not_null()
                                   & pl.col("stage").is_in(PLOTTED))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for stage_name, part in data.group_by("stage", maintain_order=True):
        part = part.sort("interactions")
        for ax, col in zip(axes, ("seconds", "peak_rss_gb"), strict=True):
            ax.plot(part["interactions"], part[col], marker="o", label=stage_name[0])
    sizes = sorted(data["interactions"].unique().to_list())
    for ax, col, title in ((axes[0], "seconds", "time per stage (s)"),
                           (axes[1], "peak_rss_gb", "peak RSS per stage (GB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("interactions")
        ax.set_title(title)
        if len(sizes) > 1:  # what linear growth from the smallest size would look like
            base = data.filter(pl.col("interactions") == sizes[0])[col].max()
            ax.plot(sizes, [base * s / sizes[0] for s in sizes], "k--", lw=1,
                    label="linear (from the largest stage)")
    axes[0].axhline(45 * 60, color="red", lw=0.8, ls=":")
    axes[1].axhline(12, color="red", lw=0.8, ls=":")
    axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e5,1e6,1e7",
                        help="interaction counts, comma-separated (default: 1e5,1e6,1e7)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.csv")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot only")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(dir=ROOT / "data") as tmp:
            rows = run_size(int(args.one), Path(tmp))
        args.json.write_text(json.dumps(rows, default=str))
        return
    if not args.plot_only:
        for size in (float(s) for s in args.sizes.split(",")):
            out = Path(tempfile.mkstemp(suffix=".json")[1])
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--one", str(size), "--json", str(out)],
                           check=True)
            rows = json.loads(out.read_text())
            quality = next(r["quality"] for r in rows if r["stage"] == "quality")
            total = time.perf_counter() - started
            print(f"{int(size):,} interactions: {total:.0f} s; quality {quality}")
            new = pl.DataFrame([r for r in rows if r["stage"] != "quality"],
                               infer_schema_length=None)
            steps = new.filter(pl.col("stage").is_in(PIPELINE))
            new = pl.concat([new, pl.DataFrame({
                "interactions": [int(size)] * 2, "users": [new["users"][0]] * 2,
                "items": [new["items"][0]] * 2,
                "stage": ["pipeline (SQLite)", "benchmark process"],
                "seconds": [round(steps["seconds"].sum(), 1), round(total, 1)],
                "peak_rss_gb": [steps["peak_rss_gb"].max(), new["peak_rss_gb"].max()]})],
                how="diagonal_relaxed")
            if args.out.exists():  # other sizes keep their rows; written after each size
                old = pl.read_csv(args.out).filter(pl.col("interactions") != int(size))
                new = pl.concat([old, new], how="diagonal_relaxed").sort(
                    "interactions", maintain_order=True)
            new.write_csv(args.out)
    plot(args.out, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
