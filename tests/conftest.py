from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic():
    from recdata.synthetic import make_synthetic

    return make_synthetic(n_users=120, n_items=150, interactions_per_user=25, seed=7)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The project's data directory, shared with `make run`, so the real data and the
    embedding cache are fetched once per machine."""
    return Path(os.environ.get("INSTRUCTRANK_DATA_DIR", REPO / "data"))


@pytest.fixture(scope="session")
def movielens(data_dir):
    from recdata.movielens import fetch_movielens_100k, load_movielens_100k

    path, _ = fetch_movielens_100k(data_dir)
    return load_movielens_100k(path)


@pytest.fixture(scope="session")
def encoder(data_dir):
    from encoders.text import TextEncoder

    return TextEncoder(cache_dir=data_dir / "cache", show_progress=False)
