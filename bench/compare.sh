#!/usr/bin/env bash
# The serving benchmark at two commits on the same host, side by side: this machine's speed
# has drifted 2x between days (bench/README.md), so figures compare only when taken
# together. Checks out OLD in a temporary worktree (sharing this checkout's trained data
# and feature repo data, so run `make run` first), then alternates this checkout's
# bench/latency.py on the old code and on this checkout's, ROUNDS times, writing each run's
# CSVs under $COMPARE_OUT/<old|new>-<round>/ (default /tmp/instructrank-compare) and
# printing every row side by side.
#
#   bench/compare.sh OLD [ROUNDS] [bench/latency.py options ...]
#   bench/compare.sh 3a4eb6c 2 --stores sqlite --requests 600
set -euo pipefail
old=${1:?usage: bench/compare.sh OLD [ROUNDS] [latency.py options ...]}
rounds=${2:-2}
shift $(( $# >= 2 ? 2 : 1 ))
root=$(git rev-parse --show-toplevel)
out=${COMPARE_OUT:-${TMPDIR:-/tmp}/instructrank-compare}
python=$root/.venv/bin/python
tree=$(mktemp -d)/old
git -C "$root" worktree add --force --detach "$tree" "$old" >/dev/null
trap 'git -C "$root" worktree remove --force "$tree"' EXIT
ln -sfn "$root/data" "$tree/data"
rm -rf "$tree/feature_repo/data"
ln -sfn "$root/feature_repo/data" "$tree/feature_repo/data"
rm -rf "$out"
for round in $(seq "$rounds"); do
  for side in old new; do
    dir=$root
    [ "$side" = old ] && dir=$tree
    echo "== round $round: $side ($(git -C "$dir" rev-parse --short HEAD))"
    # this checkout's benchmark (one load generator for both) on that side's code: its
    # PYTHONPATH comes before the venv's editable install, and the server it starts inherits it
    (cd "$dir" && PYTHONPATH="$dir" "$python" "$root/bench/latency.py" \
      --repo "$dir/feature_repo" --data-dir "$dir/data" --out "$out/$side-$round" "$@")
  done
done
"$python" - "$out" <<'PY'
import sys
from pathlib import Path

import polars as pl

runs = [pl.read_csv(f).with_columns(pl.lit(f.parent.name).alias("run"))
        for f in sorted(Path(sys.argv[1]).glob("*/latency.csv"))]
table = pl.concat(runs, how="diagonal_relaxed").sort("path", "store", "mix", "clients", "run")
pl.Config(tbl_rows=200, tbl_cols=20, tbl_width_chars=200)
print(table.select("path", "store", "mix", "clients", "run", "p50_ms", "p99_ms", "rps",
                   "errors", *[c for c in ("host_ms", "bench_cpu_ms", "server_cpu_ms")
                               if c in table.columns]))
PY
