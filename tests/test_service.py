"""The HTTP service against a real online store: 422s for bad bodies, OpenAPI, and a real
Redis outage (the server is stopped and started again under a running service)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest

GOOD = {"user_id": 1, "instruction": "a comedy from the 1990s", "k": 5}


@pytest.fixture(scope="module")
def client(trained):
    from fastapi.testclient import TestClient

    from ranking.recommend import Recommender, RecommenderConfig
    from serve.http import create_app

    cfg = RecommenderConfig(repo=trained["repo"], data_dir=trained["data"])
    with TestClient(create_app(lambda: Recommender.load(cfg))) as c:
        yield c


def test_recommend_and_health(client):
    r = client.post("/recommend", json=GOOD)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 5 and body["cold_start"] is False
    assert all({"item_id", "title", "score", "reasons"} <= set(i) for i in body["items"])
    anonymous = client.post("/recommend", json={"instruction": "a sci-fi story", "k": 3})
    assert anonymous.status_code == 200 and anonymous.json()["cold_start"] is True
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["store"] == "ok"
    assert client.get("/readyz").json() == {**{k: v for k, v in health.json().items()
                                               if k != "status"}, "ready": True}
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/healthz", "/readyz"} <= set(schema["paths"])
    # the body is written by pydantic, not re-validated by FastAPI: the documented schema
    # still describes it, and it reads back as the response model
    ok = schema["paths"]["/recommend"]["post"]["responses"]["200"]["content"]
    assert ok["application/json"]["schema"]["$ref"].endswith("/RecommendResponse")
    from serve.http import RecommendResponse

    assert RecommendResponse.model_validate_json(r.content).items[0].reasons


def test_a_response_body_is_json_even_with_a_lone_surrogate():
    """pydantic's serializer refuses a lone surrogate (a title from a badly decoded file):
    the body is then written with ASCII escapes, which decode to the same strings."""
    import json
    from datetime import UTC, datetime

    from serve.http import ItemOut, RecommendResponse, json_body

    made = dict(user_id="u1", instruction="a comedy", cold_start=False, candidates=1,
                timings_ms={"total": 1.5}, now=datetime(2026, 1, 1, tzinfo=UTC))
    plain = RecommendResponse(**made, items=[ItemOut(item_id=1, title="Heat", score=0.5,
                                                     reasons=[])])
    assert json.loads(json_body(plain).body) == plain.model_dump(mode="json")
    odd = RecommendResponse(**made, items=[ItemOut(item_id=1, title="Heat \ud800",
                                                   score=0.5, reasons=[])])
    response = json_body(odd)
    assert response.media_type == "application/json"
    assert json.loads(response.body)["items"][0]["title"] == "Heat \ud800"


def test_a_request_can_ask_for_variety(client):
    varied = client.post("/recommend", json={**GOOD, "k": 10, "diversity": 0.6})
    assert varied.status_code == 200 and varied.json()["timings_ms"]["diversity"] == 0.6
    plain = client.post("/recommend", json={**GOOD, "k": 10})
    assert "diversity" not in plain.json()["timings_ms"]


@pytest.mark.parametrize(("body", "field"), [
    ({"user_id": 1, "k": 5}, "instruction"),
    ({**GOOD, "instruction": ""}, "instruction"),
    ({**GOOD, "instruction": 42}, "instruction"),
    ({**GOOD, "instruction": ["a", "comedy"]}, "instruction"),
    ({**GOOD, "instruction": "x" * 1001}, "instruction"),
    ({**GOOD, "k": 0}, "k"),
    ({**GOOD, "k": 101}, "k"),
    ({**GOOD, "user_id": ["someone"]}, "user_id"),
    ({**GOOD, "user_id": "u" * 257}, "user_id"),
    ({**GOOD, "now": "last tuesday"}, "now"),
    ({**GOOD, "instructions": "a comedy"}, "instructions"),  # misspelt: not ignored
    ({**GOOD, "K": 3}, "K"),
    # numbers are numbers: a boolean, a float or a numeric string is not coerced (the
    # schemathesis run found `"user_id": false` answered as if it were user 0)
    ({**GOOD, "user_id": False}, "user_id"),
    ({**GOOD, "user_id": 1.0}, "user_id"),
    ({**GOOD, "k": "5"}, "k"),
    ({**GOOD, "k": 2.0}, "k"),
    ({**GOOD, "history": [True]}, "history"),
    ({**GOOD, "diversity": 2}, "diversity"),
    ({**GOOD, "diversity": -0.1}, "diversity"),
])
def test_bad_bodies_get_422_naming_the_field(client, body, field):
    r = client.post("/recommend", json=body)
    assert r.status_code == 422
    assert field in r.text


@pytest.mark.parametrize("user", ["someone", 10**25, -(10**25), "042"])
def test_an_id_no_user_has_is_cold_start_not_an_error(client, user):
    """Strings are ids too (string-id catalogues share this API); an integer beyond int64
    or a key this integer-id store cannot hold is simply nobody it knows."""
    r = client.post("/recommend", json={**GOOD, "user_id": user})
    assert r.status_code == 200, r.text
    assert r.json()["cold_start"] is True and r.json()["user_id"] == user


def test_the_request_time_is_the_callers_when_given(client):
    """`now` (ISO 8601 or unix seconds) is the request's time, echoed in the answer; the
    same time given both ways scores the same; without it, the server's clock."""
    import time as clock

    iso = client.post("/recommend", json={**GOOD, "now": "2003-04-24T00:00:00Z"})
    unix = client.post("/recommend", json={**GOOD, "now": 1_051_142_400})
    before = clock.time()
    default = client.post("/recommend", json=GOOD)
    assert iso.status_code == unix.status_code == default.status_code == 200, iso.text
    assert iso.json()["now"] == unix.json()["now"] == "2003-04-24T00:00:00Z"
    assert iso.json()["items"] == unix.json()["items"]
    from datetime import datetime

    served_at = datetime.fromisoformat(default.json()["now"]).timestamp()
    assert before - 1 <= served_at <= clock.time() + 1


