"""Latency and throughput of the online recommender, in process and over HTTP.

    .venv/bin/python bench/latency.py        # bench/results/latency.csv + latency_breakdown.csv

Options: --stores sqlite,redis  --paths inprocess,http  --mix generated,human  --requests
2000 (per row)  --clients 1,8  --workers (http; default one per core)  --http-client stdlib|httpx
--warmup 50  --k 10  --seed 0  --out bench/results. Run it on an otherwise idle machine
(about 18 minutes on 2 cores), from the repository root, after `make run` (it needs the
trained ranker and the materialized SQLite online store). With `--llm-adapter DIR` (and
`--stores none` to skip the rest) it adds the `inprocess_llm` row: the LLM reranker on
(`--llm-requests`, default 200, because each costs about a second). Rows measured replace
the file's rows of the same (path, store, mix, clients); the others stay.

Rows of latency.csv (`path,store,mix,clients,workers,candidates,requests,errors,p50_ms,
p99_ms,rps,host_ms,bench_cpu_ms,server_cpu_ms`):
- path `inprocess`: `Recommender.recommend()` called directly, `max_batch=16` (what arrives
  together is computed together, ranking.batching); with 8 clients from a
  ThreadPoolExecutor(8) sharing one Recommender (one process: workers 1).
- path `http`: `POST /recommend` to `instructrank serve --workers N` (one HTTP process, N
  compute processes each with its own recommender, taking batches: serve/workers.py; the
  production entry point) on a free loopback port, from 1 or 8 client threads in this
  process, each with its own keep-alive connection (`--http-client`: http.client by
  default, or httpx, which costs the shared cores ~1 ms more CPU per request).
- mix `generated`: the template phrases below; mix `human`: the 320 hand-written requests
  of bench/requests/ (median 23 words, up to 47), each with its own user (HumanStream).
- latency is measured by the caller around each request (for http: the client's round trip,
  JSON included); p50/p99 over the successful requests; errors = exceptions plus non-200
  answers, all counted and their first messages printed; rps = requests / wall seconds of the
  run; candidates = the number of candidates scored per request (the most common value);
  host_ms = a fixed single-threaded reference workload timed right after the row (`host_ms`:
  lower is a faster host; compare rows of different runs by it); bench_cpu_ms = CPU per
  request of the benchmark's own process (http: the load generator; inprocess: the
  recommender and its client threads), server_cpu_ms = of the processes it started that
  were running (http: the HTTP process and its compute processes; redis: redis-server).
- store `redis`: a private redis-server on a free loopback port (`--save "" --appendonly no`),
  materialized first with `instructrank features build --online redis --redis-url`, stopped
  at the end; skipped, saying so, where no redis-server is installed.
latency_breakdown.csv (`store,mix,stage,p50_ms,p99_ms`): the recommender's own per-stage
`timings_ms` over the in-process 1-client requests.

Requests are seeded and varied: ~90% known MovieLens users (1..943), ~5% unknown ids (100000+,
the cold-start path) and ~5% anonymous (user_id None); instructions are built from 30
phrasings with genres, moods, decades, occasions, topics and catalogue titles, and every
instruction in the whole benchmark is distinct, so the encoder really encodes each request
(the recommender caches instruction vectors by text). Each row is preceded by a warm-up of
`--warmup` requests (not measured) at the same concurrency.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

# polars sizes its thread pool when it is imported: one thread, as `instructrank serve` runs
# its processes (a one-request frame split across cores costs more than it saves)
os.environ.setdefault("POLARS_MAX_THREADS", "1")

import numpy as np
import polars as pl
from tqdm import tqdm

from recdata.atomic_io import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["path", "store", "mix", "clients", "workers", "candidates", "requests", "errors",
           "p50_ms", "p99_ms", "rps", "host_ms", "bench_cpu_ms", "server_cpu_ms"]
KEYS = ["path", "store", "mix", "clients"]
STAGES = ["user_read", "candidates", "item_read", "features", "score", "llm", "explain",
          "total"]
UNKNOWN_SHARE, ANONYMOUS_SHARE = 0.05, 0.05
N_USERS = 943  # MovieLens-100k user ids are 1..943

# --- requests ---------------------------------------------------------------------------

PHRASINGS = [
    "a {mood} {genre} {decade}",
    "something {mood} {decade}",
    "recommend me something for tonight, {extra}",
    "I'm in the mood for a {mood} {genre}",
    "any good {genre} picks {decade}?",
    "show me a {genre} {extra}",
    "an acclaimed {genre} about {topic}",
    "something {mood} and {mood2} {decade}",
    "what should I watch {occasion}?",
    "looking for a {genre} {occasion}",
    "a {genre} like {title}",
    "something like {title} but {mood}",
    "movies similar to {title}",
    "a {mood} film about {topic} {decade}",
    "I loved {title}, what else would I like?",
    "give me a {genre} that is {mood}, {extra}",
    "a classic {genre} {decade}",
    "an underrated {genre} {extra}",
    "something to watch {occasion} {decade}",
    "a {genre} with {feature}",
    "{mood} {genre} with {feature}, please",
    "find me a {genre} {decade} {extra}",
    "I want a {mood} movie {occasion}",
    "surprise me with a {genre} {decade}",
    "a {genre} or a {genre2} {occasion}",
    "not too long, {mood}, maybe a {genre}",
    "the best {genre} {decade} about {topic}",
    "a {mood} {genre} my whole family can watch",
    "a {genre} for fans of {title}",
    "recommend a {mood} {genre} about {topic} with {feature}",
]
GENRES = [
    "comedy", "horror film", "thriller", "sci-fi movie", "romantic comedy", "war drama",
    "western", "animated film", "documentary", "film noir", "musical", "mystery",
    "crime drama", "fantasy adventure", "action movie", "family film", "psychological thriller",
    "space adventure", "courtroom drama", "heist movie", "coming-of-age story", "period drama",
    "spy thriller", "disaster movie", "buddy comedy", "slasher", "love story",
    "detective story", "martial arts film", "satire",
]
MOODS = [
    "light", "dark", "feel-good", "slow-burning", "clever", "silly", "heartwarming", "gritty",
    "quirky", "tense", "thought-provoking", "uplifting", "bittersweet", "cosy", "violent",
    "scary", "funny", "sad", "romantic", "weird", "stylish", "epic", "low-key", "intense",
]
DECADES = [
    "", "from the 90s", "from the nineties", "from the '80s", "from the eighties",
    "from the seventies", "from the 1970s", "made in the 1960s", "from the fifties",
    "from the forties", "released before 1980", "from the early nineties",
    "from the late 80s", "from the 1930s",
]
OCCASIONS = [
    "for tonight", "for a rainy Sunday", "to watch with my kids", "for a date night",
    "for a long flight", "to watch with friends", "on my own", "for a lazy afternoon",
    "after a long day at work", "for a Halloween party", "for Christmas eve",
    "with my parents", "for a sleepover", "before bed",
]
TOPICS = [
    "war", "friendship", "growing up", "family", "revenge", "love", "survival", "the cold war",
    "music", "sports", "prison", "the mafia", "space exploration", "time travel",
    "a road trip", "a small town", "politics", "high school", "aliens", "the wild west",
]
FEATURES = [
    "a twist ending", "a great soundtrack", "a strong female lead", "a lot of dialogue",
    "great special effects", "a happy ending", "lots of car chases", "a talking animal",
    "an ensemble cast", "beautiful scenery", "sharp dialogue", "a memorable villain",
]


def pick_user(rng: np.random.Generator, known: Callable[[], int]) -> int | None:
    """~UNKNOWN_SHARE an id no user has (cold start), ~ANONYMOUS_SHARE none, else `known()`."""
    u = rng.random()
    if u < UNKNOWN_SHARE:
        return 100_000 + int(rng.integers(900_000))
    if u < UNKNOWN_SHARE + ANONYMOUS_SHARE:
        return None
    return known()


@dataclass(frozen=True)
class Request:
    user_id: int | None
    instruction: str


class RequestStream:
    """Seeded requests; every instruction handed out by one stream is distinct."""

    def __init__(self, titles: list[str], seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.titles = titles
        self.seen: set[str] = set()
        self.repeats = 0

    def _pick(self, options: list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def _instruction(self) -> str:
        slots = {"genre": self._pick(GENRES), "genre2": self._pick(GENRES),
                 "mood": self._pick(MOODS), "mood2": self._pick(MOODS),
                 "decade": self._pick(DECADES), "occasion": self._pick(OCCASIONS),
                 "topic": self._pick(TOPICS), "feature": self._pick(FEATURES),
                 "title": self._pick(self.titles)}
        slots["extra"] = self._pick([slots["occasion"], f"with {slots['feature']}",
                                     f"about {slots['topic']}", f"like {slots['title']}"])
        text = " ".join(self._pick(PHRASINGS).format(**slots).split())
        text = re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", text)  # 'a animated' -> 'an animated'
        return text.replace(" ?", "?").replace(" ,", ",")

    def _user(self) -> int | None:
        return pick_user(self.rng, lambda: int(self.rng.integers(1, N_USERS + 1)))

    def take(self, n: int) -> list[Request]:
        out = []
        for _ in range(n):
            for _ in range(100):
                text = self._instruction()
                if text not in self.seen:
                    break
            else:
                self.repeats += 1
            self.seen.add(text)
            out.append(Request(self._user(), text))
        return out


class HumanStream:
    """Requests as people write them: the hand-written ML-100k requests (bench/requests/,
    test and dev sets, each with its user), under ~5% unknown and ~5% anonymous users as
    the generated stream. The 320 texts are made distinct for the whole run with a short
    greeting or sign-off ("hi! ...", "... thanks!"; at most three words), so every request
    is really encoded while its length stays what a person wrote."""

    FILES = ("movielens-100k-handwritten.csv", "movielens-100k-handwritten-dev.csv")
    OPENERS = ("", "hi! ", "hey, ", "ok so ", "hello, ", "so, ", "um, ", "quick one: ",
               "hi there. ", "evening! ")
    CLOSERS = ("", " thanks!", " thx", " please", " cheers", " :)", " any ideas?", " ty")

    def __init__(self, folder: Path, seed: int) -> None:
        frames = [pl.read_csv(folder / f, columns=["user_id", "instruction"])
                  for f in self.FILES]
        requests = pl.concat(frames)
        self.users = requests["user_id"].to_list()
        self.texts = requests["instruction"].to_list()
        self.rng = np.random.default_rng(seed)
        self.seen: set[str] = set()
        self.repeats = 0
        variants = [(o, c) for o in self.OPENERS for c in self.CLOSERS]
        order = self.rng.permutation(len(variants))
        self.variants = [variants[i] for i in order]
        self.order = self.rng.permutation(len(self.texts))  # each text once per round
        self.used = 0

    def words(self) -> tuple[float, int]:
        """Median and largest number of words of the texts as written."""
        counts = [len(t.split()) for t in self.texts]
        return float(np.median(counts)), max(counts)

    def take(self, n: int) -> list[Request]:
        out = []
        for _ in range(n):
            i = int(self.order[self.used % len(self.texts)])
            opener, closer = self.variants[(self.used // len(self.texts)) % len(self.variants)]
            self.used += 1
            text = f"{opener}{self.texts[i]}{closer}"
            if text in self.seen:
                self.repeats += 1
            self.seen.add(text)
            out.append(Request(pick_user(self.rng, lambda i=i: int(self.users[i])), text))
        return out


Stream = RequestStream | HumanStream


def catalogue_titles(repo: Path) -> list[str]:
    """Titles as people say them: 'Spanish Prisoner, The (1997)' -> 'The Spanish Prisoner'."""
    items = pl.read_parquet(repo / "data" / "sources" / "items.parquet", columns=["title"])
    title = (pl.col("title").str.replace(r"\s*\(\d{4}\)\s*$", "").str.strip_chars()
             .str.replace(r"^(.*), (The|A|An)$", "$2 $1"))
    return items.select(title).filter(pl.col("title") != "")["title"].to_list()


# --- load generation --------------------------------------------------------------------

@dataclass
class Outcome:
    latency_ms: float
    error: str | None = None
    candidates: int | None = None
    timings: dict[str, float] | None = None


@dataclass
class RunResult:
    outcomes: list[Outcome]
    wall_s: float
    errors: list[str] = field(default_factory=list)
    # CPU milliseconds per request of this process and of the servers it started (measure)
    bench_cpu_ms: float | None = None
    server_cpu_ms: float | None = None

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is None]


# A client factory makes one client per thread: a function from a request to an Outcome
# (without the latency, which the runner measures) and a function that closes it.
Client = Callable[[Request], Outcome]
ClientFactory = Callable[[], tuple[Client, Callable[[], None]]]


def run_load(factory: ClientFactory, requests: list[Request], clients: int,
             desc: str | None) -> RunResult:
    """`clients` threads, each with its own client, share `requests` (interleaved slices)
    and start together; wall time runs from the start signal to the last answer."""
    start = threading.Barrier(clients + 1)
    bar = tqdm(total=len(requests), desc=desc, disable=desc is None, leave=False,
               mininterval=0.5)
    lock = threading.Lock()

    def worker(i: int) -> list[Outcome]:
        call, close = factory()
        out = []
        try:
            start.wait()
            for req in requests[i::clients]:
                t = time.perf_counter()
                try:
                    o = call(req)
                except Exception as exc:
                    o = Outcome(0.0, f"{type(exc).__name__}: {exc}"[:300])
                o.latency_ms = (time.perf_counter() - t) * 1e3
                out.append(o)
                with lock:
                    bar.update()
        finally:
            close()
        return out

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker, i) for i in range(clients)]
        start.wait()
        t0 = time.perf_counter()
        results = [f.result() for f in futures]
        wall = time.perf_counter() - t0
    bar.close()
    outcomes = [o for r in results for o in r]
    return RunResult(outcomes, wall, [o.error for o in outcomes if o.error])


def inprocess_factory(rec: Any, k: int) -> ClientFactory:
    def call(req: Request) -> Outcome:
        r = rec.recommend(req.user_id, req.instruction, k)
        return Outcome(0.0, candidates=r.candidates, timings=dict(r.timings_ms))

    return lambda: (call, lambda: None)


HTTP_CLIENTS = ("stdlib", "httpx")


def http_factory(base_url: str, k: int, client: str = "stdlib") -> ClientFactory:
    """One keep-alive HTTP/1.1 connection per client thread. `client` 'stdlib' is
    http.client with json (~0.6 ms of CPU per request), 'httpx' the library (~1.7 ms): the
    load generator shares the machine's 2 cores with the server it measures, so the leaner
    one leaves the server more of them; both are real clients reading the whole body."""
    if client not in HTTP_CLIENTS:
        raise ValueError(f"unknown HTTP client {client!r}; valid: {', '.join(HTTP_CLIENTS)}")
    if client == "stdlib":
        return _stdlib_factory(base_url, k)
    import httpx

    def make() -> tuple[Client, Callable[[], None]]:
        client = httpx.Client(base_url=base_url, timeout=60.0)

        def call(req: Request) -> Outcome:
            resp = client.post("/recommend", json={"user_id": req.user_id,
                                                   "instruction": req.instruction, "k": k})
            if resp.status_code != 200:
                return Outcome(0.0, f"HTTP {resp.status_code}: {resp.text[:200]}")
            body = resp.json()
            return Outcome(0.0, candidates=body["candidates"], timings=body["timings_ms"])

        return call, client.close

    return make


def _stdlib_factory(base_url: str, k: int) -> ClientFactory:
    import http.client
    import json
    from urllib.parse import urlsplit

    where = urlsplit(base_url)
    headers = {"Content-Type": "application/json"}

    def make() -> tuple[Client, Callable[[], None]]:
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60.0)

        def call(req: Request) -> Outcome:
            body = json.dumps({"user_id": req.user_id, "instruction": req.instruction,
                               "k": k})
            try:
                conn.request("POST", "/recommend", body, headers)
                resp = conn.getresponse()
                data = resp.read()
            except Exception:
                conn.close()  # the next request opens a fresh connection
                raise
            if resp.status != 200:
                return Outcome(0.0, f"HTTP {resp.status}: {data[:200].decode(errors='replace')}")
            answer = json.loads(data)
            return Outcome(0.0, candidates=answer["candidates"], timings=answer["timings_ms"])

        return call, conn.close

    return make


def host_ms(repeats: int = 5) -> float:
    """Milliseconds of a fixed single-threaded workload shaped like a request's (interpreted
    Python and small numpy calls), the median of `repeats`, taken right after each row: the
    same code has measured 2x apart on this machine's host on different days, so a row's
    latency is read beside the speed of the host that gave it (lower is faster)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((200, 384)), rng.random((384, 64))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        total = 0
        for i in range(100_000):
            total += i * i
        for j in range(200):
            np.argsort(a[:, j % 384])
            a[j:j + 8] @ b
        times.append((time.perf_counter() - t) * 1000)
    return round(float(np.median(times)), 1)


