"""Generated API input against a real `instructrank serve` on loopback: schemathesis reads
the service's own OpenAPI document and generates requests from it, bodies that fit the
schema and bodies that break it (wrong types, missing and extra fields, huge and negative
numbers, odd strings), well over a thousand per run. Every answer must be a documented one:
never a 5xx, every 4xx a JSON `detail` that names what is wrong and quotes at most a short
prefix of what was sent."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES = {"positive": 300, "negative": 800}  # per operation with a body; probes: 25
ECHO_LIMIT = 160  # a quoted value: serve.http.ECHO_CHARS plus its "... (N characters)"


@pytest.fixture(scope="module")
def served(trained):
    """`instructrank serve` as a user starts it, on a free loopback port."""
    from serve.http import wait_ready
    from tests.conftest import _free_port

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "serve.cli", "serve", "--port", str(port),
                             "--repo", str(trained["repo"]), "--data-dir", str(trained["data"])],
                            env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, 240)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _problems(response) -> list[str]:
    """What is wrong with one answer (empty: nothing)."""
    code = response.status_code
    if code >= 500:
        return [f"{code}: {response.text[:300]}"]
    if code < 400:
        return []
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return [f"{code} without a JSON detail: {response.text[:200]}"]
    if isinstance(detail, str):
        return [] if detail.strip() else [f"{code} with an empty detail"]
    out = []
    for item in detail:
        if not item.get("loc") or not item.get("msg"):
            out.append(f"{code} error without a location or message: {item}")
        quoted = item.get("input")
        if quoted is not None and len(str(quoted)) > ECHO_LIMIT:
            out.append(f"{code} quotes {len(str(quoted))} characters of the input back")
    return out


def _fuzz(strategy, examples: int, base: str, label: str, seen: Counter[str],
          problems: list[str]) -> None:
    """Send `examples` cases drawn from `strategy` (seeded: the same cases each run)."""
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def call(case) -> None:
        response = case.call(base_url=base, timeout=60)
        seen[f"{label} {response.status_code}"] += 1
        problems.extend(f"{case.body!r:.200} -> {p}" for p in _problems(response))

    call()


def test_generated_requests_get_documented_answers_never_a_5xx(served):
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    seen: Counter[str] = Counter()
    problems: list[str] = []
    for operation in [result.ok() for result in schema.get_all_operations()]:
        has_body = operation.method.upper() == "POST"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if not has_body and mode is GenerationMode.NEGATIVE:
                continue  # a GET without parameters has nothing to break
            examples = EXAMPLES[mode.value] if has_body else 25

            _fuzz(operation.as_strategy(generation_mode=mode), examples, served,
                  f"{operation.method.upper()} {operation.path} {mode.value}", seen, problems)
    total = sum(seen.values())
    print(f"{total} generated requests: {dict(sorted(seen.items()))}")
    assert not problems, f"{len(problems)} bad answers, e.g. {problems[:5]}"
    assert total >= 1000, seen
    # the generator reached both sides of the contract
    assert any(k.startswith("POST /recommend positive 200") for k in seen), seen
    assert any(k.startswith("POST /recommend negative 422") for k in seen), seen