@pytest.mark.parametrize("field", ["instruction", "user_id"])
def test_a_huge_rejected_value_is_not_echoed_back(client, field):
    """A 50,000-character value gets a 422 naming the field and quoting only its start; a
    10^6-character one is over the body limit: 413, before anything parses it."""
    r = client.post("/recommend", json={**GOOD, field: "x" * 50_000})
    assert r.status_code == 422
    assert len(r.content) < 2000, len(r.content)  # one error per type of a union field
    errors = r.json()["detail"]
    assert errors and all(field in e["loc"] for e in errors)
    assert any("50,000 characters" in e["input"] for e in errors)
    huge = client.post("/recommend", json={**GOOD, field: "x" * 10**6})
    assert huge.status_code == 413 and len(huge.content) < 200


@pytest.fixture(scope="module")
def keyed(trained):
    """The service with an API key and a 2 KiB body limit."""
    from fastapi.testclient import TestClient

    from ranking.recommend import Recommender, RecommenderConfig
    from serve.http import create_app

    cfg = RecommenderConfig(repo=trained["repo"], data_dir=trained["data"])
    app = create_app(lambda: Recommender.load(cfg), api_key="s3cret-key", max_body_bytes=2048)
    with TestClient(app) as c:
        yield c


def test_an_api_key_is_required_when_set_but_not_by_the_probes(keyed):
    assert keyed.post("/recommend", json=GOOD).status_code == 401
    wrong = keyed.post("/recommend", json=GOOD, headers={"X-API-Key": "s3cret-kex"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
    assert keyed.post("/recommend", json=GOOD,
                      headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert keyed.post("/recommend", json=GOOD,
                      headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    assert keyed.get("/openapi.json").status_code == 401
    assert keyed.get("/healthz").status_code == 200
    ready = keyed.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_a_body_over_the_limit_gets_413_announced_or_streamed(keyed):
    key = {"X-API-Key": "s3cret-key"}
    big = {**GOOD, "instruction": "a comedy " * 300}  # ~2.7 KiB of JSON
    assert keyed.post("/recommend", json=big, headers=key).status_code == 413
    import json as _json

    def chunks():  # no Content-Length: the body is counted as it arrives
        data = _json.dumps(big).encode()
        for i in range(0, len(data), 500):
            yield data[i:i + 500]

    streamed = keyed.post("/recommend", content=chunks(),
                          headers={**key, "Content-Type": "application/json"})
    assert streamed.status_code == 413 and "2,048 bytes" in streamed.json()["detail"]
    assert keyed.post("/recommend", json=GOOD, headers=key).status_code == 200


def test_every_request_has_an_id_and_one_access_log_line_without_secrets(keyed, caplog):
    import json as _json
    import logging

    with caplog.at_level(logging.INFO, logger="instructrank.access"):
        mine = keyed.post("/recommend", json=GOOD, headers={"X-API-Key": "s3cret-key",
                                                            "X-Request-ID": "trace-42"})
        fresh = keyed.post("/recommend", json=GOOD, headers={"X-API-Key": "s3cret-key",
                                                             "X-Request-ID": "bad id\n!"})
        refused = keyed.post("/recommend", json=GOOD)
    assert mine.headers["x-request-id"] == "trace-42"
    assert fresh.headers["x-request-id"] != "bad id\n!" and len(fresh.headers["x-request-id"]) == 32
    lines = [_json.loads(r.getMessage()) for r in caplog.records
             if r.name == "instructrank.access"]
    assert [line["status"] for line in lines] == [200, 200, 401]
    first = lines[0]
    assert first["request_id"] == "trace-42" and first["path"] == "/recommend"
    assert {"candidates", "score", "total"} <= set(first["stages_ms"]) and first["ms"] > 0
    assert refused.headers["x-request-id"] == lines[2]["request_id"]
    assert "s3cret" not in caplog.text


def test_the_key_comes_from_a_file_or_the_environment_never_an_argument(tmp_path):
    from recdata.errors import ConfigError
    from serve.guard import read_api_key

    file = tmp_path / "key"
    file.write_text("from-file\n")
    assert read_api_key(str(file), {"INSTRUCTRANK_API_KEY": "from-env"}) == "from-file"
    assert read_api_key(None, {"INSTRUCTRANK_API_KEY": " from-env "}) == "from-env"
    assert read_api_key(None, {}) is None
    file.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_api_key(str(file), {})
    with pytest.raises(ConfigError, match="does not exist"):
        read_api_key(str(tmp_path / "nope"), {})
    from typer.testing import CliRunner

    from serve.cli import app

    help_text = CliRunner().invoke(app, ["serve", "--help"]).output
    assert "--api-key-file" in help_text and "--api-key " not in help_text


@pytest.mark.parametrize("raw", [
    b'{"instruction": "a \\ud800 comedy"}',
    b'{"user_id": "\\udfffx", "instruction": "a comedy"}',
    b'{"history": ["\\ud83d"], "instruction": "a comedy"}',
])
def test_a_lone_surrogate_is_a_422_not_a_500(client, raw):
    """JSON may escape a lone surrogate, which no UTF-8 text can hold: it is refused by
    field, and the error quoting it is still valid JSON (it was a 500: the body could not
    be encoded)."""
    r = client.post("/recommend", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_whitespace_only_instruction_gets_422_with_the_reason(client):
    r = client.post("/recommend", json={**GOOD, "instruction": " \n\t "})
    assert r.status_code == 422
    assert "empty" in r.json()["detail"]


def _start_redis(binary: str, port: int, directory) -> subprocess.Popen:
    import redis

    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(directory), "--appendonly", "yes", "--save", ""],
                            stdout=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            if client.ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def test_store_outage_gives_503_and_the_service_recovers(trained, synthetic, tmp_path,
                                                        redis_url):
    """Stop Redis under a running service: 503 with a message, process up; start it again:
    200, without restarting the service. (`redis_url` only asserts a server can run here.)"""
    from fastapi.testclient import TestClient

    from featurestore.build import FeatureBuildConfig, build_features
    from ranking.recommend import Recommender, RecommenderConfig
    from serve.http import create_app
    from tests.conftest import _free_port

    binary = shutil.which("redis-server")
    port = _free_port()
    url = f"127.0.0.1:{port}"
    proc = _start_redis(binary, port, tmp_path)
    try:
        build_features(FeatureBuildConfig(dataset="synthetic", repo=trained["repo"],
                                          data_dir=trained["data"], online="redis",
                                          redis_url=url),
                       dataset=synthetic, progress=False)
        cfg = RecommenderConfig(repo=trained["repo"], data_dir=trained["data"],
                                online="redis", redis_url=url)
        with TestClient(create_app(lambda: Recommender.load(cfg))) as client:
            assert client.post("/recommend", json=GOOD).status_code == 200
            proc.send_signal(signal.SIGSTOP)  # frozen: connections hang, only a timeout ends them
            try:
                t = time.perf_counter()
                hung = client.post("/recommend", json=GOOD)
                waited = time.perf_counter() - t
            finally:
                proc.send_signal(signal.SIGCONT)
            assert hung.status_code == 503 and waited < 1.0, (hung.status_code, waited)
            assert client.post("/recommend", json=GOOD).status_code == 200  # resumed
            proc.terminate()
            proc.wait(timeout=10)
            t = time.perf_counter()
            down = client.post("/recommend", json=GOOD)
            assert down.status_code == 503 and time.perf_counter() - t < 1.0
            assert "online store unreachable" in down.json()["detail"]
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["ready"] is False
            assert ready.json()["store"].startswith("unreachable")
            live = client.get("/healthz")  # alive, and saying what is down
            assert live.status_code == 200 and live.json()["store"].startswith("unreachable")
            proc = _start_redis(binary, port, tmp_path)
            up = client.post("/recommend", json=GOOD)
            assert up.status_code == 200, up.text
            assert up.json()["cold_start"] is False  # the data came back with the server
            assert client.get("/readyz").status_code == 200
            assert client.get("/healthz").json()["store"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=10)



def test_a_locked_sqlite_store_gives_503_within_a_second_then_recovers(client, trained):
    """Another process holding an exclusive lock on the online store's file (a stuck
    writer): reads are refused after a short wait, not SQLite's default 5 s, and the
    service answers again once the lock is gone."""
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code,
                               str(trained["repo"] / "data" / "online.db")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t = time.perf_counter()
        locked = client.post("/recommend", json={**GOOD, "user_id": 3})
        waited = time.perf_counter() - t
        assert locked.status_code == 503 and waited < 1.0, (locked.status_code, waited)
        assert "locked" in locked.json()["detail"]
        assert client.get("/readyz").status_code == 503
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert client.post("/recommend", json={**GOOD, "user_id": 3}).status_code == 200
    assert client.get("/readyz").status_code == 200


def test_serve_with_two_workers_answers_from_both(trained):
    """`instructrank serve --workers 2`: two processes, each with its own recommender
    (the config travels to them as JSON), both answering the same port."""
    import os
    import sys

    import httpx
    import psutil

    from tests.conftest import _free_port

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "serve.cli", "serve", "--workers", "2",
                             "--port", str(port), "--repo", str(trained["repo"]),
                             "--data-dir", str(trained["data"])], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        ready = 0
        while ready < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, f"serve exited with {proc.returncode}"
            try:  # each worker answers /healthz only once it has loaded
                ready = ready + 1 if httpx.get(f"{base}/healthz", timeout=2).status_code \
                    == 200 else 0
            except httpx.HTTPError:
                ready = 0
            time.sleep(0.5)
        assert ready == 2, "no answer within 240 s"
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len([w for w in workers if "python" in w.name().lower()]) >= 2
        with httpx.Client(base_url=base, timeout=60) as http:
            answers = [http.post("/recommend", json=GOOD) for _ in range(6)]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        assert len({tuple(i["item_id"] for i in a.json()["items"]) for a in answers}) == 1
        # one after another: six batches of one, none of them waited for company
        health = httpx.get(f"{base}/healthz", timeout=30).json()
        assert health["workers"] == 2 and health["batching"] == {
            "recent_batches": 6, "mean_batch": 1.0, "expected_batch": 1, "wait_ms": 8.0}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_compute_process_that_dies_is_replaced(trained):
    """Kill one compute process under the pool: what was in flight answers 503 (or is
    answered by the other), and the pool serves again without a restart."""
    import psutil

    from ranking.recommend import RecommenderConfig
    from recdata.errors import InvalidRequestError, StoreUnavailableError
    from serve.workers import WorkerPool

    pool = WorkerPool(RecommenderConfig(repo=trained["repo"], data_dir=trained["data"]), 2)
    try:
        assert len(pool.recommend(1, "a comedy", 5).items) == 5
        with pytest.raises(InvalidRequestError, match="k must be"):
            pool.recommend(1, "a comedy", 0)  # a request's own error, from the process
        # a batch sent while the other process computes one keeps its encode to one thread
        first, second = pool.workers
        assert pool._alone(first)
        with second.lock:
            assert not pool._alone(first) and pool._alone(second)
        def pids() -> set[int]:
            return {w.proc.pid for w in pool.workers}

        victim = next(iter(pids()))
        psutil.Process(victim).kill()
        deadline = time.monotonic() + 120
        while victim in pids() and time.monotonic() < deadline:  # until the pool notices
            try:
                pool.recommend(1, "a drama", 3)
            except StoreUnavailableError as exc:  # the batch the dead process held
                assert "compute process died" in str(exc)
            time.sleep(0.2)
        assert victim not in pids(), "the dead process was never replaced"
        assert all(len(pool.recommend(1, "a drama", 3).items) == 3 for _ in range(4))
        assert pool.health()["model"]
    finally:
        pool.close()
