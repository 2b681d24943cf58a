"""How much training weight logged requests should carry (`LTRConfig.logged_share`), chosen
without the test set: 5-fold cross-validation inside the hand-written dev set.

    .venv/bin/python bench/logged_share.py      # writes bench/results/logged_share.csv

For each share and fold the ranker (`ltr_full`'s features and settings) trains on the
generated training requests plus four fifths of the dev requests, stops early on the
generated validation requests as `train` does, and is scored on the fifth left out:
NDCG@10 of the target among the request's candidates (0 when it is not one; no constraint
ordering, so a little below the harness's figure). `valid_ndcg` is the generated validation
NDCG@10 at the best iteration: what the share costs the generated tasks. Rule used for the
default: the share past which the mean `dev_ndcg` stops rising (2026-12-01: 0.257, 0.313,
0.351, 0.350, 0.341 for 0, 0.1, 0.2, 0.3, 0.5; `valid_ndcg` 0.3906 -> 0.3866 at 0.2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

DEV = Path("bench/requests/movielens-100k-handwritten-dev.csv")


def _ndcg_at_10(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    s = np.where(valid, scores, -np.inf)
    target = np.where(labels.any(axis=1), (s * labels).sum(axis=1, where=labels == 1), np.inf)
    rank = (s > target[:, None]).sum(axis=1)
    return np.where(labels.any(axis=1) & (rank < 10), 1 / np.log2(rank + 2), 0.0)


def main() -> None:
    from ranking.evaluation.config import EvalConfig
    from ranking.ltr.model import fit_lambdarank
    from ranking.ltr.training import _logged_weights, _stack, kept_rows
    from ranking.prepare import prepare, run_dataset
    from ranking.train import run_context
    from recdata.logged import load_logged_requests

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shares", default="0,0.1,0.2,0.3,0.5")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/logged_share.csv"))
    args = parser.parse_args()

    cfg = EvalConfig(dataset="movielens-100k", models=["ltr_full"], data_dir=args.data_dir)
    ds = run_dataset(cfg)
    prep = prepare(cfg, ds, load_logged_requests(DEV, ds))
    context, _ = run_context(cfg, ds, prep, ["ltr_full"], progress=False, trained=None)
    res = context.ltr
    ts = res.training_set()
    dev = res.examples(prep.fits["test"], prep.batches[("test", "logged")])
    n, k = dev.labels.shape
    frame = dev.frame.to_numpy()
    folds = np.random.default_rng(cfg.seed).permutation(np.arange(n) % args.folds)
    rows = []
    for share in (float(s) for s in args.shares.split(",")):
        for fold in range(args.folds):
            learn = folds != fold
            # the rows `train` keeps of a logged request: target and sampled negatives
            part = kept_rows(frame.reshape(n, k, -1)[learn].reshape(-1, frame.shape[1]),
                             dev.labels[learn], dev.cands.valid[learn],
                             cfg.ltr.negatives_per_request, np.random.default_rng(cfg.ltr.seed))
            x, y, g = _stack([(ts.x, ts.y, ts.groups), part], ts.x.shape[1])
            w = _logged_weights(len(ts.y), len(part[1]), share)
            booster, best, valid = fit_lambdarank(cfg.ltr, (x, y, g), (ts.vx, ts.vy, ts.vgroups),
                                                  ts.features, w)
            held = ~learn
            scores = booster.predict(frame, num_iteration=best).reshape(n, k)
            ndcg = _ndcg_at_10(scores[held], dev.labels[held] == 1, dev.cands.valid[held])
            rows.append({"share": share, "fold": fold, "dev_requests": int(held.sum()),
                         "dev_ndcg": float(ndcg.mean()), "valid_ndcg": valid,
                         "best_iteration": best})
            print(rows[-1], flush=True)
    out = pl.DataFrame(rows)
    summary = out.group_by("share").agg(pl.col("dev_ndcg").mean(), pl.col("valid_ndcg").mean(),
                                        pl.len().alias("folds")).sort("share")
    print(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.write_csv(args.out)
    print(f"wrote {args.out}  (.venv/bin/python bench/logged_share.py)")


if __name__ == "__main__":
    main()
