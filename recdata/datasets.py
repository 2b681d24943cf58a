"""Datasets by name. Loading is I/O; everything after it is in-memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from recdata.dataset import Dataset
from recdata.errors import ConfigError, UnknownNameError


def _movielens(data_dir: Path, **_: object) -> Dataset:
    from recdata.movielens import fetch_movielens_100k, load_movielens_100k

    path, _origin = fetch_movielens_100k(data_dir)
    return load_movielens_100k(path)


def _synthetic(data_dir: Path, **_: object) -> Dataset:
    from recdata.synthetic import make_synthetic

    return make_synthetic()


def _custom(data_dir: Path, interactions: Path | None = None, items: Path | None = None,
            text_columns: tuple[str, ...] = ("title",)) -> Dataset:
    from recdata.byo import load_custom

    if interactions is None or items is None:
        raise ConfigError("dataset 'custom' needs both --interactions and --items files")
    return load_custom(interactions, items, text_columns=text_columns)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "movielens-100k": _movielens,
    "synthetic": _synthetic,
    "custom": _custom,
}


def load_dataset(name: str, data_dir: Path, **kwargs: object) -> Dataset:
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, list(DATASETS))
    return DATASETS[name](data_dir, **kwargs)
