"""Bad data at volume: the bring-your-own validator on a 10^6-row interactions file with 1%
of its rows corrupted, five kinds alike, must report every corrupted row (file, row,
column) and nothing else, within a stated time.

    .venv/bin/python bench/validation.py     # bench/results/validation.csv

Kinds (2,000 rows each): an empty user_id, an empty item_id, an unparseable timestamp, a
rating that is not a number, an item_id the items file does not hold; plus 20 rows of the
items file that repeat an id already there (21 rows reported). The files are CSV (the row
reported is the line an editor shows, header = 1), written to a temporary folder and deleted
after. One run, seeded.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recdata.atomic_io import write_text_atomic  # noqa: E402
from recdata.errors import DataValidationError  # noqa: E402

KINDS = {  # kind -> (column, corrupt value)
    "empty user_id": ("user_id", ""),
    "empty item_id": ("item_id", ""),
    "bad timestamp": ("timestamp", "yesterday-ish"),
    "bad rating": ("rating", "five stars"),
    "unknown item": ("item_id", "no-such-item"),
}


def make_files(folder: Path, rows: int, share: float, seed: int) -> dict[tuple[str, int, str], str]:
    """Write interactions.csv and items.csv; return the injected problems by (file, line,
    column)."""
    rng = np.random.default_rng(seed)
    n_items = 20_000
    items = pl.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "title": [f"Item number {i}" for i in range(n_items)]})
    # 20 more rows reusing the first id, spread through the file
    extra = pl.DataFrame({"item_id": ["i0"] * 20, "title": [f"Again {i}" for i in range(20)]})
    items = pl.concat([items, extra]).sort(
        pl.Series(np.concatenate([np.arange(n_items), rng.choice(n_items, 20)]) + 0.5
                  * np.r_[np.zeros(n_items), np.ones(20)]))
    frame = pl.DataFrame({
        "user_id": rng.integers(0, 50_000, rows).astype(str),
        "item_id": np.char.add("i", rng.integers(1, n_items, rows).astype(str)),
        "timestamp": (1_000_000_000 + rng.integers(0, 10**8, rows)).astype(str),
        "rating": rng.integers(1, 6, rows).astype(str),
    })
    bad = rng.choice(rows, int(rows * share), replace=False)
    expected: dict[tuple[str, int, str], str] = {}
    for k, (kind, (column, value)) in enumerate(KINDS.items()):
        at = np.sort(bad[k::len(KINDS)])
        frame = frame.with_columns(
            pl.when(pl.int_range(pl.len()).is_in(at.tolist())).then(pl.lit(value))
            .otherwise(pl.col(column)).alias(column))
        expected.update({("interactions.csv", int(r) + 2, column): kind for r in at})
    # the duplicated id: every row holding 'i0' is reported
    i0 = np.flatnonzero(items["item_id"].to_numpy() == "i0")
    expected.update({("items.csv", int(r) + 2, "item_id"): "duplicate item_id" for r in i0})
    frame.write_csv(folder / "interactions.csv")
    items.write_csv(folder / "items.csv")
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--share", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    from recdata.byo import load_custom

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        expected = make_files(folder, args.rows, args.share, args.seed)
        started = time.perf_counter()
        try:
            load_custom(folder / "interactions.csv", folder / "items.csv")
            problems = []
        except DataValidationError as exc:
            problems = exc.problems
        seconds = time.perf_counter() - started
    found = {(Path(p.file).name, p.row, p.column) for p in problems}
    missed = set(expected) - found
    extra = found - set(expected)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows = []
    for kind in [*KINDS, "duplicate item_id"]:
        want = {k for k, v in expected.items() if v == kind}
        rows.append({"kind": kind, "injected": len(want), "reported": len(want & found),
                     "missed": len(want - found)})
    rows.append({"kind": "reported but not injected", "injected": 0, "reported": len(extra),
                 "missed": 0})
    table = pl.DataFrame(rows).with_columns(
        pl.lit(args.rows).alias("rows"), pl.lit(round(seconds, 2)).alias("seconds"),
        pl.lit(round(peak, 2)).alias("peak_rss_gb"))
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "validation.csv", table.write_csv())
    print(table)
    print(f"{len(problems):,} problems reported in {seconds:.1f} s (peak RSS {peak:.2f} GB); "
          f"missed {len(missed)}, extra {len(extra)}")
    if missed or extra:
        print("examples missed:", sorted(missed)[:5], "extra:", sorted(extra)[:5])
        sys.exit(1)


if __name__ == "__main__":
    main()
