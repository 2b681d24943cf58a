"""Datasets by name. Loading is I/O; everything after it is in-memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from recdata.dataset import Dataset
from recdata.errors import ConfigError, UnknownNameError


def _movielens(data_dir: Path, schema: Path | None = None, **_: object) -> Dataset:
    from recdata.movielens import fetch_movielens_100k, load_movielens_100k

    path, _origin = fetch_movielens_100k(data_dir)
    ds = load_movielens_100k(path)
    return ds if schema is None else _with_schema(ds, schema)


def _synthetic(data_dir: Path, schema: Path | None = None, **_: object) -> Dataset:
    from recdata.synthetic import make_synthetic

    ds = make_synthetic()
    return ds if schema is None else _with_schema(ds, schema)


def _with_schema(ds: Dataset, path: Path) -> Dataset:
    from dataclasses import replace

    from recdata.schema import DomainSchema

    schema = DomainSchema.load(path)
    return replace(ds, schema=schema, text_columns=schema.text_columns or ds.text_columns)


def _custom(data_dir: Path, interactions: Path | None = None, items: Path | None = None,
            text_columns: tuple[str, ...] = ("title",), schema: Path | None = None) -> Dataset:
    """Your own files; the schema is `schema`, else the file beside the items
    (`schema_beside`), else inferred. A schema file names the dataset (its `dataset`)."""
    from recdata.byo import load_custom

    if interactions is None or items is None:
        raise ConfigError("dataset 'custom' needs both --interactions and --items files")
    path = Path(schema) if schema is not None else schema_beside(Path(items))
    if schema is None and not path.exists():
        path = None
    name = "custom"
    if path is not None:
        from recdata.schema import DomainSchema

        name = DomainSchema.load(path).dataset
    return load_custom(interactions, items,
                       text_columns=None if tuple(text_columns) == ("title",) else text_columns,
                       schema=path, name=name)


def schema_beside(items: Path) -> Path:
    """Where a catalogue's domain schema is looked for: `<items file stem>.schema.json` beside
    it (`instructrank data schema --items FILE` writes it there), so every stage that loads
    the same files reads the same schema."""
    return items.with_name(f"{items.name.split('.')[0]}.schema.json")


DATASETS: dict[str, Callable[..., Dataset]] = {
    "movielens-100k": _movielens,
    "synthetic": _synthetic,
    "custom": _custom,
}


class DatasetSource(BaseModel):
    """Which dataset a stage reads and from where: the fields every stage's config shares
    (features build, KG, training and evaluation), so they load it one way."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = "movielens-100k"
    interactions: Path | None = None
    items: Path | None = None
    schema_file: Path | None = Field(None, description="the dataset's domain schema (default: "
                                                       "its committed or inferred one)")
    data_dir: Path = Path("data")

    def load_dataset(self, **extra: object) -> Dataset:
        return load_dataset(self.dataset, self.data_dir, interactions=self.interactions,
                            items=self.items, schema=self.schema_file, **extra)


def load_dataset(name: str, data_dir: Path, **kwargs: object) -> Dataset:
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, list(DATASETS))
    return DATASETS[name](data_dir, **kwargs)
