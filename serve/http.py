"""The HTTP service: `POST /recommend`, `GET /healthz` (liveness), `GET /readyz` (the online
store answers), OpenAPI at `/docs`; keys, body limits and the access log: serve.guard.

`create_app(load)` takes a function that returns a loaded `Recommender`; it is called once,
at start-up, so no request pays for loading. Errors map to status codes a client can act on:
- 422: the body is wrong (empty, non-string or over-long instruction; k out of range; a
  field the API does not have), naming the field and quoting at most the first
  ECHO_CHARS characters of what was sent;
- 503: the online store is unreachable. The process stays up; the next request tries the
  store again, so service resumes by itself when the store is back.
Handlers are plain `def`s: FastAPI runs them in its thread pool, and `recommend()` releases
the GIL in the encoder, the online read and LightGBM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints

# module level: FastAPI resolves the handlers' (string) annotations in this module's globals
from starlette.requests import Request
from starlette.responses import JSONResponse as _JSONResponse

from ranking.recommend import MAX_K, MAX_SESSION_ITEMS
from ranking.sanitize import MAX_INSTRUCTION_CHARS


class JSONResponse(_JSONResponse):
    """JSON that any caller-given string fits in. A lone surrogate (JSON's "\\ud800" decodes
    to one) has no UTF-8 encoding, so a body quoting one (a 422 naming the value, a user id
    echoed back) failed as a 500; such a body is written with ASCII escapes instead, which
    decode to the same strings."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            import json

            return json.dumps(content, ensure_ascii=True, allow_nan=False, indent=None,
                              separators=(",", ":")).encode("ascii")


MAX_ID_CHARS = 256
ECHO_CHARS = 80  # of a rejected value, repeated in a 422: enough to recognise it, no more

if TYPE_CHECKING:
    from ranking.recommend import Recommendation, Recommender
    from serve.guard import Guard


class RecommendRequest(BaseModel):
    # a misspelt field ("instructions", "K") is an error naming it, not a silent default
    model_config = ConfigDict(extra="forbid")
    # strict: true, 1.0 or "5" for a number is the caller's mistake, not something to coerce
    user_id: StrictInt | Annotated[StrictStr, StringConstraints(max_length=MAX_ID_CHARS)] | None = \
        Field(None, description="The catalogue's own user id (an integer, or a string for a "
                                "string-id dataset). Omit it (or give an unknown id) for "
                                "cold start.")
    instruction: StrictStr = Field(..., min_length=1, max_length=MAX_INSTRUCTION_CHARS,
                                   description="What the person wants, in plain language.")
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="How many items to return.")
    now: datetime | None = Field(None, description="The request's time (ISO 8601 or unix "
                                                   "seconds); default: the server's clock.")
    diversity: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                                    description="Re-rank for variety (MMR lambda, 0 to 1: 0 is "
                                                "the ranker's order); default the service's. "
                                                "A request asking for variety ('a mix', "
                                                "'surprise me') gets some anyway.")
    history: list[StrictInt | Annotated[StrictStr, StringConstraints(max_length=MAX_ID_CHARS)]] \
        | None = Field(None, max_length=MAX_SESSION_ITEMS,
                       description="Item ids of this session, most recent first: an anonymous "
                                   "or fresh session's history. They feed the history sources "
                                   "and are not recommended back.")


class ReasonOut(BaseModel):
    text: str
    family: str
    contribution: float


class ItemOut(BaseModel):
    item_id: int | str = Field(description="The catalogue's own item id.")
    title: str
    score: float
    reasons: list[ReasonOut]


class RecommendResponse(BaseModel):
    user_id: int | str | None
    instruction: str = Field(description="The instruction as scored (cleaned).")
    cold_start: bool
    candidates: int
    items: list[ItemOut]
    timings_ms: dict[str, float]
    now: datetime = Field(description="The request's time, which its features were taken at.")
    understood: dict[str, Any] = Field(
        default_factory=dict, description="What was read from the instruction: wanted and "
                                          "excluded values, ranges, named items, and the text "
                                          "left for semantic matching.")


def to_response(rec: Recommendation) -> RecommendResponse:
    return RecommendResponse(
        user_id=rec.user_id, instruction=rec.instruction, cold_start=rec.cold_start,
        candidates=rec.candidates, timings_ms=rec.timings_ms,
        now=datetime.fromtimestamp(rec.now, UTC), understood=rec.understood,
        items=[ItemOut(item_id=i.item_id, title=i.title, score=round(i.score, 6),
                       reasons=[ReasonOut(text=r.text, family=r.family,
                                          contribution=r.contribution) for r in i.reasons])
               for i in rec.items])


