"""`evaluate` with every model on a 10^4-item, 10^5-interaction, 2*10^4-user synthetic
catalogue: time and peak resident memory of each stage, against a 4 GB budget.

    .venv/bin/python bench/evaluate_memory.py      # -> bench/results/evaluate_memory.csv

The feature repo is built first (with embeddings: the full ranker reads them), then one
`evaluate()` runs every default model (baselines, rankers and their ablations, the
instruction-tuned encoder and its ranker), tuning each on validation as `make run` does.
The process's own peak (ru_maxrss) is recorded beside the per-stage peaks.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_GB = 4.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--per-user", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/evaluate_memory.csv")
    parser.add_argument("--models", help="comma-separated models (default: every default one)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import polars as pl

    from featurestore.build import FeatureBuildConfig, build_features
    from featurestore.store import PACKAGE_REPO
    from ranking.evaluation.config import EvalConfig
    from ranking.evaluation.harness import evaluate
    from ranking.train import train
    from recdata.stages import RECORDS, stage
    from recdata.synthetic import make_synthetic

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=ROOT / "data") as tmp:
        work = Path(tmp)
        repo, data = work / "repo", work / "data"
        repo.mkdir()
        for name in ("feature_store.yaml", "feature_store.redis.yaml"):
            shutil.copy(PACKAGE_REPO / name, repo / name)
        data.mkdir()
        (data / "cache").symlink_to(ROOT / "data" / "cache")  # the encoder's vector cache
        with stage("synthetic data"):
            ds = make_synthetic(n_users=args.users, n_items=args.items,
                                interactions_per_user=args.per_user, seed=0)
        build_features(FeatureBuildConfig(dataset="synthetic", repo=repo, data_dir=data),
                       dataset=ds, progress=False)
        cfg = EvalConfig(dataset="synthetic", feature_repo=repo, data_dir=data,
                         results_dir=work / "results",
                         **({"models": args.models.split(",")} if args.models else {}))
        with stage("train, every model"):
            train(cfg, dataset=ds, progress=False)
        with stage("evaluate, every model"):
            result = evaluate(cfg, dataset=ds, progress=False)
        print(result.metrics.select("model", "task", "ndcg@10").sort("task", "model"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows = pl.DataFrame([vars(r) for r in RECORDS]).with_columns(
        pl.lit(f"{ds.summary()}").alias("dataset"))
    rows = pl.concat([rows, pl.DataFrame({
        "stage": ["whole process (ru_maxrss)"],
        "seconds": [round(time.perf_counter() - started, 1)],
        "peak_rss_gb": [round(peak, 3)], "dataset": [rows["dataset"][0]]})])
    rows.write_csv(args.out)
    print(rows)
    print(f"peak {peak:.2f} GB against a budget of {BUDGET_GB} GB: "
          f"{'met' if peak <= BUDGET_GB else 'MISSED'}")


if __name__ == "__main__":
    main()
