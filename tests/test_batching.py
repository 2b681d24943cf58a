"""ranking.batching: a free worker waits for the batch it can expect only while its peers
are busy, and never at one client. The work here is a sleep (it releases the GIL, as the
compute processes' pipes do), and each client pauses between requests as an HTTP round
trip does; that pause is what leaves a worker that takes only what is waiting with
batches of one."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ranking.batching import RequestBatcher


def _doubling(seconds: float):
    def run(batch: list[int]) -> list[int]:
        time.sleep(seconds)
        return [2 * x for x in batch]

    return run


def _closed_loop(batcher: RequestBatcher, clients: int, each: int, pause: float) -> list[int]:
    """`clients` threads, each sending `each` requests one after another; their answers."""
    def client(c: int) -> list[int]:
        got = []
        for i in range(each):
            got.append(batcher.submit(c * 1000 + i))
            time.sleep(pause)
        return got

    with ThreadPoolExecutor(clients) as pool:
        return [x for part in pool.map(client, range(clients)) for x in part]


def test_one_client_never_waits():
    """A lone request is computed at once, however long the allowed wait."""
    batcher = RequestBatcher(_doubling(0.0), max_batch=16, threads=2, wait_ms=2000)
    start = time.monotonic()
    assert [batcher.submit(i) for i in range(5)] == [0, 2, 4, 6, 8]
    assert time.monotonic() - start < 1.0  # five requests, none waited its 2 s
    assert list(batcher.sizes) == [1] * 5
    assert batcher.expected() == 1


def test_a_worker_with_a_free_peer_does_not_wait():
    """Two clients on two workers: the estimate is one request each, and the second
    request always finds a free worker, so no one waits."""
    batcher = RequestBatcher(_doubling(0.01), max_batch=16, threads=2, wait_ms=2000)
    start = time.monotonic()
    answers = _closed_loop(batcher, clients=2, each=10, pause=0.0)
    assert answers == [2 * (c * 1000 + i) for c in range(2) for i in range(10)]
    assert time.monotonic() - start < 5.0  # 20 requests of 10 ms; one 2 s wait would show


def test_waiting_gathers_the_requests_due_and_each_caller_gets_its_own_answer():
    clients, each = 8, 12
    want = sorted(2 * (c * 1000 + i) for c in range(clients) for i in range(each))
    mean = {}
    for wait_ms in (0.0, 200.0):
        batcher = RequestBatcher(_doubling(0.03), max_batch=16, threads=2, wait_ms=wait_ms)
        # in client order, each client's answers in the order it asked: each its own
        assert _closed_loop(batcher, clients, each, pause=0.005) == want
        sizes = list(batcher.sizes)
        assert sum(sizes) == clients * each
        mean[wait_ms] = sum(sizes) / len(sizes)
        stats = batcher.stats()
        assert stats["recent_batches"] == len(sizes) and stats["wait_ms"] == wait_ms
        assert stats["mean_batch"] == round(mean[wait_ms], 2)
    # eight clients on two workers: four due to each; taking only what is waiting, a worker
    # finds the stragglers of the pause
    assert mean[200.0] >= 3.0 and mean[200.0] > mean[0.0] + 0.5, mean


def test_a_wait_ends_at_its_limit_when_the_requests_do_not_come():
    """The estimate says four are due, but only one comes: it is computed after the
    wait, not held for good."""
    release = threading.Event()

    def run(batch: list[int]) -> list[int]:
        if batch[0] < 0:  # the peer's long batch
            release.wait(5)
        return batch

    batcher = RequestBatcher(run, max_batch=16, threads=2, wait_ms=50)
    batcher.recent.extend([8] * 64)  # eight in flight when each recent request arrived
    peer = threading.Thread(target=batcher.submit, args=(-1,))
    peer.start()
    time.sleep(0.1)  # the peer worker is now busy with it
    start = time.monotonic()
    assert batcher.submit(7) == 7
    waited = time.monotonic() - start
    release.set()
    peer.join(5)
    assert 0.04 <= waited < 2.0, waited
    assert list(batcher.sizes) == [1, 1]


def test_errors_still_reach_every_caller_of_the_batch():
    def run(batch: list[int]) -> list[object]:
        if 13 in batch:
            raise RuntimeError("the store is down")
        return [ValueError(f"bad {x}") if x % 2 else x for x in batch]

    batcher = RequestBatcher(run, max_batch=16, threads=2, wait_ms=20)
    assert batcher.submit(4) == 4
    with pytest.raises(ValueError, match="bad 3"):
        batcher.submit(3)
    with pytest.raises(RuntimeError, match="the store is down"):
        batcher.submit(13)
