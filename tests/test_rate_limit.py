"""Per-client rate limiting in serve.guard: a token bucket per address, 429 past it."""

from __future__ import annotations

import pytest


def test_a_bucket_allows_bursts_then_refills_at_the_rate():
    from serve.guard import RateLimiter

    now = [100.0]
    limiter = RateLimiter(2.0, clock=lambda: now[0])  # 2 a second, bursts of 2
    assert [limiter.wait("a"), limiter.wait("a")] == [0.0, 0.0]
    assert limiter.wait("a") == pytest.approx(0.5)  # empty: one token comes in 0.5 s
    assert limiter.wait("b") == 0.0  # another address has its own bucket
    now[0] += 0.5
    assert limiter.wait("a") == 0.0
    assert limiter.wait("a") > 0
    now[0] += 60  # a long pause refills to the burst, no further
    assert [limiter.wait("a") for _ in range(3)][:2] == [0.0, 0.0]
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0)


def test_the_address_table_is_bounded(monkeypatch):
    import serve.guard as guard

    monkeypatch.setattr(guard, "MAX_CLIENTS", 100)
    limiter = guard.RateLimiter(1.0, clock=lambda: 0.0)
    for i in range(1000):
        limiter.wait(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter.buckets) == 100 and "10.0.3.231" in limiter.buckets  # the latest kept


def test_past_the_limit_a_client_gets_429_with_retry_after_and_probes_pass():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serve.guard import Guard

    app = FastAPI()
    app.post("/recommend")(lambda: {"ok": True})
    app.get("/readyz")(lambda: {"ready": True})
    with TestClient(Guard(app, rate_limit=3)) as client:
        codes = [client.post("/recommend").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        refused = client.post("/recommend")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "too many" in refused.json()["detail"] and refused.headers["x-request-id"]
        assert all(client.get("/readyz").status_code == 200 for _ in range(10))
