"""What stands between the network and the recommender: who may call it, how much a caller
may send, and a line in the access log for every request.

A pure ASGI middleware (not FastAPI's `@app.middleware`), because it must count the body as
it streams in: a client that sends no Content-Length, or a false one, is cut off at the
limit. It reads the (small) body itself and hands it to the app from memory.

- **API key** (optional): when the service is given one, every path but the probes
  (`/healthz`, `/readyz`) needs it in `X-API-Key` or `Authorization: Bearer`; compared in
  constant time (`hmac.compare_digest`); 401 otherwise. The key is never logged.
- **Body size**: over `max_body_bytes` is a 413, whether announced by Content-Length or
  found while reading.
- **Rate limit** (optional): at most `rate_limit` requests a second from one client address,
  in bursts of up to that many (a token bucket per address); past it 429 with
  `Retry-After`. Probes are not counted. The table of addresses is bounded: past
  `MAX_CLIENTS` the ones idle longest are forgotten (a forgotten one starts full).
- **Request id**: the caller's `X-Request-ID` when it is short and plain, else a new one;
  returned in the response's `X-Request-ID` and written in the access log.
- **Access log**: one JSON line per request on the `instructrank.access` logger: request id,
  method, path, status, milliseconds, the client's address and, for a recommendation, the
  recommender's stage timings (the handler leaves them in the request's state). Never
  headers, bodies or the key.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes answer without a key
MAX_BODY_BYTES = 64 * 1024  # a request is a few hundred bytes; 64 KiB leaves room, not harm
MAX_CLIENTS = 10_000  # addresses the rate limiter remembers
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
access_log = logging.getLogger("instructrank.access")


class RateLimiter:
    """A token bucket per client address: `rate` tokens a second, holding at most
    `burst`."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate limit must be positive, got {rate}")
        self.rate, self.burst, self.clock = rate, burst or max(1.0, rate), clock
        self.buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)

    def wait(self, client: str) -> float:
        """0 when `client` may go now (a token taken), else seconds until it may."""
        now = self.clock()
        tokens, then = self.buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self.buckets[client] = (tokens - 1 if wait == 0 else tokens, now)  # most recent last
        if len(self.buckets) > MAX_CLIENTS:
            for stale in list(self.buckets)[:len(self.buckets) - MAX_CLIENTS]:
                del self.buckets[stale]
        return wait


class Guard:
    def __init__(self, app: ASGIApp, *, api_key: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, rate_limit: float | None = None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.limiter = RateLimiter(rate_limit) if rate_limit else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            refusal = self._refusal(scope["path"], headers)
            if refusal is None and self.limiter is not None and \
                    scope["path"] not in OPEN_PATHS:
                wait = self.limiter.wait((scope.get("client") or ("",))[0])
                if wait > 0:
                    await _reply(send_with_id, 429, "too many requests from this client",
                                 [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
                    return
            if refusal is None:
                body = await self._read_body(receive)
                if body is None:
                    refusal = 413, f"request body over {self.max_body_bytes:,} bytes"
            if refusal is not None:
                await _reply(send_with_id, *refusal)
                return
            await self.app(scope, _replay(body, receive), send_with_id)
        finally:
            state = scope.get("state", {})
            client = scope.get("client") or ("", 0)
            access_log.info(json.dumps({
                "request_id": request_id, "method": scope.get("method"),
                "path": scope["path"], "status": status["code"],
                "ms": round((time.perf_counter() - started) * 1000, 2),
                "client": client[0], **({"stages_ms": state["timings_ms"]}
                                        if "timings_ms" in state else {})}))

    def _refusal(self, path: str, headers: dict[str, str]) -> tuple[int, str] | None:
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return 413, f"request body over {self.max_body_bytes:,} bytes"
        if self.key is not None and path not in OPEN_PATHS:
            given = headers.get("x-api-key") or _bearer(headers.get("authorization", ""))
            if not hmac.compare_digest(given.encode(), self.key):
                return 401, "missing or wrong API key (send it as X-API-Key)"
        return None

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, read here up to the limit (None past it): the app then reads
        it from memory, and a body without an honest Content-Length is stopped at the
        limit, not buffered whole."""
        parts, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return b"".join(parts)
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body_bytes:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, when it comes

    return replay


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _reply(send: Send, status: int, detail: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def read_api_key(file: str | None, env: dict[str, str]) -> str | None:
    """The service's key: from `file` (its first line) or INSTRUCTRANK_API_KEY; never a
    command-line value, which any user of the machine can read in `ps`."""
    from pathlib import Path

    from recdata.errors import ConfigError

    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"API key file {path} does not exist")
        lines = path.read_text().splitlines()
        key = lines[0].strip() if lines else ""
        if not key:
            raise ConfigError(f"API key file {path} is empty")
        return key
    key = env.get("INSTRUCTRANK_API_KEY", "").strip()
    return key or None
