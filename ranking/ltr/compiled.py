"""The served ranker's trees compiled to machine code (lleaves, on LLVM): the same scores,
bit for bit, for about half the CPU of LightGBM's predictor.

LightGBM's own predictor walks every tree through its generic node arrays; at serving's
sizes (a batch's few hundred candidates, then each answer's occlusion rows) that walk was
~12% of a request's CPU. lleaves turns each tree into straight-line comparisons instead.

Why the scores stay equal to the bit: LightGBM adds the trees' outputs to a zero in tree
order, one double at a time. lleaves adds them the same way within one block of trees, so
the whole forest is compiled as one block (its default blocks of 34 trees regroup the sum,
which moves scores by ~1e-15 and could swap two near-equal candidates). LightGBM also reads
any value within 1e-35 of zero as zero before it compares (its bins put thresholds at
+-1e-35): `predict` does the same. Trees are not inlined: that would make scoring another
~30% faster but compiling ~7x slower (~19 s instead of ~3 s for ML-100k's 141 trees).

What is compiled is checked before it is used, or cached: rows built from the model's own
split thresholds (each value, a hair either side, zero, missing) are scored both ways, and
any difference keeps LightGBM's predictor, with a warning. The compiled object is cached
under a hash of the model text, the compiler's versions and this CPU (it is compiled for the
CPU it runs on), installed by rename only when it agrees and is whole, so each model
compiles once per machine and the serving processes load it in milliseconds; a cached
object that is cut short or disagrees is compiled again (as encoders.onnx_runtime does with
a damaged export).
"""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recdata.atomic_io import atomic_path, write_text_atomic

FORMAT = 2  # of what is cached: bump when the compile options below change
PROBE_ROWS = 512
# LightGBM's kZeroThreshold (`1e-35f`: the float nearest 1e-35, ~1.0000000180e-35): any
# |x| <= ZERO is read as 0, and thresholds sit at +-ZERO where a feature meets zero
ZERO = float(np.float32(1e-35))

Predict = Callable[[np.ndarray, int], np.ndarray]


def compiled_predictor(booster: Any, num_iteration: int | None, cache_dir: Path,
                       ) -> Predict | None:
    """`predict(x, threads)` -> the booster's scores of rows `x` (its first `num_iteration`
    trees; None: all), from the compiled forest; None when it cannot be had here (lleaves
    missing, a compile failure, a check that differs), with a warning saying why, so the
    caller keeps LightGBM's own predictor."""
    try:  # a compiler problem (or lleaves missing) must not stop serving: LightGBM scores
        text = booster.model_to_string(num_iteration=num_iteration)
        model_file, binary = _cache_files(text, Path(cache_dir))
        probe = probe_rows(booster, num_iteration)
        want = booster.predict(probe, num_iteration=num_iteration, num_threads=1)
        if binary.exists():
            model = _loaded(model_file, binary)
            if model is not None and not _difference(model, probe, want):
                return _predictor(model)
            binary.unlink(missing_ok=True)  # cut short, or not this model's: made again
        model, tmp = _compiled(model_file, binary)
        try:
            worst = _difference(model, probe, want)
            if not worst and _whole_object(tmp):
                os.replace(tmp, binary)
        finally:
            tmp.unlink(missing_ok=True)
    except Exception as exc:
        warnings.warn(f"the ranker could not be compiled ({type(exc).__name__}: {exc}); "
                      "scoring with LightGBM's predictor", RuntimeWarning, stacklevel=2)
        return None
    if worst:
        warnings.warn(f"the compiled ranker's scores differ from LightGBM's (by up to "
                      f"{worst:.3g} on {PROBE_ROWS} check rows); scoring with LightGBM's "
                      "predictor", RuntimeWarning, stacklevel=2)
        return None
    return _predictor(model)


def _predictor(model: Any) -> Predict:
    def predict(x: np.ndarray, threads: int = 1) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not len(x):
            return np.zeros(0)
        x = np.where(np.abs(x) <= ZERO, 0.0, x)  # as LightGBM reads its input (NaN stays)
        return model.predict(x, n_jobs=max(1, threads))

    return predict


