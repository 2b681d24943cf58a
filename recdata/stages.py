"""Time and peak memory of each long stage, printed when it ends and kept for the result.

A data scientist whose run is killed by the out-of-memory killer needs to know which stage
grew, so every long stage reports its own peak resident memory, not the process's lifetime
peak. On Linux the kernel's high-water mark is reset at the start of a stage
(/proc/self/clear_refs) and read at its end (VmHWM); elsewhere a sampling thread stands in.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


@dataclass
class StageRecord:
    stage: str
    seconds: float
    peak_rss_gb: float

    def line(self) -> str:
        return f"[stage] {self.stage}: {self.seconds:.1f} s, peak RSS {self.peak_rss_gb:.2f} GB"


# every stage of this process, in order (a run's result copies the ones it ran)
RECORDS: list[StageRecord] = []


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_gb() -> float:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark; False where that is not possible."""
    try:
        with open(_CLEAR, "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


class _Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = current_rss_gb()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, current_rss_gb())


_OPEN: list[list[float]] = []  # running peak (GB) of each open stage, outermost first


def _hwm_gb() -> float:
    return (_status_kb("VmHWM") or 0) / 2**20


@contextlib.contextmanager
def stage(name: str, *, report: bool = True) -> Iterator[None]:
    """Measure the enclosed block; print one line on stderr at its end (unless `report`
    is False) and append it to RECORDS. Stages nest: resetting the mark for an inner stage
    first hands the peak so far to every enclosing one."""
    started = time.perf_counter()
    before = _hwm_gb()
    for running in _OPEN:
        running[0] = max(running[0], before)
    kernel = _reset_peak()
    sampler = None if kernel else _Sampler()
    if sampler is not None:
        sampler.start()
    mine = [0.0]
    _OPEN.append(mine)
    try:
        yield
    finally:
        _OPEN.pop()
        if sampler is not None:
            sampler.done.set()
            sampler.join()
            peak = sampler.peak
        else:
            peak = _hwm_gb()
        record = StageRecord(name, round(time.perf_counter() - started, 2),
                             round(max(peak, mine[0]), 3))
        RECORDS.append(record)
        release_memory()
        if report and not os.environ.get("INSTRUCTRANK_QUIET_STAGES"):
            from tqdm.auto import tqdm

            tqdm.write(record.line(), file=sys.stderr)


def release_memory() -> None:
    """Hand freed heap back to the kernel. glibc keeps what a stage freed in its arenas, so
    the resident set after a heavy stage stays at its peak and the next stage starts from
    there; collecting cycles and trimming the heap lets the next stage start from what is
    really held."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def records_since(start: int) -> list[dict]:
    return [asdict(r) for r in RECORDS[start:]]
