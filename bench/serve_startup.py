"""Start-up of the online recommender: load time, peak memory, and whether it needs the
feature repo's `sources/` (raw interactions, items, offline sources) at all.

    .venv/bin/python bench/serve_startup.py --label after   # -> bench/results/serve_startup.csv

Each measurement is a fresh process (so peak RSS is the load's own) running
`Recommender.load` on the repo and models `make run` built. The last run of each label is
made with `<repo>/data/sources` renamed away (restored afterwards, whatever happens): a
start-up that reads no source loads all the same, one that does fails, and the file it
missed is recorded. Rows of the same label are replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, resource, sys, time
from pathlib import Path

from ranking.recommend import Recommender, RecommenderConfig

t = time.perf_counter()
rec = Recommender.load(RecommenderConfig(repo=Path(sys.argv[1]), data_dir=Path(sys.argv[2])))
seconds = time.perf_counter() - t
print(json.dumps({"load_s": round(seconds, 2),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                       / 2**20, 3)}))
'''


def _load(repo: Path, data_dir: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(repo), str(data_dir)],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", **os.environ})
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "?"
        return {"error": last[:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="e.g. before / after")
    parser.add_argument("--repo", type=Path, default=ROOT / "feature_repo")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/serve_startup.csv")
    args = parser.parse_args()
    sources = args.repo / "data" / "sources"
    away = args.repo / "data" / "sources.moved-by-bench"
    rows = []
    for run in range(args.runs + 1):
        without = run == args.runs
        if without:
            sources.rename(away)
        try:
            got = _load(args.repo, args.data_dir)
        finally:
            if without:
                away.rename(sources)
        if "error" in got and not without:
            sys.exit(f"Recommender.load failed: {got['error']}")
        rows.append({"label": args.label, "run": run, "sources": "moved away" if without
                     else "present", "load_s": got.get("load_s"),
                     "peak_rss_gb": got.get("peak_rss_gb"), "error": got.get("error", "")})
        print(rows[-1])
    frame = pl.DataFrame(rows)
    if args.out.exists():
        frame = pl.concat([pl.read_csv(args.out).filter(pl.col("label") != args.label), frame],
                          how="vertical_relaxed")
    frame.write_csv(args.out)


if __name__ == "__main__":
    main()