def wait_for_host(limit_ms: float, max_s: float, streak: int = 3) -> None:
    """Block until `streak` host_ms reads in a row, a second apart, are at most `limit_ms`,
    or `max_s` passes (then say so and go on). The host this was built on ran the same code
    at host_ms 10 some hours and 20 others, flipping within a minute; a row measured across
    a flip is neither figure. The row's own host_ms (taken after it) still says what it
    ran on."""
    start = time.monotonic()
    run, last_report, reads = 0, start, []
    while run < streak:
        if time.monotonic() - start > max_s:
            print(f"  the host was not fast (host_ms <= {limit_ms:g}) within {max_s:g} s; "
                  f"measuring anyway")
            return
        reads.append(host_ms(3))
        run = run + 1 if reads[-1] <= limit_ms else 0
        if time.monotonic() - last_report > 60:
            last_report = time.monotonic()
            print(f"  waiting for host_ms <= {limit_ms:g} ({time.monotonic() - start:.0f} s; "
                  f"last reads {reads[-5:]})", flush=True)
        if run < streak:
            time.sleep(1.0)
    if time.monotonic() - start > 5:
        print(f"  the host was fast after {time.monotonic() - start:.0f} s of waiting")


def summarise(path: str, store: str, mix: str, clients: int, workers: int,
              result: RunResult) -> dict[str, Any]:
    ok = result.ok
    lat = np.array([o.latency_ms for o in ok]) if ok else np.array([np.nan])
    cands = Counter(o.candidates for o in ok)
    if len(cands) > 1:
        print(f"  note: candidates per request varied: {dict(cands.most_common(5))}")
    return {"path": path, "store": store, "mix": mix, "clients": clients, "workers": workers,
            "candidates": cands.most_common(1)[0][0] if cands else 0,
            "requests": len(result.outcomes), "errors": len(result.errors),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "rps": round(len(result.outcomes) / result.wall_s, 1), "host_ms": host_ms(),
            "bench_cpu_ms": result.bench_cpu_ms, "server_cpu_ms": result.server_cpu_ms}


