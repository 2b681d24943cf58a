"""Requests that arrive together are computed together.

Most of an online request's cost is fixed per call, not per request: a polars query, an
ONNX Runtime run, a LightGBM call, a store read. `RequestBatcher` runs worker threads that
each take every request waiting when they are free and compute them as one batch
(`Recommender.recommend_many`, or a compute process: serve.workers), so under load the
fixed costs are shared and at one client nothing waits: a request that finds a worker idle
is computed at once, alone. Callers block on their own answer. `run` answers each request
of a batch with a result or the error that request raised (one bad request fails alone);
an error `run` raises reaches every caller of that batch (the store being down is
everyone's 503).

Taking only what is already waiting keeps batches small under steady load: when a batch
is answered, its callers' next requests are still on their way back (through HTTP, on the
same cores), so the free worker finds one or two and leaves. With 8 clients on 2 compute
processes the mean batch was 2.1 (most of them single requests) where 4 were in play, and a
request costs about twice as much alone as in a batch of 8. `wait_ms` lets a free worker
wait that long for the batch it can expect, the recent concurrency (the median number of
requests in flight when one arrives, over the last 64) shared among the workers, but only
while every other worker is busy: a worker with a free peer, or one that expects a single
request (one client), never waits. The dynamic batching of model servers (a queue delay)
with the delay taken only when more requests are due.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

RECENT = 64  # arrivals whose in-flight counts estimate the concurrency


class RequestBatcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch: int,
                 threads: int = 1, wait_ms: float = 0.0) -> None:
        """`threads`: batches in flight at once (one per compute process behind `run`);
        `wait_ms`: how long a free worker may wait for the batch it expects (0: never)."""
        self.run, self.max_batch, self.threads = run, max_batch, threads
        self.wait_s = wait_ms / 1000
        self.waiting: queue.SimpleQueue[tuple[Any, Future]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.in_flight = 0  # submitted and not yet answered
        self.recent: deque[int] = deque([1], maxlen=RECENT)  # in_flight at each arrival
        self.free = 0  # workers waiting for a first request
        self.sizes: deque[int] = deque(maxlen=1024)  # the last batches' sizes (stats)
        for i in range(threads):
            threading.Thread(target=self._loop, name=f"request-batcher-{i}",
                             daemon=True).start()

    def submit(self, request: Any) -> Any:
        """The answer to `request`, computed with whatever else is waiting."""
        answer: Future = Future()
        with self.lock:
            self.in_flight += 1
            self.recent.append(self.in_flight)
        self.waiting.put((request, answer))
        try:
            return answer.result()
        finally:
            with self.lock:
                self.in_flight -= 1

    def expected(self) -> int:
        """The batch a worker can expect: the recent concurrency over the workers."""
        with self.lock:
            recent = sorted(self.recent)
        return min(self.max_batch, -(-recent[len(recent) // 2] // self.threads))

    def stats(self) -> dict[str, Any]:
        """How batching goes (for /healthz): the mean of the last batches, what a worker
        expects now and the wait allowed, to tune `wait_ms` against."""
        sizes = list(self.sizes)
        return {"recent_batches": len(sizes),
                "mean_batch": round(sum(sizes) / len(sizes), 2) if sizes else None,
                "expected_batch": self.expected(), "wait_ms": self.wait_s * 1000}

    def _take(self) -> list[tuple[Any, Future]]:
        with self.lock:
            self.free += 1
        first = self.waiting.get()
        with self.lock:
            self.free -= 1
            peers_busy = self.free == 0
        batch = [first]
        want = self.expected() if self.wait_s and peers_busy else 1
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:  # what is already waiting
                batch.append(self.waiting.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if len(batch) >= want or left <= 0:
                break
            try:  # and, while the batch is short of what is due, what arrives in time
                batch.append(self.waiting.get(timeout=left))
            except queue.Empty:
                break
        self.sizes.append(len(batch))
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            try:
                answers = self.run([request for request, _ in batch])
            except BaseException as exc:  # every caller of the batch hears of it
                answers = [exc] * len(batch)
            for (_, future), answer in zip(batch, answers, strict=True):
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
