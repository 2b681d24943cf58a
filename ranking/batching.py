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
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class RequestBatcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch: int,
                 threads: int = 1) -> None:
        """`threads`: batches in flight at once (one per compute process behind `run`)."""
        self.run, self.max_batch = run, max_batch
        self.waiting: queue.SimpleQueue[tuple[Any, Future]] = queue.SimpleQueue()
        for i in range(threads):
            threading.Thread(target=self._loop, name=f"request-batcher-{i}",
                             daemon=True).start()

    def submit(self, request: Any) -> Any:
        """The answer to `request`, computed with whatever else is waiting."""
        answer: Future = Future()
        self.waiting.put((request, answer))
        return answer.result()

    def _loop(self) -> None:
        while True:
            batch = [self.waiting.get()]
            while len(batch) < self.max_batch:  # what is already waiting, no more
                try:
                    batch.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
            try:
                answers = self.run([request for request, _ in batch])
            except BaseException as exc:  # every caller of the batch hears of it
                answers = [exc] * len(batch)
            for (_, future), answer in zip(batch, answers, strict=True):
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
