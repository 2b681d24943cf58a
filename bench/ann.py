"""Approximate nearest neighbours for 384-d text vectors: faiss-cpu, hnswlib and usearch
against exact search, top-200 by cosine (unit-norm vectors, so inner product).

    nice -n 10 .venv/bin/python bench/ann.py           # bench/results/ann.csv + a table

Datasets (`dataset` column):
- `lastfm-17k`: the 17,632 Last.fm artists, text = title + " " + genres joined by spaces,
  encoded with the project's all-MiniLM-L6-v2 `TextEncoder` (cached in data/cache, so only
  the first run encodes).
- `lastfm-perturbed-100k`: 100,000 synthetic vectors, each normalize(v + sigma * g / sqrt(d))
  for v a Last.fm artist vector drawn with replacement and g standard gaussian (sigma =
  `--sigma`, seeded): not real texts, but with the real vectors' clustering, at a size where a
  dense product is no longer cheap.
Queries (both datasets): `--queries` short requests built from the genres column
("some {tag} music", ...; seeded), encoded with the same encoder.

Per library, one index is built for each (connectivity M, expansion at build) pair of the
grid and searched at each expansion at search (ef), all with one thread, so the build is
deterministic and the latencies are those of one core. Columns of ann.csv:
  dataset,n,dim,library,M,ef_construction,ef_search,build_s,index_bytes,rss_delta_mb,
  recall_at_k,p50_ms,p99_ms,batch_qps,deterministic
- recall_at_k: mean over queries of |ANN top-k ∩ exact top-k| / k (k = `--k`, 200).
- p50_ms/p99_ms: one query per call, one thread, after a warm-up; each query is timed
  `--repeats` times and its fastest call kept (the machine is shared: the minimum removes the
  stalls other processes cause, not the cost of a hard query), then p50/p99 over queries.
- batch_qps: all queries in one call with `--batch-threads` threads (1 by default: the
  machine is shared), queries per second.
- build_s, index_bytes (the file the library saves), rss_delta_mb (peak resident set during
  the build minus the resident set before it, from /proc/self/status VmHWM after resetting
  it; empty where the kernel does not allow the reset) are per built index, repeated on each
  ef row.
- deterministic: for the first (M, ef_construction) of each library on the first dataset, a
  second single-threaded build with the same seed gives identical top-k for every query
  (True/False); empty elsewhere. With `--check-threads N`, two N-thread builds are compared
  too (printed only, not in the CSV).
The `exact` rows are the numpy dense product + argpartition (one BLAS thread) that
`encoders.ann` uses below `exact_below`.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread unless asked otherwise: the machine is shared, and one-thread numbers
# are the per-core cost. Set before numpy, torch and faiss start their pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from recdata.atomic_io import write_text_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["dataset", "n", "dim", "library", "M", "ef_construction", "ef_search", "build_s",
           "index_bytes", "rss_delta_mb", "recall_at_k", "p50_ms", "p99_ms", "batch_qps",
           "deterministic"]
TEMPLATES = ["some {a} music", "{a} artists", "play me something {a}", "I want to hear {a}",
             "{a} with a bit of {b}", "bands like {a} and {b}", "upbeat {a}", "chill {a} songs"]


# --- data -------------------------------------------------------------------------------

def lastfm_texts(items: Path) -> tuple[list[str], list[list[str]]]:
    frame = pl.read_parquet(items, columns=["title", "genres"])
    genres = [list(g) for g in frame["genres"].to_list()]
    texts = [f"{t} {' '.join(g)}".strip() for t, g in zip(frame["title"].to_list(), genres,
                                                           strict=True)]
    return texts, genres


def query_texts(genres: list[list[str]], n: int, seed: int) -> list[str]:
    """`n` distinct short requests from tags that at least 5 artists carry (seeded)."""
    counts: dict[str, int] = {}
    for g in genres:
        for tag in g:
            counts[tag] = counts.get(tag, 0) + 1
    tags = sorted(t for t, c in counts.items() if c >= 5)
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        a, b = rng.choice(len(tags), size=2, replace=False)
        text = TEMPLATES[rng.integers(len(TEMPLATES))].format(a=tags[a], b=tags[b])
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def lastfm_vectors(items: Path, cache: Path, n_queries: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    from encoders.text import TextEncoder

    texts, genres = lastfm_texts(items)
    enc = TextEncoder(cache_dir=cache, show_progress=True)
    vecs = enc.encode(texts, desc="artists")
    queries = enc.encode(query_texts(genres, n_queries, seed), desc="queries")
    return np.ascontiguousarray(vecs, dtype=np.float32), np.ascontiguousarray(queries,
                                                                              dtype=np.float32)


def perturbed(base: np.ndarray, n: int, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = base.shape[1]
    out = base[rng.integers(len(base), size=n)].copy()
    out += (sigma / np.sqrt(d)) * rng.standard_normal(out.shape, dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out, dtype=np.float32)


# --- exact search -----------------------------------------------------------------------

def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


# --- libraries ----------------------------------------------------------------------------

@dataclass
class Built:
    search: Callable[[np.ndarray, int, int], np.ndarray]  # (queries, k, threads) -> ids
    set_ef: Callable[[int], None]
    save: Callable[[Path], None]


def build_faiss(x: np.ndarray, m: int, efc: int, seed: int, threads: int) -> Built:
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = efc
    # faiss draws HNSW levels from a generator seeded 12345 in the constructor; reseed it
    index.hnsw.rng = faiss.RandomGenerator(seed)  # keep a Python reference (faiss owns none)
    index.add(x)

    def search(q: np.ndarray, k: int, t: int) -> np.ndarray:
        faiss.omp_set_num_threads(t)
        return index.search(q, k)[1]

    def set_ef(ef: int) -> None:
        index.hnsw.efSearch = ef

    return Built(search, set_ef, lambda p: faiss.write_index(index, str(p)))


def build_hnswlib(x: np.ndarray, m: int, efc: int, seed: int, threads: int) -> Built:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=m, ef_construction=efc, random_seed=seed)
    index.add_items(x, np.arange(len(x)), num_threads=threads)

    def search(q: np.ndarray, k: int, t: int) -> np.ndarray:
        return index.knn_query(q, k=k, num_threads=t)[0].astype(np.int64)

    return Built(search, index.set_ef, lambda p: index.save_index(str(p)))


def build_usearch(x: np.ndarray, m: int, efc: int, seed: int, threads: int) -> Built:
    from usearch.index import Index

    # dtype f32 explicitly: left to itself usearch may store f16/bf16 where the CPU has it
    index = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=m, expansion_add=efc)
    index.add(np.arange(len(x), dtype=np.uint64), x, threads=threads)

    def search(q: np.ndarray, k: int, t: int) -> np.ndarray:
        return index.search(q, k, threads=t).keys.astype(np.int64)

    def set_ef(ef: int) -> None:
        index.expansion_search = ef

    return Built(search, set_ef, lambda p: index.save(str(p)))


LIBRARIES: dict[str, Callable[..., Built]] = {
    "faiss": build_faiss, "hnswlib": build_hnswlib, "usearch": build_usearch}


# --- measuring ----------------------------------------------------------------------------

def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed_build(fn: Callable[[], Built]) -> tuple[Built, float, float | None]:
    gc.collect()
    can_reset = _reset_peak()
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    built = fn()
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    rss_mb = (peak - before) / 1024 if can_reset and peak and before else None
    return built, seconds, rss_mb


def recall(ann: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(a, e)) / k for a, e in zip(ann, exact,
                                                                          strict=True)]))


def latencies(search: Callable[[np.ndarray, int, int], Any], queries: np.ndarray, k: int,
              repeats: int, warmup: int = 20) -> tuple[float, float]:
    """p50 and p99 over queries of each query's fastest of `repeats` one-query calls: the
    minimum drops the stalls another process's load causes on a shared machine and keeps what
    a query costs (a hard query is slow on every repeat)."""
    for i in range(min(warmup, len(queries))):
        search(queries[i:i + 1], k, 1)
    ms = np.full(len(queries), np.inf)
    for _ in range(repeats):
        for i in range(len(queries)):
            t0 = time.perf_counter()
            search(queries[i:i + 1], k, 1)
            ms[i] = min(ms[i], (time.perf_counter() - t0) * 1000)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def throughput(search: Callable[[np.ndarray, int, int], Any], queries: np.ndarray, k: int,
               threads: int) -> float:
    t0 = time.perf_counter()
    search(queries, k, threads)
    return len(queries) / (time.perf_counter() - t0)


def index_bytes(built: Built) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="ann-bench-"))
    try:
        built.save(tmp / "index.bin")
        return (tmp / "index.bin").stat().st_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_dataset(name: str, x: np.ndarray, q: np.ndarray, args: argparse.Namespace,
                  check_determinism: bool) -> list[dict[str, Any]]:
    k = args.k
    rows: list[dict[str, Any]] = []
    base = {"dataset": name, "n": len(x), "dim": x.shape[1]}
    truth = exact_topk(x, q, k)

    def exact_search(qq: np.ndarray, kk: int, _t: int) -> np.ndarray:
        return exact_topk(x, qq, kk)

    p50, p99 = latencies(exact_search, q, k, args.repeats)
    rows.append({**base, "library": "exact", "M": "", "ef_construction": "", "ef_search": "",
                 "build_s": 0.0, "index_bytes": x.nbytes, "rss_delta_mb": "",
                 "recall_at_k": 1.0, "p50_ms": p50, "p99_ms": p99,
                 "batch_qps": throughput(exact_search, q, k, 1), "deterministic": ""})
    print(f"  exact: p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
    for lib in args.libraries:
        for gi, (m, efc) in enumerate(args.grid):
            built, build_s, rss = timed_build(
                lambda lib=lib, m=m, efc=efc: LIBRARIES[lib](x, m, efc, args.seed, 1))
            nbytes = index_bytes(built)
            det: bool | str = ""
            if check_determinism and gi == 0:
                built.set_ef(max(args.ef_search))
                first = built.search(q, k, 1)
                again = LIBRARIES[lib](x, m, efc, args.seed, 1)
                again.set_ef(max(args.ef_search))
                det = bool(np.array_equal(first, again.search(q, k, 1)))
                msg = f"  {lib} M={m} efc={efc}: two 1-thread builds identical: {det}"
                del again
                if args.check_threads > 1:
                    t1 = LIBRARIES[lib](x, m, efc, args.seed, args.check_threads)
                    t2 = LIBRARIES[lib](x, m, efc, args.seed, args.check_threads)
                    t1.set_ef(max(args.ef_search))
                    t2.set_ef(max(args.ef_search))
                    same = np.array_equal(t1.search(q, k, 1), t2.search(q, k, 1))
                    msg += f"; two threads={args.check_threads} builds identical: {same}"
                    del t1, t2
                print(msg, flush=True)
            for ef in args.ef_search:
                built.set_ef(ef)
                r = recall(built.search(q, k, 1), truth)
                p50, p99 = latencies(built.search, q, k, args.repeats)
                qps = throughput(built.search, q, k, args.batch_threads)
                rows.append({**base, "library": lib, "M": m, "ef_construction": efc,
                             "ef_search": ef, "build_s": build_s, "index_bytes": nbytes,
                             "rss_delta_mb": "" if rss is None else rss, "recall_at_k": r,
                             "p50_ms": p50, "p99_ms": p99, "batch_qps": qps,
                             "deterministic": det})
                print(f"  {lib:8s} M={m:<3d} efc={efc:<4d} ef={ef:<4d} build {build_s:6.1f} s"
                      f"  recall {r:.4f}  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
                      f"  {qps:7.0f} q/s", flush=True)
            del built
            gc.collect()
    return rows


# --- output -------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if v < 10 else f"{v:.1f}"
    return str(v)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({c: (round(v, 4) if isinstance(v, float) else v) for c, v in row.items()})
    write_text_atomic(path, buf.getvalue())


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["dataset", "library", "M", "ef_construction", "ef_search", "build_s", "index_bytes",
            "rss_delta_mb", "recall_at_k", "p50_ms", "p99_ms", "batch_qps", "deterministic"]
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _pairs(text: str) -> list[tuple[int, int]]:
    out = []
    for pair in text.split(","):
        m, efc = pair.split(":")
        out.append((int(m), int(efc)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description="Compare faiss-cpu (IndexHNSWFlat, inner product), hnswlib (space 'ip') "
                    "and usearch (metric 'ip', f32) against exact search for top-k cosine "
                    "retrieval of all-MiniLM-L6-v2 vectors; writes a CSV and prints a table. "
                    "Run under `nice -n 10` on a shared machine; about 9 minutes on 2 cores.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--items", type=Path, default=Path("/work/shared/data/lastfm/items.parquet"),
                   help="Last.fm items.parquet (title, genres)")
    p.add_argument("--cache", type=Path, default=ROOT / "data" / "cache",
                   help="TextEncoder vector cache directory")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ann.csv",
                   help="CSV written (atomically) after each dataset")
    p.add_argument("--k", type=int, default=200, help="neighbours per query")
    p.add_argument("--queries", type=int, default=500, help="number of encoded requests")
    p.add_argument("--n-large", type=int, default=100_000,
                   help="size of the perturbed dataset; 0 skips it")
    p.add_argument("--sigma", type=float, default=0.35,
                   help="noise scale of the perturbed dataset (times g / sqrt(d))")
    p.add_argument("--libraries", type=lambda s: s.split(","),
                   default="faiss,hnswlib,usearch", help="comma-separated")
    p.add_argument("--grid", type=_pairs, default="16:128,32:128",
                   help="comma-separated M:ef_construction pairs, one build each")
    p.add_argument("--ef-search", type=lambda s: [int(v) for v in s.split(",")],
                   default="200,300,400",
                   help="comma-separated search expansions (each >= k: faiss does not raise "
                        "efSearch to k by itself, hnswlib and usearch do)")
    p.add_argument("--repeats", type=int, default=3,
                   help="one-query calls per query for the latency columns (fastest kept)")
    p.add_argument("--batch-threads", type=int, default=1,
                   help="threads for the batched-throughput column")
    p.add_argument("--check-threads", type=int, default=0,
                   help="also test determinism of builds with this many threads (0: skip)")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the queries, the perturbed vectors and the graph builds")
    args = p.parse_args()

    t0 = time.perf_counter()
    print("encoding Last.fm artists and queries (cached after the first run) ...", flush=True)
    x, q = lastfm_vectors(args.items, args.cache, args.queries, args.seed)
    datasets = [("lastfm-17k", x)]
    if args.n_large:
        print(f"lastfm-perturbed-{args.n_large // 1000}k: SYNTHETIC, {args.n_large:,} vectors "
              f"= normalize(random Last.fm artist vector + {args.sigma} * N(0, I) / sqrt(d)), "
              f"seed {args.seed}", flush=True)
        datasets.append((f"lastfm-perturbed-{args.n_large // 1000}k",
                         perturbed(x, args.n_large, args.sigma, args.seed)))
    rows: list[dict[str, Any]] = []
    for i, (name, data) in enumerate(datasets):
        print(f"{name}: n={len(data):,} d={data.shape[1]} queries={len(q)} k={args.k}",
              flush=True)
        rows += bench_dataset(name, data, q, args, check_determinism=(i == 0))
        write_csv(rows, args.out)
    print()
    print_table(rows)
    print(f"\nwrote {args.out} ({len(rows)} rows) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
