"""Property-based fuzzing of the server's own OpenAPI schema with schemathesis: every operation gets
schema-valid (positive) and schema-violating (negative) requests, with credentials, against the app
on the real engine and value model with tight caps (so that the valid searches stay short). No
generated request may get a 5xx. The default run is bounded (`EXAMPLES` per operation and mode);
the slow one tries `SLOW_EXAMPLES`. With RESTRL_RELIABILITY_OUT set, the counts are written there
as fuzz.json (bench.reliability reads them)."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import ADMIN, AUTH, inproc_server

EXAMPLES = 6
SLOW_EXAMPLES = 70  # 4 operations with a body x 2 modes x 70, and the rest: over 500 requests (issue 19)
# caps: a valid search is a second or two of engine work; /admin/models may be asked to load anything
CAPS = {"max_samples": 2, "max_new_tokens": 8, "max_deadline_s": 3.0, "max_tokens_budget": 64,
        "max_concurrent_searches": 2, "max_queued": 4, "ready_timeout_s": 120}


def fuzz(url: str, raw_schema: dict[str, Any], *, examples: int) -> dict[str, Any]:
    """Generate and send the requests (blocking; run it in a thread). Returns the counts."""
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(raw_schema)
    session = requests.Session()
    statuses: Counter[str] = Counter()
    per_operation: dict[str, int] = {}
    failures: list[str] = []
    errors: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        headers = ADMIN if operation.path.startswith("/admin") else AUTH
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz_one(url, session, operation, mode, label, headers, examples, statuses, per_operation, failures)
            except Exception as exc:  # a mode that cannot generate for this operation (no parameters)
                errors.append(f"{label} {mode.value}: {type(exc).__name__}: {str(exc)[:200]}")
    cases = sum(statuses.values())
    return {"fuzz_cases": cases, "fuzz_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
            "statuses": dict(sorted(statuses.items())), "per_operation": per_operation, "failures": failures[:20],
            "generation_notes": errors, "examples_per_operation_and_mode": examples}


def _fuzz_one(url: str, session: Any, operation: Any, mode: Any, label: str, headers: dict[str, str], examples: int,
              statuses: Counter[str], per_operation: dict[str, int], failures: list[str]) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Any) -> None:
        response = case.call(base_url=url, session=session, headers={**(case.headers or {}), **headers}, timeout=120)
        statuses[str(response.status_code)] += 1
        per_operation[label] = per_operation.get(label, 0) + 1
        if response.status_code >= 500:
            failures.append(f"{label} {mode.value}: {response.status_code} {response.text[:200]} "
                            f"body={str(case.body)[:200]} query={case.query}")

    send()


async def _run(vllm_policy: Any, value_model: Any, examples: int) -> dict[str, Any]:
    from sandbox import Limits, Sandbox

    with Sandbox(workers=1, limits=Limits(wall_s=3.0, cpu_s=2.0)) as sb:
        async with inproc_server(vllm_policy, value_model, sandbox=sb, **CAPS) as (services, url):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                raw = (await client.get("/openapi.json")).json()
            report = await asyncio.to_thread(fuzz, url, raw, examples=examples)
            async with httpx.AsyncClient(base_url=url, timeout=120, headers=AUTH) as client:
                report["ready_after"] = (await client.get("/ready")).status_code
            report["active_after"] = services.admission.active
    out = os.environ.get("RESTRL_RELIABILITY_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "fuzz.json").write_text(json.dumps(report, indent=2))
    return report


def _check(report: dict[str, Any], examples: int) -> None:
    assert report["fuzz_5xx"] == 0, report["failures"]
    assert len(report["per_operation"]) >= 10  # every route of the schema was exercised
    assert report["fuzz_cases"] >= 5 * examples  # operations without inputs yield one case per mode
    assert "200" in report["statuses"] and "422" in report["statuses"]  # valid requests served, invalid refused
    assert report["ready_after"] == 200 and report["active_after"] == 0


@pytest.mark.vllm
async def test_schema_fuzzing_gets_no_5xx(vllm_policy: Any, value_model: Any) -> None:
    _check(await _run(vllm_policy, value_model, EXAMPLES), EXAMPLES)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_schema_fuzzing_gets_no_5xx_long(vllm_policy: Any, value_model: Any) -> None:
    report = await _run(vllm_policy, value_model, SLOW_EXAMPLES)
    _check(report, SLOW_EXAMPLES)
    assert report["fuzz_cases"] >= 500, report["per_operation"]


async def test_fuzz_findings_empty_stop_or_prompt_is_422_not_500() -> None:
    """Found by the fuzzer: ``"stop": [""]`` reached vLLM's SamplingParams and ``"prompt": ""`` its
    input processor; both came back as 500s."""
    from tests.server.test_api import serve

    _, server = await serve()
    async with server as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        for route, body in (("/v1/completions", {"prompt": "x", "stop": [""]}),
                            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": ""}),
                            ("/v1/completions", {"prompt": "x", "stop": ["s"] * 17}),
                            # found by the long fuzz: an empty prompt reached vLLM ("The decoder prompt cannot be empty")
                            ("/v1/completions", {"prompt": ""}), ("/v1/completions", {"prompt": ["a", ""]})):
            r = await client.post(route, json=body)
            field = "prompt" if "stop" not in body else "stop"
            assert r.status_code == 422 and r.json()["error"]["field"].startswith(field), r.text
        r = await client.post("/v1/completions", json={"prompt": "x", "stop": ["\n", "def "], "max_tokens": 3})
        assert r.status_code == 200, r.text