def report_errors(result: RunResult) -> None:
    if result.errors:
        print(f"  {len(result.errors)} error(s); most common:")
        for msg, n in Counter(result.errors).most_common(3):
            print(f"    {n} x {msg}")


def breakdown(store: str, mix: str, result: RunResult) -> list[dict[str, Any]]:
    rows = []
    for stage in STAGES:
        values = [o.timings[stage] for o in result.ok if o.timings and stage in o.timings]
        if values:
            rows.append({"store": store, "mix": mix, "stage": stage,
                         "p50_ms": round(float(np.percentile(values, 50)), 2),
                         "p99_ms": round(float(np.percentile(values, 99)), 2)})
    return rows


# --- is the machine ours? ----------------------------------------------------------------

OWN_PIDS: set[int] = {os.getpid()}  # this process, the HTTP server and redis-server
DISTURBED: list[tuple[str, float]] = []  # (row, CPUs used by other processes meanwhile)
DISTURBED_CPUS = 0.25


class Ticks(NamedTuple):
    busy: int   # the whole machine's
    own: int    # OWN_PIDS'
    steal: int  # taken by the hypervisor: a virtual machine's CPUs lent elsewhere
    mine: int   # this process's alone

    def __sub__(self, before: Ticks) -> Ticks:  # type: ignore[override]
        return Ticks(*(a - b for a, b in zip(self, before, strict=True)))


