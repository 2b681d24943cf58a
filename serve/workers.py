"""Compute processes behind one HTTP process: `instructrank serve --workers N`.

A request's Python work holds the GIL, so a second core needs a second process. Letting
each process own its HTTP connections (uvicorn's own `--workers`) pins a keep-alive client
to one process for good: measured with 8 clients on 2 workers, the connections split 6:2
as often as 4:4, and the busy process set the pace (47-73 requests/s). Here one HTTP
process takes every request and N compute processes, each with its own recommender, take
*batches*: a dispatcher thread per process waits until its process is free, then hands it
every request waiting at that moment (`Recommender.answer`). A process that falls behind
is simply given less (ranking.batching, one batch in flight per process); under load the
batches grow and the fixed cost of each stage is shared; at one client a request is
computed at once, alone.

Requests travel as plain tuples and answers as `Recommendation`s or the error each
request raised, so one bad request never fails its batch-mates. A compute process that
dies is replaced (its batch answers 503, the next request finds a fresh one).
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from typing import Any

from ranking.batching import RequestBatcher
from recdata.errors import ConfigError, StoreUnavailableError

_RECOMMENDER: Any = None  # the compute process's own, loaded by `_load`
MAX_BATCH = 16


def _load(cfg_json: str) -> None:
    global _RECOMMENDER
    import gc
    import os

    from ranking.recommend import Recommender, RecommenderConfig

    parent = os.getppid()

    def orphaned() -> None:  # the HTTP process was killed: no one is left to answer
        import time

        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphaned, name="parent-check", daemon=True).start()
    _RECOMMENDER = Recommender.load(RecommenderConfig.model_validate_json(cfg_json))
    gc.freeze()


def _answer(requests: list[tuple]) -> list[Any]:
    return _RECOMMENDER.answer(requests)


def _health(_: object = None) -> dict[str, Any]:
    return _RECOMMENDER.health()


class WorkerPool:
    """`recommend()` and `health()` as a `Recommender` has them, computed in `n` processes
    (serve.http takes either)."""

    def __init__(self, cfg: Any, n: int) -> None:
        self.cfg_json, self.n = cfg.model_dump_json(), n
        self.pool = self._start()
        self.lock = threading.Lock()
        # one batch in flight per process: a process that is free takes what is waiting
        self.batcher = RequestBatcher(self._run, MAX_BATCH, threads=n)

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_load, initargs=(self.cfg_json,))
        # every process loads now, not on its first request: one task each, all at once
        barrier = [pool.submit(_health) for _ in range(self.n)]
        for done in barrier:
            try:
                done.result()
            except BrokenExecutor as exc:
                raise ConfigError(f"a compute process could not load the recommender: {exc}"
                                  "; run `instructrank recommend` with the same options to "
                                  "see why") from exc
        return pool

    def _run(self, requests: list[tuple]) -> list[Any]:
        pool = self.pool
        try:
            return pool.submit(_answer, requests).result()
        except BrokenExecutor:
            with self.lock:  # the first to see it replaces the pool; the batch is told why
                if self.pool is pool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    self.pool = self._start()
            raise StoreUnavailableError("a compute process died; the request can be "
                                        "retried") from None

    def recommend(self, user_id: Any, instruction: Any, k: int = 10, *, now: Any = None,
                  history: list | None = None, diversity: float | None = None) -> Any:
        return self.batcher.submit((user_id, instruction, k, now, history, diversity))

    def health(self) -> dict[str, Any]:
        return self.pool.submit(_health).result(timeout=30)

    def close(self) -> None:
        """Stop the compute processes (each finishes the batch it is on)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
