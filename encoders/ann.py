"""Top-M retrieval of item text vectors: exact below `exact_below` items, faiss HNSW above.

Why faiss (IndexHNSWFlat, inner product), from `bench/ann.py` (bench/results/ann.csv; k = 200,
500 encoded requests, one thread, 2 cores shared with other jobs; p99 = 99th percentile over
queries of each query's fastest of 3 calls). At 100,000 vectors (Last.fm artist vectors plus
noise; synthetic), M = 16, ef_construction = 128:

    library   ef_search  recall@200  p50 ms  p99 ms  build s  file MB
    faiss        300       0.958     0.76    0.96     36.5     168
    hnswlib      300       0.958     0.75    1.00     35.7     168
    usearch      300       0.958     1.96    3.21     82.4     168
    faiss        400       0.976     1.05    1.32
    hnswlib      400       0.976     0.92    1.23
    exact         -        1         12.8    13.7      -       154

Graphs of the same M give the same recall in all three (they are all HNSW); faiss and hnswlib
are tied on latency within the noise of a shared machine (at 17,632 real artists hnswlib was
0.1-0.2 ms faster, at 100k faiss and hnswlib swap places between ef 300 and 400); usearch
(f32) is 2.5-3.5x slower to query and ~2.2x slower to build. All three gave identical results
from two one-thread builds. What decides between faiss and hnswlib: faiss memory-maps the
stored vectors (IO_FLAG_MMAP_IFC, ~90% of the file) where hnswlib maps nothing, and faiss-cpu
ships manylinux wheels where hnswlib 0.8.0 is a source distribution that pip compiles (a C++
toolchain at install time). usearch alone maps the whole index (`view=True`), not worth 3x
the query time here.

Defaults: M (`connectivity`) 16 and ef_construction 128: M = 32 costs 20% more build time and
8% more disk and, at the same p99, reaches about the same recall. ef_search 400, not the
cheapest setting above 0.95 (300: 0.958 at 100k), because recall falls as the catalogue
grows (ef 300: 0.977 at 17,632 real artists, 0.958 at 100k) and 400 keeps a margin (0.976 at
100k, 0.987 at 17k) for +0.4 ms p99. ef is raised to k per query: unlike hnswlib and usearch,
faiss does not do that itself (ef 64 with k = 200 gave recall 0.78 at 17k).

Why exact below 20,000 items: the dense product over 17,632 artists costs 1.8 ms a query
(p99 2.1) and is exact, with no index to build or ship; at 100,000 it costs 12.8 ms.

Determinism: the graph is built with one OpenMP thread (set for the build, then restored)
and the level generator reseeded with `seed`; same seed, same graph, same results.
Memory mapping: `FaissIndex.load(mmap=True)` maps the stored vectors (read-only) and reads the
graph links (~2 x connectivity x 4 bytes per item) into memory; `ExactIndex.load(mmap=True)`
maps its .npy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recdata.errors import ConfigError, InvalidRequestError, UnknownNameError

ANN_BACKEND = "faiss"
BACKENDS = ("auto", "exact", ANN_BACKEND)
META_FILE = "index.json"
FORMAT_VERSION = 1
# exact search scores queries in blocks of at most this many float32 scores (64 MiB)
_BLOCK_SCORES = 16 * 2**20
_NORM_TOLERANCE = 1e-3


class ANNConfig(BaseModel):
    """How to index item vectors; the HNSW fields apply to the faiss backend only."""

    model_config = ConfigDict(extra="forbid")

    backend: str = "auto"
    exact_below: int = Field(20_000, ge=0)
    # HNSW "M": links per node on the upper layers (2 x M on the bottom one)
    connectivity: int = Field(16, ge=2)
    ef_construction: int = Field(128, ge=1)
    # candidates kept while searching; raised to k when a query asks for more
    ef_search: int = Field(400, ge=1)
    seed: int = 42

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        if name not in BACKENDS:
            raise UnknownNameError("ANN backend", name, list(BACKENDS))
        return name


class VectorIndex(ABC):
    """Items' unit-norm vectors, searchable by inner product (= cosine); row i = position i."""

    backend: ClassVar[str]
    library: ClassVar[str]
    index_file: ClassVar[str]

    def __init__(self, n: int, dim: int) -> None:
        self.n, self.dim = n, dim

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions int64 n_q x k, cosine scores float64 n_q x k), best first; k is clipped
        to the catalogue size."""

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """What built the index, for index.json."""

    @staticmethod
    @abstractmethod
    def library_version() -> str: ...

    @abstractmethod
    def _write(self, path: Path) -> None:
        """Write the index file to `path`."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> VectorIndex:
        """Open an index saved by `save`. With `mmap=True` the exact backend maps its vectors
        (.npy, mmap_mode="r") and faiss maps the stored vectors but reads its graph links into
        memory; `mmap=False` reads everything into memory."""

    def save(self, directory: str | Path) -> Path:
        """Write the index file and index.json into a temporary folder beside `directory`,
        then rename it into place (an older index there is moved aside first, then removed),
        so `directory` never holds half an index."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
        aside: Path | None = None
        try:
            self._write(tmp / self.index_file)
            meta = {"format": FORMAT_VERSION, "backend": self.backend, "n": self.n,
                    "dim": self.dim, "params": self.params, "file": self.index_file,
                    "library": self.library, "library_version": self.library_version()}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            if directory.exists():
                aside = Path(tempfile.mkdtemp(dir=directory.parent,
                                              prefix=f".{directory.name}.old."))
                os.replace(directory, aside / directory.name)
            os.replace(tmp, directory)
        except BaseException:
            if aside is not None and not directory.exists():
                os.replace(aside / directory.name, directory)
            shutil.rmtree(tmp, ignore_errors=True)
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
            raise
        if aside is not None:
            # an index loaded with mmap=True from here keeps reading its (now unlinked) file
            shutil.rmtree(aside, ignore_errors=True)
        return directory

    def _check_queries(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidRequestError(f"queries must be an array of shape (n, {self.dim}); "
                                      f"got shape {np.shape(queries)}")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidRequestError(f"k must be a positive integer; got {k!r}")
        return q, min(int(k), self.n)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, dim={self.dim}, params={self.params})"


def _exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product, ties by position; queries scored in blocks to bound memory."""
    n_q = len(queries)
    positions = np.empty((n_q, k), dtype=np.int64)
    scores = np.empty((n_q, k), dtype=np.float64)
    if n_q == 0 or k == 0:
        return positions, scores
    block = max(1, _BLOCK_SCORES // max(1, len(vectors)))
    for start in range(0, n_q, block):
        s = queries[start:start + block] @ vectors.T
        if k < s.shape[1]:
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(s.shape[1]), s.shape)
        top_scores = np.take_along_axis(s, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        positions[start:start + block] = np.take_along_axis(top, order, axis=1)
        scores[start:start + block] = np.take_along_axis(top_scores, order, axis=1)
    return positions, scores


class ExactIndex(VectorIndex):
    """A dense product over all vectors: exact, and cheap for small catalogues. `load` maps
    vectors.npy (np.load(mmap_mode="r")) unless `mmap=False`."""

    backend = "exact"
    library = "numpy"
    index_file = "vectors.npy"

    def __init__(self, vectors: np.ndarray) -> None:
        super().__init__(len(vectors), vectors.shape[1])
        self.vectors = vectors

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q, k = self._check_queries(queries, k)
        return _exact_topk(self.vectors, q, k)

    @property
    def params(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def library_version() -> str:
        return np.__version__

    def _write(self, path: Path) -> None:
        with path.open("wb") as f:
            np.save(f, np.ascontiguousarray(self.vectors, dtype=np.float32))

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> ExactIndex:
        meta = _read_meta(Path(directory), cls.backend)
        vectors = np.load(Path(directory) / meta["file"], mmap_mode="r" if mmap else None)
        return cls(vectors)


class FaissIndex(VectorIndex):
    """faiss IndexHNSWFlat with inner product. `load(mmap=True)` memory-maps the stored vectors
    (IO_FLAG_MMAP_IFC, read-only) and reads the graph links into memory; `mmap=False` reads
    everything. Rows the graph returns fewer than k items for (faiss pads with -1) are answered
    by exact search over the stored vectors instead."""

    backend = ANN_BACKEND
    library = "faiss-cpu"
    index_file = "index.faiss"

    def __init__(self, index: Any, params: dict[str, Any]) -> None:
        super().__init__(int(index.ntotal), int(index.d))
        self.index = index
        self._params = dict(params)

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: ANNConfig) -> FaissIndex:
        faiss = _import_faiss()
        index = faiss.IndexHNSWFlat(vectors.shape[1], cfg.connectivity,
                                    faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
        # levels are drawn from this generator (faiss seeds it 12345 in the constructor)
        index.hnsw.rng = faiss.RandomGenerator(cfg.seed)
        # one thread: concurrent insertion makes the graph depend on thread timing
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            if len(vectors):
                index.add(vectors)
        finally:
            faiss.omp_set_num_threads(threads)
        params = {"connectivity": cfg.connectivity, "ef_construction": cfg.ef_construction,
                  "ef_search": cfg.ef_search, "seed": cfg.seed}
        return cls(index, params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q, k = self._check_queries(queries, k)
        if k == 0 or len(q) == 0:
            return np.empty((len(q), k), dtype=np.int64), np.empty((len(q), k), dtype=np.float64)
        faiss = _import_faiss()
        # per call, so concurrent searches with different k never share a setting
        ef = max(int(self._params["ef_search"]), k)
        scores, positions = self.index.search(q, k, params=faiss.SearchParametersHNSW(
            efSearch=ef))
        positions = positions.astype(np.int64, copy=False)
        scores = scores.astype(np.float64)
        short = np.flatnonzero((positions < 0).any(axis=1))
        if len(short):
            vectors = self.index.reconstruct_n(0, self.n)
            positions[short], scores[short] = _exact_topk(vectors, q[short], k)
        return positions, scores

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @staticmethod
    def library_version() -> str:
        return str(_import_faiss().__version__)

    def _write(self, path: Path) -> None:
        _import_faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> FaissIndex:
        faiss = _import_faiss()
        meta = _read_meta(Path(directory), cls.backend)
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(Path(directory) / meta["file"]), flags)
        return cls(index, meta["params"])


INDEX_TYPES: dict[str, type[VectorIndex]] = {"exact": ExactIndex, ANN_BACKEND: FaissIndex}


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("the 'faiss' ANN backend needs the faiss-cpu package "
                          "(pip install faiss-cpu)") from e
    return faiss


def _read_meta(directory: Path, expected: str | None = None) -> dict[str, Any]:
    path = directory / META_FILE
    if not path.exists():
        raise ConfigError(f"{directory} is not a vector index folder (no {META_FILE})")
    meta = json.loads(path.read_text())
    if expected is not None and meta.get("backend") != expected:
        raise ConfigError(f"{directory} holds a {meta.get('backend')!r} index, "
                          f"not {expected!r}; open it with load_index")
    return meta


def resolve_backend(n: int, cfg: ANNConfig) -> str:
    """The backend `build_index` uses for `n` items: "auto" means exact below
    `cfg.exact_below` items and faiss from there on."""
    if cfg.backend == "auto":
        return "exact" if n < cfg.exact_below else ANN_BACKEND
    return cfg.backend


def build_index(vectors: np.ndarray, cfg: ANNConfig | None = None) -> VectorIndex:
    """Index `vectors` (n x d, unit-norm float32; row i is item position i)."""
    cfg = cfg or ANNConfig()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ConfigError(f"vectors must be a 2-d array (n, d) with d >= 1; got shape "
                          f"{np.shape(vectors)}")
    if len(x):
        norms = np.linalg.norm(x, axis=1)
        bad = np.flatnonzero(~(np.abs(norms - 1.0) <= _NORM_TOLERANCE))
        if len(bad):
            raise ConfigError(f"vectors must be L2-normalised (inner product = cosine); "
                              f"{len(bad)} row(s) are not, e.g. row {bad[0]} with norm "
                              f"{norms[bad[0]]:.4g}")
    backend = resolve_backend(len(x), cfg)
    if backend == "exact":
        return ExactIndex(x)
    return FaissIndex.build(x, cfg)


def load_index(directory: str | Path, mmap: bool = True) -> VectorIndex:
    """Open an index written by `VectorIndex.save`, of whichever backend index.json names;
    `mmap` as in `VectorIndex.load` (exact: maps all; faiss: maps the vectors, loads the graph)."""
    meta = _read_meta(Path(directory))
    name = meta.get("backend")
    if name not in INDEX_TYPES:
        raise UnknownNameError("ANN backend", str(name), list(INDEX_TYPES))
    return INDEX_TYPES[name].load(directory, mmap=mmap)


def index_for(vectors: np.ndarray, cfg: ANNConfig, folder: Path | None) -> VectorIndex:
    """The index of `vectors`, built once and kept under `folder/ann-<hash>` (the hash of
    the vectors and the config): later processes, the service among them, map it from
    disk instead of building it. Without a folder it is built in memory."""
    if folder is None:
        return build_index(vectors, cfg)
    import hashlib

    h = hashlib.sha1(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    h.update(cfg.model_dump_json().encode())
    h.update(str(FORMAT_VERSION).encode())
    directory = Path(folder) / f"ann-{h.hexdigest()[:12]}"
    if not (directory / META_FILE).exists():
        build_index(vectors, cfg).save(directory)
    return load_index(directory, mmap=True)
