"""Requests that arrive together are computed together.

Most of an online request's cost is fixed per call, not per request: a polars query, an
ONNX Runtime run, a LightGBM call, a store read. `RequestBatcher` runs one worker thread
that takes every request waiting when it is free and computes them as one batch
(`Recommender.recommend_many`), so under load the fixed costs are shared and at one client
nothing waits: a request that finds the worker idle is computed at once, alone. Callers
block on their own answer; an error in a batch reaches every caller of that batch (the
store being down is everyone's 503), while a bad request is refused before it is queued.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class RequestBatcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch: int) -> None:
        self.run, self.max_batch = run, max_batch
        self.waiting: queue.SimpleQueue[tuple[Any, Future]] = queue.SimpleQueue()
        self.worker = threading.Thread(target=self._loop, name="request-batcher", daemon=True)
        self.worker.start()

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
                for _, answer in batch:
                    answer.set_exception(exc)
                continue
            for (_, answer), result in zip(batch, answers, strict=True):
                answer.set_result(result)