def cpu_ticks() -> Ticks | None:
    """The machine's and the benchmark's CPU ticks so far, from /proc; None off Linux."""
    try:
        head = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return None
    ticks = [int(x) for x in head]  # user nice system idle iowait irq softirq steal
    own = mine = 0
    for pid in OWN_PIDS:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = int(fields[11]) + int(fields[12])  # utime + stime, all threads
        own += used
        mine += used if pid == os.getpid() else 0
    return Ticks(sum(ticks) - ticks[3] - ticks[4], own, ticks[7], mine)


def cpu_per_request(before: Ticks | None, after: Ticks | None,
                    requests: int) -> tuple[float | None, float | None]:
    """CPU milliseconds per request of this process (the load generator; in process, the
    recommender too) and of the rest of OWN_PIDS (the HTTP server, its compute processes,
    redis-server): on 2 cores the clients take their share of the machine, and a
    throughput figure is read beside what each side spent."""
    if before is None or after is None or not requests:
        return None, None
    used = after - before
    ms = 1000 / os.sysconf("SC_CLK_TCK") / requests
    return round(used.mine * ms, 2), round((used.own - used.mine) * ms, 2)


def foreign_cpus(before: Ticks | None, after: Ticks | None,
                 wall_s: float) -> tuple[float, float] | None:
    """(CPUs kept busy by anything but the benchmark's processes during a run, of which
    the hypervisor's steal)."""
    if before is None or after is None or wall_s <= 0:
        return None
    used = after - before
    per_s = os.sysconf("SC_CLK_TCK") * wall_s
    return max(0.0, (used.busy - used.own) / per_s), used.steal / per_s


