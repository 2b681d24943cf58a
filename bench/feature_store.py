"""Feature-store benchmarks: materialization throughput and online lookup latency.

    .venv/bin/python bench/feature_store.py            # writes bench/results/feature_store.csv

- materialize_*: rows = source rows of the online views, entities = distinct entities
  written, rows_per_s = rows / seconds of `materialize` (jobs and apply not counted).
- online_lookup_*: 1 user + 200 random candidates per call, >= 1,000 calls after a warm-up;
  entities = entities per call, rows = calls timed. `reader` is the path the ranker uses
  (one online-store read per view, resolved at start-up); `feast_api` is one public
  `get_online_features` call with the same service, for comparison.
Redis: a private redis-server on a free loopback port (or --redis-url).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl

from feature_repo.ranker import service_name
from featurestore import store as fs
from featurestore.build import FeatureBuildConfig, build_features
from recdata.datasets import load_dataset
from recdata.synthetic import make_synthetic

COLUMNS = ["benchmark", "store", "entities", "rows", "p50_ms", "p99_ms", "rows_per_s"]
CANDIDATES = 200


@contextmanager
def redis_server(url: str | None) -> Iterator[str | None]:
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server not installed: Redis rows skipped")
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def fresh_repo(root: Path, name: str) -> Path:
    repo = root / name
    repo.mkdir()
    for f in ("feature_store.yaml", "feature_store.redis.yaml"):
        shutil.copy(fs.PACKAGE_REPO / f, repo / f)
    return repo


def materialize_row(name: str, store_kind: str, result: object, repo: fs.FeatureRepo) -> dict:
    views = fs.feature_views()
    online = [v for v in result.rows if views[v].online]
    rows = sum(result.rows[v] for v in online)
    entities = sum(pl.read_parquet(repo.source_path(views[v]), columns=[
        views[v].entities[0] + "_id"]).n_unique() for v in online)
    seconds = result.seconds["materialize"]
    return {"benchmark": name, "store": store_kind, "entities": entities, "rows": rows,
            "p50_ms": None, "p99_ms": None, "rows_per_s": round(rows / seconds)}


def latency(call: Callable[[int, list[int]], object], users: np.ndarray, items: np.ndarray,
            calls: int, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    plan = [(int(rng.choice(users)), rng.choice(items, CANDIDATES, replace=False).tolist())
            for _ in range(calls + 50)]
    for u, c in plan[:50]:
        call(u, c)
    gc.collect()
    times = []
    for u, c in plan[50:]:
        t = time.perf_counter()
        call(u, c)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/feature_store.csv"))
    parser.add_argument("--synthetic-rows", type=int, default=1_000_000)
    args = parser.parse_args()

    ml = load_dataset("movielens-100k", args.data_dir)
    n_users = args.synthetic_rows // 50
    synthetic = make_synthetic(n_users=n_users, n_items=5_000, interactions_per_user=50,
                               seed=1)
    out = []
    with tempfile.TemporaryDirectory() as tmp, redis_server(args.redis_url) as redis_url:
        root = Path(tmp)
        stores = [("sqlite", None)] + ([("redis", redis_url)] if redis_url else [])
        for kind, url in stores:
            repo_path = fresh_repo(root, f"ml_{kind}")
            cfg = FeatureBuildConfig(repo=repo_path, online=kind, redis_url=url,
                                     data_dir=args.data_dir)
            result = build_features(cfg, dataset=ml, progress=False)
            repo = fs.FeatureRepo(repo_path)
            out.append(materialize_row("materialize_ml100k", kind, result, repo))
            store = repo.store(kind, url)
            users = ml.interactions["user_id"].unique().to_numpy()
            items = ml.items["item_id"].to_numpy()
            service = service_name("full")
            reader = fs.OnlineReader(store, service)
            for name, call in (
                ("online_lookup_reader", reader.read),
                ("online_lookup_feast_api",
                 lambda u, c, store=store, svc=service: fs.online_features_api(store, u, c, svc)),
            ):
                p50, p99 = latency(call, users, items, args.calls)
                out.append({"benchmark": name, "store": kind, "entities": CANDIDATES + 1,
                            "rows": args.calls, "p50_ms": round(p50, 2),
                            "p99_ms": round(p99, 2), "rows_per_s": None})
                print(out[-1])
            syn_repo = fresh_repo(root, f"syn_{kind}")
            cfg = FeatureBuildConfig(dataset="synthetic", repo=syn_repo, online=kind,
                                     redis_url=url, data_dir=args.data_dir, embeddings=False)
            result = build_features(cfg, dataset=synthetic, progress=False)
            out.append(materialize_row(f"materialize_synthetic_{synthetic.interactions.height}",
                                       kind, result, fs.FeatureRepo(syn_repo)))
            print(out[-2:])
    frame = pl.DataFrame(out).select(COLUMNS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(args.out)
    print(frame)


if __name__ == "__main__":
    main()