def _difference(model: Any, probe: np.ndarray, want: np.ndarray) -> float:
    """The largest gap between the compiled scores of `probe` and LightGBM's `want`: 0.0
    when they are equal to the bit (missing where LightGBM's are), inf where only one is."""
    got = _predictor(model)(probe, 1)
    if np.array_equal(got, want, equal_nan=True):
        return 0.0
    return float(np.nanmax(np.where(np.isnan(got) != np.isnan(want), np.inf,
                                    np.abs(got - want))))


def _cache_files(text: str, cache_dir: Path) -> tuple[Path, Path]:
    """(the model text lleaves reads, the compiled object) for `text` on this CPU."""
    from importlib.metadata import version

    import llvmlite.binding as llvm

    llvm.initialize()
    llvm.initialize_native_target()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot always detect them; lleaves then compiles without
        features = ""
    cpu = f"{llvm.get_host_cpu_name()}:{features}"
    key = hashlib.sha1("\x00".join([text, version("lleaves"), version("llvmlite"), cpu,
                                    str(FORMAT)]).encode()).hexdigest()[:16]
    model_file = cache_dir / f"{key}.txt"
    write_text_atomic(model_file, text)  # lleaves reads the model from a file
    return model_file, cache_dir / f"{key}.o"


OPTIONS = {"finline": False}


def _loaded(model_file: Path, binary: Path) -> Any:
    """The cached object, or None when it is not a whole object file (loading a cut one
    would abort the process, not raise)."""
    from lleaves import Model

    if not _whole_object(binary):
        return None
    model = Model(model_file=str(model_file))
    model.compile(cache=str(binary), fblocksize=max(1, model.num_trees()), **OPTIONS)
    return model


def _compiled(model_file: Path, binary: Path) -> tuple[Any, Path]:
    """A fresh compile, its object written to a temporary file beside `binary` (installed
    by the caller once it has checked it)."""
    from lleaves import Model

    model = Model(model_file=str(model_file))
    tmp, _ = atomic_path(binary)
    tmp.unlink()  # lleaves loads a cache file that exists, and writes one that does not
    model.compile(cache=str(tmp), fblocksize=max(1, model.num_trees()), **OPTIONS)
    return model, tmp


def _whole_object(path: Path) -> bool:
    """An ELF object whose section header table (written last) lies inside the file: lleaves
    writes the object from an LLVM callback that cannot report a failed write (a full disk)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 64 or head[:5] != b"\x7fELF\x02":  # 64-bit ELF
        return False
    order = "<" if head[5] == 1 else ">"
    (shoff,) = struct.unpack_from(order + "Q", head, 0x28)
    shentsize, shnum = struct.unpack_from(order + "HH", head, 0x3A)
    return shoff > 0 and shoff + shentsize * shnum <= size


def probe_rows(booster: Any, num_iteration: int | None, rows: int = PROBE_ROWS,
               seed: int = 0) -> np.ndarray:
    """Rows that take both branches of the model's splits: each feature's values are drawn
    from its thresholds, the next doubles either side of them, zero, values LightGBM reads as
    zero, and missing (seeded)."""
    dump = booster.dump_model(num_iteration=num_iteration)
    n = booster.num_feature()
    values: list[set[float]] = [{0.0, ZERO / 10, -ZERO / 10} for _ in range(n)]

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" not in node:
            return
        t = float(node["threshold"]) if not isinstance(node["threshold"], str) else None
        if t is not None:
            values[node["split_feature"]].update(
                (t, float(np.nextafter(t, -np.inf)), float(np.nextafter(t, np.inf))))
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in dump["tree_info"]:
        walk(tree["tree_structure"])
    rng = np.random.default_rng(seed)
    x = np.empty((rows, n))
    for j, found in enumerate(values):
        pool = np.array([*sorted(found), np.nan])
        x[:, j] = pool[rng.integers(0, len(pool), rows)]
    return x