# --- servers ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A private redis-server on a free loopback port (the tests' approach), or None."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    import redis

    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    OWN_PIDS.add(proc.pid)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "serve.cli", *args]


def store_args(args: argparse.Namespace, store: str, redis_url: str | None) -> list[str]:
    out = ["--repo", str(args.repo), "--online", store, "--data-dir", str(args.data_dir)]
    return out + (["--redis-url", redis_url] if redis_url else [])


@contextmanager
def http_server(args: argparse.Namespace, store: str,
                redis_url: str | None) -> Iterator[str]:
    """`instructrank serve --workers N` on a free loopback port, up when /readyz answers
    200 (with several workers, every process has loaded: the pool starts them all)."""

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # its access log (a JSON line per request) goes to a file, not into this output
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cli("serve", "--host", "127.0.0.1", "--port", str(port),
                                    "--workers", str(args.workers),
                                    *store_args(args, store, redis_url)), env=env, stderr=log)
        OWN_PIDS.add(proc.pid)
        base = f"http://127.0.0.1:{port}"
        try:
            from serve.http import wait_ready

            try:
                wait_ready(base, proc, 300)
            except RuntimeError as exc:
                log.seek(0)
                raise RuntimeError(f"{exc}: {log.read()[-2000:]}") from None
            import psutil

            # its worker processes are ours too, for the idle-machine check
            OWN_PIDS.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
            yield base
        finally:
            stop(proc)


