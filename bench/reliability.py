"""The online store fails under load: what callers see during the outage and after it.

    .venv/bin/python bench/reliability.py     # bench/results/reliability.csv

`instructrank serve --workers 2` on loopback answers `--clients` (8) client threads, each
sending generated requests back to back (bench/latency.py's stream: known, unknown and
anonymous users, every instruction distinct) until `--requests` (2,000) of its requests have
met a working store; those that meet the outage come on top (a client does not back off:
the worst case for the service). `--outage-after` (20) s into the load the online store is
taken away for `--outage` (10) s and given back, while a poller reads `/readyz` every
0.2 s. The service is never restarted. Outages:

- `redis-stopped`: redis-server shut down (its data saved to its dump file first), then
  started again from that dump: connections are refused meanwhile.
- `redis-paused`: redis-server frozen (SIGSTOP) then resumed (SIGCONT): connections hang,
  which only a read timeout ends.
- `sqlite-locked`: another process holds an exclusive lock on the online store's file
  (`BEGIN EXCLUSIVE`), as a writer that never finishes would: every read is refused.
- `sqlite-moved`: the file is renamed away and back (as a careless cleanup would).

Each row of reliability.csv (`outage,store,clients,requests,outage_s,before_errors,
during_requests,during_200,during_503,during_other,during_max_ms,after_requests,
after_errors,first_ok_after_s,readyz_down_s,readyz_up_after_s,rps`): `outage_s` is the
real outage (a Redis restart includes loading its dump); a request is `before` if it ended
before the outage, `during` if it overlapped it, `after` if it started after the store came
back. During the outage a request may still get 200: an anonymous one reads no user row,
and item rows are kept in memory between materializations (featurestore.OnlineReader);
`during_other` counts anything but 200 and 503, `during_max_ms` the slowest answer (the
service promises an answer within 1 s); `after_errors` counts every non-200 after it;
`first_ok_after_s` is when the first of those answered 200; `readyz_down_s` how long
`/readyz` said 503, `readyz_up_after_s` how long after the store came back it said 200.
Clients time out after 1 s connecting and 10 s reading (a timeout is an error, never a wait
without end). The script exits non-zero if a promise is broken (`broken()`).

Run it after `make run`, on an otherwise idle machine (~12 minutes on 2 cores: Redis is
materialized first). Redis rows are skipped, saying so, where no redis-server is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

os.environ.setdefault("POLARS_MAX_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import polars as pl
from latency import (
    ROOT,
    RequestStream,
    catalogue_titles,
    free_port,
    http_server,
    materialize_redis,
    stop,
)
from tqdm import tqdm

from recdata.atomic_io import write_text_atomic

PROMISED_MS = 1000.0
COLUMNS = ["outage", "store", "clients", "requests", "outage_s", "before_errors",
           "during_requests", "during_200", "during_503", "during_other", "during_max_ms",
           "after_requests", "after_errors", "first_ok_after_s", "readyz_down_s",
           "readyz_up_after_s", "rps"]


@dataclass(frozen=True)
class Call:
    start: float  # time.monotonic()
    end: float
    status: int  # 0: no HTTP answer (a timeout or a refused connection)
    error: str | None


@dataclass(frozen=True)
class Outage:
    """How to take a store away and give it back (`begin`, `end`)."""

    name: str
    store: str
    begin: Callable[[], None]
    end: Callable[[], None]


# --- the stores and their outages --------------------------------------------------------

class RedisProcess:
    """A private redis-server on a loopback port that keeps its data across a restart (a
    dump file in its own folder, written at shutdown)."""

    def __init__(self, folder: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        import redis

        assert self.binary is not None
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind",
                                      "127.0.0.1", "--dir", str(self.folder), "--dbfilename",
                                      "dump.rdb", "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        for _ in range(600):  # loading a dump of the whole store takes a moment
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def shutdown(self) -> None:
        """SHUTDOWN SAVE: the data goes to the dump, the process exits."""
        import redis

        with suppress(redis.ConnectionError):  # the connection closes as it exits
            redis.Redis(host="127.0.0.1", port=self.port).shutdown(save=True)
        assert self.proc is not None
        self.proc.wait(timeout=60)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            self.resume()
            stop(self.proc)


class SqliteLock:
    """An exclusive lock on the SQLite file, held by another process for as long as asked
    (a separate process: the lock is the operating system's, as a stuck writer's is)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.proc: subprocess.Popen | None = None

    def begin(self) -> None:
        code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
                "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(self.db)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "locked":
            raise RuntimeError(f"could not lock {self.db}")

    def end(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()  # the holder exits; the kernel drops its lock
        self.proc.wait(timeout=30)


def moved(db: Path) -> tuple[Callable[[], None], Callable[[], None]]:
    aside = db.with_name(db.name + ".moved-by-bench")
    return lambda: os.replace(db, aside), lambda: os.replace(aside, db)


# --- load with an outage in the middle ----------------------------------------------------

def run(base: str, outage: Outage, args: argparse.Namespace) -> dict[str, object]:
    import httpx

    stream = RequestStream(catalogue_titles(args.repo), args.seed)
    calls: list[Call] = []
    ready: list[tuple[float, int]] = []
    lock = threading.Lock()
    finished = threading.Event()
    bar = tqdm(total=args.clients * args.requests, desc=outage.name, mininterval=0.5,
               leave=False)
    window: dict[str, float] = {}

    def outage_on(t: float) -> bool:
        return "begin" in window and t >= window["begin"] and "end" not in window

    def client() -> None:
        """`args.requests` requests that meet a working store, plus however many meet the
        outage (a client does not back off: the worst case for the service)."""
        timeout = httpx.Timeout(10.0, connect=1.0)
        counted = 0
        with httpx.Client(base_url=base, timeout=timeout) as http:
            while counted < args.requests:
                with lock:
                    req = stream.take(1)[0]
                t = time.monotonic()
                try:
                    resp = http.post("/recommend", json={"user_id": req.user_id,
                                                         "instruction": req.instruction,
                                                         "k": 10})
                    status, error = resp.status_code, None if resp.status_code == 200 \
                        else resp.text[:200]
                except httpx.HTTPError as exc:
                    status, error = 0, f"{type(exc).__name__}: {exc}"[:200]
                end = time.monotonic()
                with lock:
                    calls.append(Call(t, end, status, error))
                if not (outage_on(t) or outage_on(end)):
                    counted += 1
                    bar.update()

    def poll_readiness() -> None:
        with httpx.Client(base_url=base, timeout=httpx.Timeout(2.0, connect=1.0)) as http:
            while not finished.is_set():
                try:
                    status = http.get("/readyz").status_code
                except httpx.HTTPError:
                    status = 0
                ready.append((time.monotonic(), status))
                time.sleep(0.2)

    def break_store() -> None:
        time.sleep(args.outage_after)
        window["begin"] = time.monotonic()
        outage.begin()
        time.sleep(max(0.0, window["begin"] + args.outage - time.monotonic()))
        outage.end()
        window["end"] = time.monotonic()

    t0 = time.monotonic()
    with ThreadPoolExecutor(args.clients + 2) as pool:
        poller = pool.submit(poll_readiness)
        breaker = pool.submit(break_store)
        for f in [pool.submit(client) for _ in range(args.clients)]:
            f.result()
        wall = time.monotonic() - t0
        breaker.result()
        finished.set()
        poller.result()
    bar.close()
    if "end" not in window:
        raise RuntimeError("the load ended before the outage did: raise --requests")
    return summarise(outage, calls, ready, window["begin"], window["end"], wall, args)


def summarise(outage: Outage, calls: list[Call], ready: list[tuple[float, int]],
              begin: float, end: float, wall: float,
              args: argparse.Namespace) -> dict[str, object]:
    before = [c for c in calls if c.end < begin]
    during = [c for c in calls if c.start < end and c.end >= begin]  # met the outage
    after = [c for c in calls if c.start >= end]
    ok_after = [c.end for c in after if c.status == 200]
    ready = sorted(ready)
    # time from each poll that found it not ready to the next poll (a poll during the
    # outage can take as long as the store's timeout)
    down = sum(b[0] - a[0] for a, b in pairwise(ready) if a[1] != 200)
    up_again = [t for t, s in ready if t >= end and s == 200]
    for phase, group, fine in (("before", before, {200}), ("during", during, {200, 503}),
                               ("after", after, {200})):
        bad = [c for c in group if c.status not in fine]
        if bad:
            kinds = sorted({(c.status, (c.error or "")[:120]) for c in bad})[:5]
            tqdm.write(f"  {outage.name} {phase}: {len(bad)} unexpected answers: {kinds}")
    return {
        "outage": outage.name, "store": outage.store, "clients": args.clients,
        "requests": len(calls), "outage_s": round(end - begin, 2),
        "before_errors": sum(c.status != 200 for c in before),
        "during_requests": len(during),
        "during_200": sum(c.status == 200 for c in during),
        "during_503": sum(c.status == 503 for c in during),
        "during_other": sum(c.status not in (200, 503) for c in during),
        "during_max_ms": round(max((c.end - c.start for c in during), default=0.0) * 1e3, 1),
        "after_requests": len(after),
        "after_errors": sum(c.status != 200 for c in after),
        "first_ok_after_s": round(min(ok_after) - end, 3) if ok_after else None,
        "readyz_down_s": round(down, 1),
        "readyz_up_after_s": round(min(up_again) - end, 2) if up_again else None,
        "rps": round(len(calls) / wall, 1),
    }


def broken(row: dict[str, object]) -> list[str]:
    """The promises a row breaks: no error before the outage or after it (no restart), no
    answer but 200 or 503 while it lasts, none slower than a second, and an outage that
    was noticed (some 503s, `/readyz` down) unless the store kept answering: a renamed
    SQLite file is still read through the connection that opened it."""
    out = []
    if row["before_errors"]:
        out.append(f"{row['before_errors']} errors before the outage")
    if row["after_errors"]:
        out.append(f"{row['after_errors']} errors after the store came back")
    if not row["after_requests"]:
        out.append("no request after the outage: raise --requests")
    if row["during_other"]:
        out.append(f"{row['during_other']} answers other than 200 or 503 during the outage")
    if float(row["during_max_ms"]) > PROMISED_MS:  # type: ignore[arg-type]
        out.append(f"an answer took {row['during_max_ms']} ms during the outage")
    if row["outage"] != "sqlite-moved" and not row["during_503"]:
        out.append("the outage was never reported (no 503)")
    return out


@contextmanager
def served(args: argparse.Namespace, store: str, redis_url: str | None) -> Iterator[str]:
    args.workers = args.server_workers
    with http_server(args, store, redis_url) as base:
        yield base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outages", default="redis-stopped,redis-paused,sqlite-locked,"
                                             "sqlite-moved")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="requests per client")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds without a store")
    parser.add_argument("--outage-after", type=float, default=20.0,
                        help="seconds of load before the outage")
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repo", type=Path, default=ROOT / "feature_repo")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    wanted = args.outages.split(",")
    rows: list[dict[str, object]] = []
    db = args.repo / "data" / "online.db"

    sqlite_outages = []
    if "sqlite-locked" in wanted:
        lock = SqliteLock(db)
        sqlite_outages.append(Outage("sqlite-locked", "sqlite", lock.begin, lock.end))
    if "sqlite-moved" in wanted:
        sqlite_outages.append(Outage("sqlite-moved", "sqlite", *moved(db)))
    for outage in sqlite_outages:
        with served(args, "sqlite", None) as base:
            rows.append(run(base, outage, args))
            tqdm.write(f"  {rows[-1]}")

    redis_wanted = [o for o in wanted if o.startswith("redis-")]
    if redis_wanted and shutil.which("redis-server") is None:
        print("no redis-server on this machine: the Redis rows are skipped")
    elif redis_wanted:
        with tempfile.TemporaryDirectory(prefix="reliability-redis-") as folder:
            server = RedisProcess(Path(folder))
            try:
                server.start()
                materialize_redis(args, server.url)
                outages = {"redis-stopped": Outage("redis-stopped", "redis", server.shutdown,
                                                   server.start),
                           "redis-paused": Outage("redis-paused", "redis", server.pause,
                                                  server.resume)}
                for name in redis_wanted:
                    with served(args, "redis", server.url) as base:
                        rows.append(run(base, outages[name], args))
                        tqdm.write(f"  {rows[-1]}")
            finally:
                server.close()

    frame = pl.DataFrame(rows).select(COLUMNS) if rows else pl.DataFrame()
    out = args.out / "reliability.csv"
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, frame.write_csv())
    print(frame)
    print(f"wrote {out}")
    failures = [f"{r['outage']}: {b}" for r in rows for b in broken(r)]
    if failures:
        sys.exit("promises broken:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
