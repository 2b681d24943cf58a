"""KG training on ML-100k: time, size and link-prediction quality per model.

    .venv/bin/python bench/kg_training.py          # writes bench/results/kg.csv

Each model trains from scratch (a fresh cache directory), default dimension and schedule,
early stopping on 2% held-out triples; MRR and Hits@10 are PyKEEN's filtered ("realistic")
figures on a further 3% of test triples. Target: the default model (TransE) in <= 2 minutes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import polars as pl

from kg.train import PYKEEN_MODELS, KGConfig, train_kg
from kg.triples import build_triples
from recdata.datasets import load_dataset

COLUMNS = ["dataset", "model", "dim", "triples", "entities", "relations", "epochs", "train_s",
           "mrr", "hits_at_10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(PYKEEN_MODELS))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/kg.csv"))
    args = parser.parse_args()
    ds = load_dataset("movielens-100k", args.data_dir)
    triples = build_triples(ds)
    rows = []
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            r = train_kg(triples, KGConfig(model=model), Path(tmp) / "kg", progress=False)
        rows.append({"dataset": ds.name, "model": model, "dim": r.config["dim"],
                     "triples": r.triples, "entities": r.entities,
                     "relations": len(r.relations), "epochs": r.epochs, "train_s": r.train_s,
                     "mrr": round(r.mrr, 4), "hits_at_10": round(r.hits_at_10, 4)})
        print(rows[-1], flush=True)
    frame = pl.DataFrame(rows).select(COLUMNS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(args.out)
    print(frame)


if __name__ == "__main__":
    main()