# --- the benchmark ----------------------------------------------------------------------

def measure(path: str, store: str, factory: ClientFactory, stream: Stream,
            args: argparse.Namespace, clients: int, mix: str = "generated") -> RunResult:
    if args.wait_host_ms:
        wait_for_host(args.wait_host_ms, args.wait_max_s)
    warm = stream.take(args.warmup)
    if warm:
        run_load(factory, warm, clients, None)
    gc.collect()
    before = cpu_ticks()
    result = run_load(factory, stream.take(args.requests), clients,
                      f"{path}/{store}/{mix}/{clients} client(s)")
    after = cpu_ticks()
    result.bench_cpu_ms, result.server_cpu_ms = cpu_per_request(before, after,
                                                                len(result.outcomes))
    used = foreign_cpus(before, after, result.wall_s)
    if used is not None:
        others, steal = used
        DISTURBED.append((f"{path}/{store}/{mix}/{clients}", others))
        flag = "  <- DISTURBED: rerun on an idle machine" if others > DISTURBED_CPUS else ""
        print(f"  {path}/{store}/{mix}/{clients}: other processes used {others:.2f} of "
              f"{os.cpu_count()} CPUs (hypervisor steal {steal:.2f}){flag}")
    return result


def bench_store(store: str, redis_url: str | None, streams: dict[str, Stream],
                args: argparse.Namespace, rows: list[dict], stages: list[dict]) -> None:
    if "inprocess" in args.paths:
        bench_inprocess(store, redis_url, streams, args, rows, stages)
    if "http" in args.paths:
        bench_http(store, redis_url, streams, args, rows)


def bench_inprocess(store: str, redis_url: str | None, streams: dict[str, Stream],
                    args: argparse.Namespace, rows: list[dict], stages: list[dict]) -> None:
    from ranking.recommend import Recommender, RecommenderConfig

    print(f"[{store}] loading the recommender in process ...")
    t = time.perf_counter()
    rec = Recommender.load(RecommenderConfig(repo=args.repo, online=store, redis_url=redis_url,
                                             data_dir=args.data_dir, torch_threads=1,
                                             max_batch=16))
    gc.freeze()  # as `instructrank serve` does after loading
    print(f"[{store}] loaded in {time.perf_counter() - t:.1f} s")
    factory = inprocess_factory(rec, args.k)
    for mix, stream in streams.items():
        for clients in args.clients:
            result = measure("inprocess", store, factory, stream, args, clients, mix)
            rows.append(summarise("inprocess", store, mix, clients, 1, result))
            print(f"  {rows[-1]}")
            report_errors(result)
            if clients == 1:
                stages.extend(breakdown(store, mix, result))
    gc.unfreeze()
    del rec, factory
    gc.collect()


