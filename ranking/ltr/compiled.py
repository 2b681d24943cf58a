"""The served ranker's trees compiled to machine code (lleaves, on LLVM): the same scores,
bit for bit, in about half the CPU.

LightGBM's own predictor walks every tree through its generic node arrays; at serving's
sizes (a batch's few hundred candidates, then each answer's occlusion rows) that walk was
~12% of a request's CPU. lleaves turns each tree into straight-line comparisons instead.

Why the scores stay equal to the bit: LightGBM adds the trees' outputs to a zero in tree
order, one double at a time. lleaves adds them the same way within one block of trees, so
the whole forest is compiled as one block (its default blocks of 34 trees regroup the sum,
which moves scores by ~1e-15 and could swap two near-equal candidates). Trees are not
inlined: that would make scoring another ~30% faster but compiling ~7x slower (~19 s instead
of ~3 s for ML-100k's 141 trees), and every model is compiled once per machine.

What is compiled is checked before it is used: rows built from the model's own split
thresholds (each value, a hair either side, zero, missing) are scored both ways, and any
difference keeps LightGBM's predictor, with a warning. The compiled object is cached under a
hash of the model text, the compiler's versions and this CPU (it is compiled for the CPU it
runs on), written atomically, so each model compiles once per machine and the serving
processes load it in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recdata.atomic_io import atomic_path, write_text_atomic

FORMAT = 1  # of what is cached: bump when the compile options below change
PROBE_ROWS = 512

Predict = Callable[[np.ndarray, int], np.ndarray]


def compiled_predictor(booster: Any, num_iteration: int | None, cache_dir: Path,
                       ) -> Predict | None:
    """`predict(x, threads)` -> the booster's scores of rows `x` (its first `num_iteration`
    trees; None: all), from the compiled forest; None when it cannot be had here (lleaves
    missing, a compile failure, a check that differs), with a warning saying why, so the
    caller keeps LightGBM's own predictor."""
    try:  # a compiler problem (or lleaves missing) must not stop serving: LightGBM scores
        model = _compiled(booster, num_iteration, Path(cache_dir))

        def predict(x: np.ndarray, threads: int = 1) -> np.ndarray:
            return model.predict(x, n_jobs=max(1, threads))

        probe = probe_rows(booster, num_iteration)
        want = booster.predict(probe, num_iteration=num_iteration, num_threads=1)
        got = predict(probe)
    except Exception as exc:
        warnings.warn(f"the ranker could not be compiled ({type(exc).__name__}: {exc}); "
                      "scoring with LightGBM's predictor", RuntimeWarning, stacklevel=2)
        return None
    if not np.array_equal(want, got, equal_nan=True):
        worst = float(np.nanmax(np.abs(want - got)))
        warnings.warn(f"the compiled ranker's scores differ from LightGBM's (by up to "
                      f"{worst:.3g} on {PROBE_ROWS} check rows); scoring with LightGBM's "
                      "predictor", RuntimeWarning, stacklevel=2)
        return None
    return predict


def _compiled(booster: Any, num_iteration: int | None, cache_dir: Path) -> Any:
    from importlib.metadata import version

    import llvmlite.binding as llvm
    from lleaves import Model

    text = booster.model_to_string(num_iteration=num_iteration)
    llvm.initialize()
    llvm.initialize_native_target()
    cpu = f"{llvm.get_host_cpu_name()}:{llvm.get_host_cpu_features().flatten()}"
    key = hashlib.sha1("\x00".join([text, version("lleaves"), version("llvmlite"), cpu,
                                    str(FORMAT)]).encode()).hexdigest()[:16]
    model_file, binary = cache_dir / f"{key}.txt", cache_dir / f"{key}.o"
    write_text_atomic(model_file, text)  # lleaves reads the model from a file
    model = Model(model_file=str(model_file))
    options = {"fblocksize": max(1, model.num_trees()), "finline": False}
    if binary.exists():
        model.compile(cache=str(binary), **options)
        return model
    tmp, binary = atomic_path(binary)
    tmp.unlink()  # lleaves loads a cache file that exists, and writes one that does not
    try:
        model.compile(cache=str(tmp), **options)
        os.replace(tmp, binary)
    finally:
        tmp.unlink(missing_ok=True)
    return model


def probe_rows(booster: Any, num_iteration: int | None, rows: int = PROBE_ROWS,
               seed: int = 0) -> np.ndarray:
    """Rows that take both branches of the model's splits: each feature's values are drawn
    from its thresholds, the next doubles either side of them, zero and missing (seeded)."""
    dump = booster.dump_model(num_iteration=num_iteration)
    n = booster.num_feature()
    values: list[set[float]] = [{0.0} for _ in range(n)]

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