def json_body(model: BaseModel) -> Any:
    """A response model as its JSON, written by pydantic's serializer in one call: returned
    as a model, FastAPI validates it again against `response_model`, turns it into Python
    objects and writes those with `json` (~0.5 ms of the HTTP process's ~2 ms per request).
    A string pydantic cannot write (a lone surrogate) goes the JSONResponse way."""
    from pydantic_core import PydanticSerializationError
    from starlette.responses import Response

    try:
        return Response(model.model_dump_json(), media_type="application/json")
    except PydanticSerializationError:
        return JSONResponse(model.model_dump(mode="json"))


def short_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's 422 detail (field, message, type) with each rejected value cut to its
    first ECHO_CHARS characters: the default repeats the whole input, a megabyte back for a
    megabyte sent."""
    out = []
    for error in errors:
        item = {k: error[k] for k in ("type", "loc", "msg") if k in error}
        if "input" in error:
            text = error["input"] if isinstance(error["input"], str) else repr(error["input"])
            item["input"] = text if len(text) <= ECHO_CHARS else \
                f"{text[:ECHO_CHARS]}... ({len(text):,} characters)"
        out.append(item)
    return out


def create_app(load: Callable[[], Recommender], *, api_key: str | None = None,
               max_body_bytes: int | None = None, rate_limit: float | None = None) -> Guard:
    """The service around `load()`'s recommender; `api_key` (None: open), `max_body_bytes`
    (default serve.guard.MAX_BODY_BYTES) and `rate_limit` (requests a second per client
    address; None: none) are enforced by serve.guard, which also writes the access log."""
    from fastapi import FastAPI, HTTPException
    from fastapi.exceptions import RequestValidationError

    from recdata.errors import InvalidRequestError, StoreUnavailableError

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        import gc

        state["recommender"] = load()
        # what was loaded lives as long as the process: out of the collector's way, so a
        # full collection no longer walks it in the middle of a request (p99 42 -> 36 ms)
        gc.freeze()
        yield
        close = getattr(state["recommender"], "close", None)
        if close is not None:
            close()
        state.clear()

    app = FastAPI(title="instructrank", lifespan=lifespan, default_response_class=JSONResponse,
                  description="Instruction-following recommendations: a person says what they "
                              "want; the catalogue is ranked for them and that request.")

    @app.exception_handler(RequestValidationError)
    def bad_body(_: Any, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": short_errors(exc.errors())})

    @app.exception_handler(StoreUnavailableError)
    def store_down(_: Any, exc: StoreUnavailableError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(body: RecommendRequest, request: Request) -> Any:
        try:
            rec = state["recommender"].recommend(body.user_id, body.instruction, body.k,
                                                 now=body.now, history=body.history,
                                                 diversity=body.diversity)
        except InvalidRequestError as exc:
            return JSONResponse(status_code=422, content={"detail": str(exc)})
        request.state.timings_ms = rec.timings_ms  # for the access log (serve.guard)
        return json_body(to_response(rec))

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: 200 while the process serves, with the loaded model and the online
        store's state; a store outage is reported here, not failed (restarting a live
        service does not bring a store back; `/readyz` is what routes traffic away)."""
        recommender = state.get("recommender")
        if recommender is None:
            raise HTTPException(status_code=503, detail="still loading")
        return {"status": "ok", **_store_state(recommender)}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: 200 when the model is loaded and the online store answers now, else
        503 with the reason; a load balancer sends requests only while it is 200."""
        recommender = state.get("recommender")
        if recommender is None:
            return JSONResponse(status_code=503, content={"ready": False,
                                                          "reason": "still loading"})
        found = _store_state(recommender)
        ready = found["store"] == "ok"
        return JSONResponse(status_code=200 if ready else 503,
                            content={"ready": ready, **found})

    from serve.guard import MAX_BODY_BYTES, Guard

    return Guard(app, api_key=api_key, max_body_bytes=max_body_bytes or MAX_BODY_BYTES,
                 rate_limit=rate_limit)


def _store_state(recommender: Any) -> dict[str, Any]:
    from recdata.errors import StoreUnavailableError

    try:
        return {**recommender.health(), "store": "ok"}
    except StoreUnavailableError as exc:
        return {"store": f"unreachable: {exc}"}


def wait_ready(base: str, proc: Any, seconds: float) -> None:
    """Block until the service at `base` (started as `proc`, a Popen) answers /readyz with
    200; RuntimeError if the process exits first or `seconds` pass (what a deploy script,
    the benches and the tests that start `instructrank serve` all need)."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the HTTP server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the HTTP server was not ready (/readyz) within {seconds:g} s")
        try:
            if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