def bench_http(store: str, redis_url: str | None, streams: dict[str, Stream],
               args: argparse.Namespace, rows: list[dict]) -> None:
    print(f"[{store}] starting `instructrank serve --workers {args.workers}` ...")
    t = time.perf_counter()
    with http_server(args, store, redis_url) as base:
        print(f"[{store}] serving at {base} after {time.perf_counter() - t:.1f} s")
        factory = http_factory(base, args.k, args.http_client)
        for mix, stream in streams.items():
            for clients in args.clients:
                result = measure("http", store, factory, stream, args, clients, mix)
                rows.append(summarise("http", store, mix, clients, args.workers, result))
                print(f"  {rows[-1]}")
                report_errors(result)


def bench_llm(stream: RequestStream, args: argparse.Namespace, rows: list[dict],
              stages: list[dict]) -> None:
    """`inprocess_llm`: the same in-process path with the LLM reranker on (SQLite, 1 client,
    torch on every core: one request at a time is what a reranker this slow can serve)."""
    from ranking.recommend import Recommender, RecommenderConfig
    from ranking.rerank.llm import LLMRerankConfig

    llm = LLMRerankConfig(model_path=args.llm_model, adapter_path=args.llm_adapter,
                          data_dir=args.data_dir, weight=args.llm_weight, top_n=args.llm_top_n)
    print("[llm] loading the recommender with the LLM reranker ...")
    rec = Recommender.load(RecommenderConfig(repo=args.repo, data_dir=args.data_dir, llm=llm,
                                             torch_threads=None))
    factory = inprocess_factory(rec, args.k)
    sub = argparse.Namespace(**{**vars(args), "requests": args.llm_requests,
                                "warmup": min(args.warmup, 5)})
    result = measure("inprocess_llm", "sqlite", factory, stream, sub, 1)
    rows.append(summarise("inprocess_llm", "sqlite", "generated", 1, 1, result))
    print(f"  {rows[-1]}")
    report_errors(result)
    stages.extend(breakdown("sqlite+llm", "generated", result))


