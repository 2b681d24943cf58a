"""Compute processes behind one HTTP process: `instructrank serve --workers N`.

A request's Python work holds the GIL, so a second core needs a second process. Letting
each process own its HTTP connections (uvicorn's own `--workers`) pins a keep-alive client
to one process for good: measured with 8 clients on 2 workers, the connections split 6:2
as often as 4:4, and the busy process set the pace (47-73 requests/s). Here one HTTP
process takes every request and N compute processes, each with its own recommender, take
*batches*: a dispatcher thread per process waits until its process is free, then hands it
every request waiting at that moment (`Recommender.answer`), and, while the other processes
are busy, those due within `wait_ms` (`serve --batch-wait-ms`). A process that falls behind
is simply given less (ranking.batching, one batch in flight per process); under load the
batches grow and the fixed cost of each stage is shared; at one client a request is
computed at once, alone.

Requests travel as plain tuples and answers as `Recommendation`s or the error each
request raised, so one bad request never fails its batch-mates. A compute process that
dies is replaced (its batch answers 503, the next request finds a fresh one).

Each dispatcher thread owns one process and talks to it over a pipe of its own: it sends
a batch and blocks on the answer. A ProcessPoolExecutor in between (a queue-feeding
thread, a result-collecting thread, a future) cost the HTTP process CPU and thread
switches on every batch, on the two cores the compute processes need.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

from ranking.batching import RequestBatcher
from recdata.errors import ConfigError, StoreUnavailableError

_RECOMMENDER: Any = None  # the compute process's own, loaded by `_load`
MAX_BATCH = 16
LOAD_SECONDS = 600  # a compute process that has not loaded by then is taken as failed


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


def _serve(conn: Any, cfg_json: str) -> None:
    """A compute process: load, say so, then answer each message until the pipe closes.
    Every reply is ("ok", value) or ("error", an error that survives pickling)."""
    from recdata.errors import transportable

    try:
        _load(cfg_json)
        conn.send(("ok", None))
    except BaseException as exc:
        conn.send(("error", transportable(exc)))
        return
    while True:
        try:
            op, arg = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", _RECOMMENDER.answer(*arg) if op == "answer"
                     else _RECOMMENDER.health())
        except BaseException as exc:  # the store down: the whole batch's answer
            reply = ("error", transportable(exc))
        conn.send(reply)


class _Worker:
    """One compute process and the pipe to it."""

    def __init__(self, cfg_json: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, cfg_json), daemon=True,
                                name="instructrank-compute")
        self.proc.start()
        child.close()
        self.lock = threading.Lock()  # one message in flight

    def loaded(self) -> None:
        """Wait until the process has loaded its recommender; raise why it could not."""
        if not self.conn.poll(LOAD_SECONDS):
            self.stop()
            raise ConfigError(f"a compute process did not load the recommender within "
                              f"{LOAD_SECONDS} s")
        self._reply()

    def call(self, op: str, arg: Any = None) -> Any:
        with self.lock:
            self.conn.send((op, arg))
            return self._reply()

    def _reply(self) -> Any:
        kind, value = self.conn.recv()
        if kind == "error":
            raise value
        return value

    def stop(self) -> None:
        self.conn.close()
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=10)


class WorkerPool:
    """`recommend()` and `health()` as a `Recommender` has them, computed in `n` processes
    (serve.http takes either)."""

    def __init__(self, cfg: Any, n: int, wait_ms: float = 0.0) -> None:
        self.cfg_json, self.n = cfg.model_dump_json(), n
        self.workers = self._start(n)
        self.lock = threading.Lock()
        self._mine = threading.local()  # a dispatcher thread's process: its index
        self._claimed = 0
        # one batch in flight per process: a process that is free takes what is waiting
        # (and, while the others are busy, what is due within wait_ms)
        self.batcher = RequestBatcher(self._run, MAX_BATCH, threads=n, wait_ms=wait_ms)

    def _start(self, n: int) -> list[_Worker]:
        # every process loads now, not on its first request, all at once
        workers = [_Worker(self.cfg_json) for _ in range(n)]
        try:
            for w in workers:
                w.loaded()
        except Exception as exc:  # its error, or its pipe closing as it died
            for w in workers:
                w.stop()
            raise ConfigError(f"a compute process could not load the recommender: {exc}"
                              "; run `instructrank recommend` with the same options to "
                              "see why") from exc
        return workers

    def _index(self) -> int:
        """The calling dispatcher thread's process (each thread takes one, once)."""
        index = getattr(self._mine, "index", None)
        if index is None:
            with self.lock:
                index = self._mine.index = self._claimed % self.n
                self._claimed += 1
        return index

    def _alone(self, worker: _Worker) -> bool:
        """No other process is mid-batch: a lone request may spread over the idle cores
        (Recommender.recommend_many's `alone`); while one is, it keeps to one thread."""
        return not any(w.lock.locked() for w in self.workers if w is not worker)

    def _run(self, requests: list[tuple]) -> list[Any]:
        i = self._index()
        worker = self.workers[i]
        try:
            return worker.call("answer", (requests, self._alone(worker)))
        except (EOFError, OSError):
            # the process died under this batch: the batch is told why, the next one finds
            # a fresh process (this thread loads it; the others go on serving)
            worker.stop()
            self.workers[i] = self._start(1)[0]
            raise StoreUnavailableError("a compute process died; the request can be "
                                        "retried") from None

    def recommend(self, user_id: Any, instruction: Any, k: int = 10, *, now: Any = None,
                  history: list | None = None, diversity: float | None = None) -> Any:
        return self.batcher.submit((user_id, instruction, k, now, history, diversity))

    def health(self) -> dict[str, Any]:
        worker = self.workers[0]
        if not worker.lock.acquire(timeout=30):  # behind a batch that long: not healthy
            raise StoreUnavailableError("the compute process did not answer within 30 s")
        try:
            worker.conn.send(("health", None))
            return {**worker._reply(), "workers": self.n, "batching": self.batcher.stats()}
        except (EOFError, OSError):
            raise StoreUnavailableError("a compute process died; it is replaced on the "
                                        "next request") from None
        finally:
            worker.lock.release()

    def close(self) -> None:
        """Stop the compute processes (each finishes the batch it is on, for 30 s)."""
        for worker in self.workers:
            held = worker.lock.acquire(timeout=30)
            try:
                worker.stop()
            finally:
                if held:
                    worker.lock.release()