def merged(path: Path, new: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Rows measured now replace the file's rows with the same keys; others stay (so the
    slow LLM rows can be measured on their own)."""
    if not path.exists():
        return new
    old = pl.read_csv(path)
    if new.is_empty():  # nothing of this kind measured now (no one-client row): kept
        return old
    if not set(keys) <= set(old.columns) or set(old.columns) - set(new.columns):
        print(f"{path} has other columns ({', '.join(old.columns)}): its rows are replaced")
        return new
    old = old.cast({k: new.schema[k] for k in keys})
    # a column added since the file was written (host_ms) is empty in its older rows
    old = old.with_columns(pl.lit(None, new.schema[c]).alias(c)
                           for c in new.columns if c not in old.columns)
    return pl.concat([old.join(new.select(keys), on=keys, how="anti").select(new.columns),
                      new], how="vertical_relaxed")


def materialize_redis(args: argparse.Namespace, redis_url: str) -> None:
    print(f"[redis] materializing into {redis_url} (instructrank features build) ...")
    t = time.perf_counter()
    subprocess.run(cli("features", "build", *store_args(args, "redis", redis_url)),
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                    "TRANSFORMERS_OFFLINE": "1"})
    print(f"[redis] materialized in {time.perf_counter() - t:.1f} s")


def cache_share(stream: Stream, args: argparse.Namespace) -> float:
    """Share of this benchmark's instructions already in the encoder's on-disk cache (those
    are looked up, not encoded)."""
    from encoders.text import TextEncoder

    enc = TextEncoder(cache_dir=args.data_dir / "cache", show_progress=False, persist=False)
    cached = enc._memory  # the loaded cache: sha1 keys -> vectors
    return sum(enc._key(t) in cached for t in stream.seen) / max(1, len(stream.seen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="sqlite,redis",
                        help="comma-separated online stores (sqlite, redis)")
    parser.add_argument("--paths", default="inprocess,http",
                        help="which rows: inprocess (Recommender.recommend in this process), "
                             "http (`instructrank serve`); with --mix and --clients, one row "
                             "can be measured again on its own")
    parser.add_argument("--wait-host-ms", type=float, default=None,
                        help="before each row, wait until host_ms is at most this three "
                             "reads in a row (on a host whose speed comes and goes)")
    parser.add_argument("--wait-max-s", type=float, default=3600,
                        help="the longest wait for --wait-host-ms, per row")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per row")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests per row")
    parser.add_argument("--k", type=int, default=10, help="items per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix", default="generated,human",
                        help="request mixes: generated (short phrases from templates), human "
                             "(the hand-written requests of bench/requests/)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="`instructrank serve --workers` for the http rows (default: one "
                             "per core)")
    parser.add_argument("--http-client", default="stdlib", choices=HTTP_CLIENTS,
                        help="the load generator's HTTP client: stdlib (http.client, the "
                             "lighter on the shared cores) or httpx")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--repo", type=Path, default=ROOT / "feature_repo")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--llm-adapter", type=Path, default=None,
                        help="also measure `inprocess_llm` with this LoRA adapter")
    parser.add_argument("--llm-model", type=Path, default=None,
                        help="causal-LM folder (default: the converted Gemma 3 270M)")
    parser.add_argument("--llm-weight", type=float, default=0.5)
    parser.add_argument("--llm-top-n", type=int, default=20)
    parser.add_argument("--llm-requests", type=int, default=200,
                        help="measured requests of the inprocess_llm row")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    args.mix = [m.strip() for m in args.mix.split(",") if m.strip()]
    if set(args.mix) - {"generated", "human"}:
        parser.error(f"unknown mix(es): {', '.join(sorted(set(args.mix) - {'generated', 'human'}))}"
                     "; valid: generated, human")
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    wrong = set(args.paths) - {"inprocess", "http"}
    if wrong:
        parser.error(f"unknown path(s): {', '.join(sorted(wrong))}; valid: inprocess, http")
    stores = [s.strip() for s in args.stores.split(",") if s.strip() and s.strip() != "none"]
    unknown = set(stores) - {"sqlite", "redis"}
    if unknown:
        parser.error(f"unknown store(s): {', '.join(sorted(unknown))}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    stream = RequestStream(catalogue_titles(args.repo), args.seed)
    streams: dict[str, Stream] = {"generated": stream}
    if "human" in args.mix:
        streams["human"] = HumanStream(ROOT / "bench" / "requests", args.seed)
        median, most = streams["human"].words()
        print(f"human mix: {len(streams['human'].texts)} hand-written requests, median "
              f"{median:g} words, at most {most}")
    streams = {m: streams[m] for m in args.mix}
    rows: list[dict] = []
    stages: list[dict] = []
    for store in stores:
        if store == "sqlite":
            bench_store("sqlite", None, streams, args, rows, stages)
            continue
        with redis_server() as url:
            if url is None:
                print("redis-server is not installed (not on PATH): the redis rows are "
                      "skipped (`make redis` installs it)")
                continue
            materialize_redis(args, url)
            bench_store("redis", url, streams, args, rows, stages)

    if args.llm_adapter is not None or args.llm_model is not None:
        bench_llm(stream, args, rows, stages)

    frame = pl.DataFrame(rows).select(COLUMNS) if rows else pl.DataFrame(schema=COLUMNS)
    split_columns = ["store", "mix", "stage", "p50_ms", "p99_ms"]
    split = pl.DataFrame(stages).select(split_columns) if stages \
        else pl.DataFrame(schema=split_columns)
    frame = merged(args.out / "latency.csv", frame, KEYS)
    split = merged(args.out / "latency_breakdown.csv", split, ["store", "mix", "stage"])
    write_text_atomic(args.out / "latency.csv", frame.write_csv())
    write_text_atomic(args.out / "latency_breakdown.csv", split.write_csv())
    for mix, one in streams.items():
        print(f"\n{mix}: {len(one.seen):,} distinct instructions ({one.repeats} repeats); "
              f"{cache_share(one, args):.1%} were already in the encoder's disk cache")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=160,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(frame)
        print(split)
    print(f"wrote {args.out / 'latency.csv'} and {args.out / 'latency_breakdown.csv'}")
    disturbed = [f"{row} ({cpus:.2f} CPUs)" for row, cpus in DISTURBED if cpus > DISTURBED_CPUS]
    if disturbed:
        print("WARNING: other processes used the CPUs during " + ", ".join(disturbed)
              + "; those figures are pessimistic")


if __name__ == "__main__":
    main()
