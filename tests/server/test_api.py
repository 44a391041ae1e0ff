"""The HTTP API through a real uvicorn server on loopback, with the real search (`search.run_search`)
over policy/value doubles: protocol, SSE, auth, admission, hot-swap bookkeeping, metrics.
The same routes on the real engine and model: test_real_engine.py."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from models.default import DEFAULT_MODEL_BASE
from search import run_search
from search.stack import value_pauses_engine
from server import Settings, build_app
from server.services import Services, assemble_services
from tests.server.conftest import running
from tests.server.doubles import PROGRAM, FakeLoader, FakePolicy

ADMIN = "admin-secret"
# the stub has a body: the rewrite-mode program is the starter code followed by the model's code
PROBLEM = {"statement": "Return the sum of a and b.", "starter_code": 'def add(a, b):\n    """Return a + b."""\n',
           "entry_point": "add"}


async def start(policy: str | None = None, value: str | None = None, *, any_policy: bool = False,
                **overrides: Any) -> tuple[Services, Settings]:
    settings = Settings(**{"admin_token": ADMIN, "max_samples": 8, "value": {"batch_wait_ms": 0, "any_policy": any_policy},
                           **overrides})
    services = assemble_services(settings, loader=FakeLoader(any_policy=any_policy), search_fn=run_search)
    await services.registry.load_initial(policy, value)
    return services, settings


async def serve(policy: str | None = None, value: str | None = None, *, any_policy: bool = False,
                **overrides: Any) -> tuple[Services, Any]:
    services, settings = await start(policy, value, any_policy=any_policy, **overrides)
    return services, running(build_app(settings, services=services, load_models=False))


def sse_events(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        name, data = "message", None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        events.append((name, json.loads(data) if data and data != "[DONE]" else data))
    return events


@pytest.fixture
async def api() -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    services, server = await serve()
    async with server as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield services, client


@pytest.mark.parametrize("strategy", ["greedy", "best_of_n", "prm_best_of_n", "beam", "orm_mcts", "vm_mcts"])
async def test_solve_every_strategy(api: tuple[Services, httpx.AsyncClient], strategy: str) -> None:
    _, client = api
    r = await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": strategy, "budget": {"samples": 4},
                                             "k": 2, "seed": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == strategy
    assert body["code"] == PROGRAM
    assert body["program"].startswith("def add(a, b):\n")
    assert body["value"] == 0.5
    assert 1 <= body["usage"]["samples"] <= 4
    assert body["policy_version"] == "policy@default" and body["value_version"] == "value@default"
    assert body["id"].startswith("solve-") and body["budget_capped"] == []


async def test_solve_stream_sends_progress_then_result(api: tuple[Services, httpx.AsyncClient]) -> None:
    _, client = api
    r = await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": "vm_mcts", "budget": {"samples": 6},
                                             "k": 2, "stream": True, "return_tree": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [n for n, _ in events]
    assert names[-1] == "result" and names.count("result") == 1 and "progress" in names
    progress = [d for n, d in events if n == "progress"]
    assert [p["nodes"] for p in progress] == sorted(p["nodes"] for p in progress)
    assert progress[-1]["usage"]["samples"] <= 6 and progress[-1]["best_code"] == PROGRAM
    result = events[-1][1]
    assert result["program"] and result["tree"] is not None


async def test_budget_is_capped_and_reported(api: tuple[Services, httpx.AsyncClient]) -> None:
    _, client = api
    r = await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": "best_of_n", "budget": {"samples": 500},
                                             "max_tokens": 5000})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["budget_capped"] == ["budget.samples", "max_tokens"]
    assert body["usage"]["samples"] <= 8
    r = await client.post("/v1/solve", json={"problem": PROBLEM, "max_tokens": 10**6})  # beyond SearchConfig's own bound
    assert r.status_code == 422 and r.json()["error"]["field"] == "max_tokens"


@pytest.mark.parametrize(("payload", "field"), [
    ({"problem": PROBLEM, "strategy": "dfs"}, "strategy"),
    ({"problem": {"starter_code": "x"}}, "problem.statement"),
    ({"problem": PROBLEM, "budget": {"samples": 0}}, "budget.samples"),
    ({"problem": PROBLEM, "k": 1000}, "k"),
    ({"problem": PROBLEM, "step_lines": 0}, "step_lines"),
    ({"problem": PROBLEM, "bogus": 1}, "bogus"),
    ({"problem": {**PROBLEM, "public_tests": [{"kind": "call"}]}}, "problem.public_tests.0"),
    ({"problem": PROBLEM, "rerank_with_tests": True}, "rerank_with_tests"),
    ({"problem": PROBLEM, "strategy": "best_of_n", "widen": True}, "widen"),  # no UCT selection to widen: not ignored
])
async def test_bad_inputs_name_the_field(api: tuple[Services, httpx.AsyncClient], payload: dict[str, Any],
                                         field: str) -> None:
    _, client = api
    r = await client.post("/v1/solve", json=payload)
    assert r.status_code in (400, 422), r.text
    error = r.json()["error"]
    assert error["field"] == field and error["type"] == "invalid_request" and error["message"]


async def test_malformed_json_oversized_body_and_unknown_route(api: tuple[Services, httpx.AsyncClient]) -> None:
    _, client = api
    r = await client.post("/v1/solve", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json" and r.json()["error"]["field"] == "body"
    big = {"problem": {**PROBLEM, "statement": "x" * 2_000_000}}
    r = await client.post("/v1/solve", json=big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while it streams in
        yield b'{"problem": {"statement": "'
        for _ in range(40):
            yield b"y" * 50_000
        yield b'"}}'

    r = await client.post("/v1/solve", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"
    r = await client.get("/v1/nothing")
    assert r.status_code == 404 and r.json() == {"error": {"type": "not_found", "message": "Not Found"}}


async def test_api_keys_and_admin_token() -> None:
    services, server = await serve(api_keys="k1,k2")
    async with server as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        body = {"problem": PROBLEM, "strategy": "greedy"}
        r = await client.post("/v1/solve", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "unauthorized"
        assert (await client.post("/v1/solve", json=body, headers={"Authorization": "Bearer k3"})).status_code == 401
        assert (await client.post("/v1/solve", json=body, headers={"Authorization": "Bearer k2"})).status_code == 200
        assert (await client.post("/v1/solve", json=body, headers={"X-API-Key": "k1"})).status_code == 200
        for open_route in ("/health", "/ready", "/metrics"):
            assert (await client.get(open_route)).status_code == 200, open_route
        assert (await client.get("/admin/models")).status_code == 401
        assert (await client.get("/admin/models", headers={"Authorization": "Bearer k1"})).status_code == 403
        r = await client.get("/admin/models", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200 and r.json()["active"]["policy_version"] == "policy@default"
    services, server = await serve(admin_token=None)
    async with server as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.get("/admin/models", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 403 and "RESTRL_ADMIN_TOKEN" in r.json()["error"]["message"]


async def test_overload_gets_429_with_retry_after() -> None:
    services, server = await serve(max_concurrent_searches=1, max_queued=1)
    policy = services.registry.active.policy  # type: ignore[union-attr]
    policy.gate = asyncio.Event()
    body = {"problem": PROBLEM, "strategy": "greedy"}
    async with server as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        first = asyncio.create_task(client.post("/v1/solve", json=body))
        second = asyncio.create_task(client.post("/v1/solve", json=body))
        while services.admission.active + services.admission.queued < 2:
            await asyncio.sleep(0.01)
        r = await client.post("/v1/solve", json=body)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "overloaded"
        metrics = (await client.get("/metrics")).text
        assert 'restrl:queue_depth 1.0' in metrics and 'restrl:active_searches 1.0' in metrics
        policy.gate.set()
        assert (await first).status_code == 200 and (await second).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'restrl:rejected_requests_total{reason="queue_full"} 1.0' in metrics


async def test_client_disconnect_cancels_the_search() -> None:
    services, server = await serve()
    policy = services.registry.active.policy  # type: ignore[union-attr]
    policy.gate = asyncio.Event()  # the search blocks in its first policy call
    async with server as url:
        for stream in (False, True):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                task = asyncio.create_task(client.post("/v1/solve", json={"problem": PROBLEM, "stream": stream}))
                while services.admission.active == 0:
                    await asyncio.sleep(0.01)
                task.cancel()  # closes the connection
            for _ in range(200):
                if services.admission.active == 0:
                    break
                await asyncio.sleep(0.05)
            assert services.admission.active == 0
        text = services.metrics.render().decode()
        cancelled = {s.labels["reason"]: s.value for f in text_string_to_metric_families(text)
                     if f.name == "restrl:searches_cancelled" for s in f.samples}
        assert sum(cancelled.values()) == 2, cancelled


async def test_hot_swap_keeps_in_flight_searches_on_their_pair(tmp_path: Path) -> None:
    for name in ("corrupt", "v2"):  # checkpoint folders under the root (the doubles do not read them)
        (tmp_path / name).mkdir()
        (tmp_path / name / "restrl.json").write_text("{}")
    services, server = await serve(checkpoint_root=str(tmp_path))
    v2 = str((tmp_path / "v2").resolve())
    old_policy = services.registry.active.policy  # type: ignore[union-attr]
    old_policy.gate = asyncio.Event()
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with server as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        in_flight = [asyncio.create_task(client.post("/v1/solve", json={"problem": PROBLEM, "strategy": "greedy"}))
                     for _ in range(3)]
        while services.admission.active < 3:
            await asyncio.sleep(0.01)
        r = await client.post("/admin/models", json={"policy": "corrupt"}, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["type"] == "swap_failed"
        assert r.json()["error"]["message"].startswith("corrupt/restrl.json: ")  # the path as sent, not the root
        r = await client.post("/admin/models", json={"policy": "v2"}, headers=auth)
        assert r.status_code == 200, r.text
        status = r.json()
        assert status["active"]["policy_version"] == f"policy@{v2}"
        assert status["draining"][0]["in_flight"] == 3 and not old_policy.closed
        new = await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": "greedy"})
        assert new.json()["policy_version"] == f"policy@{v2}"
        old_policy.gate.set()
        for task in in_flight:
            response = await task
            assert response.status_code == 200 and response.json()["policy_version"] == "policy@default"
        assert old_policy.closed
        r = await client.post("/admin/models/rollback", headers=auth)
        assert r.status_code == 200 and r.json()["active"]["policy_version"] == "policy@default"
        history = [(e["kind"], e["result"]) for e in r.json()["history"]]
        assert history == [("load", "ok"), ("swap", "failed"), ("swap", "ok"), ("rollback", "ok")]
        families = {f.name: f for f in text_string_to_metric_families((await client.get("/metrics")).text)}
        swaps = {(s.labels["kind"], s.labels["result"]): s.value for s in families["restrl:swap_events"].samples
                 if s.name.endswith("_total")}
        assert swaps == {("load", "ok"): 1, ("swap", "failed"): 1, ("swap", "ok"): 1, ("rollback", "ok"): 1}
        info = [s.labels for s in families["restrl:model_info"].samples if s.value == 1]
        assert info == [{"policy_version": "policy@default", "value_version": "value@default"}]


async def test_ready_probes_and_reports_failure() -> None:
    services, server = await serve(ready_cache_s=0)
    async with server as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.get("/ready")
        assert r.status_code == 200 and r.json()["probe"]["value"] == 0.5
        services.registry.active.policy.fail = RuntimeError("engine wedged")  # type: ignore[union-attr]
        r = await client.get("/ready")
        assert r.status_code == 503 and "engine wedged" in r.json()["error"]["message"]
        assert (await client.get("/health")).json() == {"status": "ok"}


async def test_metrics_names_parse_with_the_prometheus_parser(api: tuple[Services, httpx.AsyncClient]) -> None:
    _, client = api
    await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": "vm_mcts", "budget": {"samples": 4}, "k": 2})
    await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": "nope"})
    r = await client.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    expected = {
        "restrl:requests": "counter", "restrl:request_latency_seconds": "histogram",
        "restrl:search_nodes": "histogram", "restrl:search_samples": "histogram",
        "restrl:search_policy_tokens": "histogram", "restrl:search_value_calls": "histogram",
        "restrl:value_batch_size": "histogram", "restrl:engine_generated_tokens": "counter",
        "restrl:engine_prompt_tokens": "counter", "restrl:engine_cached_prompt_tokens": "counter",
        "restrl:queue_depth": "gauge", "restrl:active_searches": "gauge", "restrl:rejected_requests": "counter",
        "restrl:searches_cancelled": "counter", "restrl:swap_events": "counter", "restrl:model_info": "gauge",
        "restrl:sandbox_verdicts": "counter",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
    requests = {(s.labels["route"], s.labels["strategy"], s.labels["status"]): s.value
                for s in families["restrl:requests"].samples if s.name == "restrl:requests_total"}
    assert requests[("/v1/solve", "vm_mcts", "200")] == 1
    assert requests[("/v1/solve", "none", "422")] == 1
    samples = {s.name: s.value for s in families["restrl:search_samples"].samples if s.labels.get("strategy") == "vm_mcts"}
    assert samples["restrl:search_samples_count"] == 1 and 1 <= samples["restrl:search_samples_sum"] <= 4
    assert sum(s.value for s in families["restrl:value_batch_size"].samples if s.name.endswith("_count")) >= 1
    generated = [s.value for s in families["restrl:engine_generated_tokens"].samples if s.name.endswith("_total")]
    assert generated[0] > 0


async def test_drain_refuses_new_work_and_waits_for_admitted() -> None:
    services, _ = await start()
    policy = services.registry.active.policy  # type: ignore[union-attr]
    policy.gate = asyncio.Event()

    async def hold() -> None:
        async with services.admission.slot():
            await policy.gate.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    assert not await services.admission.drain(0.05)  # still running
    with pytest.raises(Exception, match="shutting down"):
        async with services.admission.slot():
            pass
    policy.gate.set()
    await holder
    assert await services.admission.drain(1.0)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTRL_PORT", "9001")
    monkeypatch.setenv("RESTRL_API_KEYS", "a, b")
    monkeypatch.setenv("RESTRL_ADMIN_TOKEN", "s3cr3t-admin")
    s = Settings()
    assert s.port == 9001 and [k.get_secret_value() for k in s.api_keys] == ["a", "b"]
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s.model_dump())
    assert Settings(port=7).port == 7  # flags (init arguments) win over the environment
    FakePolicy()  # doubles import cleanly


async def test_value_settings_reach_the_loaded_value_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """RESTRL_VALUE__PACK_TOKENS, the value dtype and device arrive in the value model the server
    loads; the default device is the GPU when there is one, else the CPU."""
    import torch

    from server.loading import EngineLoader

    monkeypatch.setenv("RESTRL_VALUE__PACK_TOKENS", "0")
    settings = Settings(value={"dtype": "float32"})
    assert settings.value.pack_tokens == 0 and Settings(value={"pack_tokens": None}).value.pack_tokens is None
    assert settings.value.device == "auto" and Settings(value={"device": "cpu"}).value.device == "cpu"
    value = await EngineLoader(settings).load_value(None, policy=FakePolicy(base_model=DEFAULT_MODEL_BASE))  # type: ignore[arg-type]
    try:
        cfg = value.config  # type: ignore[attr-defined]
        assert (cfg.pack_tokens, cfg.resolved_pack_tokens(), cfg.resolved_dtype()) == (0, 0, "float32")
        expected = "cuda" if torch.cuda.is_available() else "cpu"
        assert cfg.device == expected and next(value.model.parameters()).device.type == expected  # type: ignore[attr-defined]
        if expected == "cpu":  # vLLM on the CPU too: value batches pause it and take every core
            assert value_pauses_engine(settings.policy, settings.value)
            assert value.threads == len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
        assert value.policy_base == DEFAULT_MODEL_BASE  # the shipped adapter was trained for the default policy
    finally:
        await value.close()


def test_cpu_sharing_setting_resolves_per_engine_and_device() -> None:
    import torch

    def pauses(**settings: Any) -> bool:
        s = Settings(**settings)
        return value_pauses_engine(s.policy, s.value)

    cpu_host = not torch.cuda.is_available()
    assert pauses() == cpu_host  # auto: vLLM CPU build + value on the CPU
    assert not pauses(policy={"engine": "hf"})  # nothing to pause
    assert not pauses(value={"cpu_sharing": "concurrent"})
    assert not pauses(value={"cpu_sharing": "pause"}, policy={"engine": "hf"})  # only vLLM can pause
    with pytest.raises(ValidationError):
        Settings(value={"cpu_sharing": "sometimes"})


def test_nested_settings_from_the_environment_and_the_renamed_flat_names(monkeypatch: pytest.MonkeyPatch,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """RESTRL_POLICY / RESTRL_VALUE name the checkpoints, RESTRL_POLICY__X sets a field of the policy
    config; the flat names of earlier releases still work, each warning with its new name."""
    monkeypatch.setenv("RESTRL_POLICY", "/models/mine")
    monkeypatch.setenv("RESTRL_POLICY__MAX_MODEL_LEN", "1024")
    monkeypatch.setenv("RESTRL_VALUE", "/models/mine-value")
    monkeypatch.setenv("RESTRL_SANDBOX__WORKERS", "3")
    s = Settings()
    assert (s.policy.model, s.policy.max_model_len, s.value.model, s.sandbox.workers) == ("/models/mine", 1024, "/models/mine-value", 3)
    assert not caplog.records
    monkeypatch.setenv("RESTRL_KV_CACHE_GIB", "2.5")
    monkeypatch.setenv("RESTRL_ENGINE", "hf")
    monkeypatch.setenv("RESTRL_VALUE_DTYPE", "float32")
    monkeypatch.setenv("RESTRL_SANDBOX_WORKERS", "5")
    with caplog.at_level("WARNING"):
        s = Settings(value_threads=2)  # a flat init argument (a flag of earlier releases) too
    assert (s.policy.kv_cache_gib, s.policy.engine, s.policy.model) == (2.5, "hf", "/models/mine")
    assert (s.value.dtype, s.value.threads, s.value.model) == ("float32", 2, "/models/mine-value")
    assert s.sandbox.workers == 3  # the new name wins over the old one
    warned = caplog.text
    for old, new in (("kv_cache_gib", "RESTRL_POLICY__KV_CACHE_GIB"), ("engine", "RESTRL_POLICY__ENGINE"),
                     ("value_dtype", "RESTRL_VALUE__DTYPE"), ("value_threads", "RESTRL_VALUE__THREADS")):
        assert f"'{old}' is a deprecated name: use {new}" in warned


def test_serve_flags_nest_and_keep_the_old_names() -> None:
    import restrl
    from server.cli import settings_overrides

    args = restrl.build_parser().parse_args(["serve", "--policy", "/m", "--policy.kv-cache-gib", "2", "--value.any-policy", "true",
                                             "--kv-cache-gib", "3", "--max-samples", "5", "--sandbox.workers", "4"])
    flags = settings_overrides(args)
    assert flags == {"policy": {"model": "/m", "kv_cache_gib": 2.0}, "value": {"any_policy": True}, "kv_cache_gib": "3",
                     "max_samples": 5, "sandbox": {"workers": 4}}
    s = Settings(**flags)
    assert (s.policy.model, s.policy.kv_cache_gib, s.value.any_policy, s.max_samples, s.sandbox.workers) == ("/m", 2.0, True, 5, 4)


async def test_a_policy_of_another_base_gets_no_value_model_and_searches_answer_400(tmp_path: Path) -> None:
    """No silent fallback to the value model of the default policy: the pairing is reported in
    /ready and /admin/models, searches answer 400 naming RESTRL_VALUE, plain completions work."""
    for name in ("other-value", "default-again"):  # checkpoints the admin API may load
        (tmp_path / name).mkdir()
        (tmp_path / name / "restrl.json").write_text("{}")
    services, server = await serve(policy="/ckpt/other-policy", checkpoint_root=str(tmp_path))
    async with server as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        for body in ({"problem": PROBLEM, "strategy": "vm_mcts"}, {"problem": PROBLEM, "strategy": "greedy", "stream": True}):
            r = await client.post("/v1/solve", json=body)
            assert r.status_code == 400 and "RESTRL_VALUE" in r.json()["error"]["message"], r.text
        r = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4, "search": {"strategy": "vm_mcts"}})
        assert r.status_code == 400 and "RESTRL_VALUE__ANY_POLICY" in r.json()["error"]["message"]
        assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4})).status_code == 200
        ready = (await client.get("/ready")).json()
        assert ready["status"] == "ready" and ready["value_version"] == "none" and ready["probe"]["value"] is None
        assert ready["value_match"]["status"] == "none" and not ready["value_match"]["allowed"]
        active = (await client.get("/admin/models", headers={"authorization": f"Bearer {ADMIN}"})).json()["active"]
        assert (active["policy_base"], active["value_match"], active["searches_allowed"]) == ("other-base", "none", False)
        # a hot swap applies the same rule: a value model trained for this policy makes searches run
        r = await client.post("/admin/models", json={"value": "other-value"}, headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200 and r.json()["active"]["value_match"] == "matches", r.text
        assert (await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": "vm_mcts"})).status_code == 200
        # ... and the default policy back, its value model trained for another: refused again
        r = await client.post("/admin/models", json={"policy": "default-again"}, headers={"authorization": f"Bearer {ADMIN}"})
        assert r.json()["active"]["value_match"] == "other_policy" and not r.json()["active"]["searches_allowed"]
        r = await client.post("/v1/solve", json={"problem": PROBLEM})
        assert r.status_code == 400 and "was trained on rollouts of other-base" in r.json()["error"]["message"]


async def test_any_policy_opts_in_and_every_response_says_whose_value_model_it_is() -> None:
    services, server = await serve(policy="/ckpt/default-policy", value="/ckpt/other-value", any_policy=True)
    async with server as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": "vm_mcts"})
        assert r.status_code == 200 and r.json()["value_version"] == "value@/ckpt/other-value (trained for other-base)"
        r = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4, "search": {"strategy": "best_of_n"}})
        assert r.json()["search"]["value_version"].endswith("(trained for other-base)")
        assert (await client.get("/ready")).json()["value_match"]["status"] == "other_policy"


@pytest.mark.parametrize(("error", "status", "kind"), [
    ("dead", 503, "unavailable"), ("model", 500, "model_error")])
async def test_engine_errors_map_to_http(error: str, status: int, kind: str) -> None:
    from models.base import EngineDeadError, ModelError

    services, server = await serve()
    policy = services.registry.active.policy  # type: ignore[union-attr]
    policy.fail = EngineDeadError("engine core died") if error == "dead" else ModelError("bad request to engine")
    async with server as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": "greedy"})
        assert r.status_code == status and r.json()["error"]["type"] == kind
        r = await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": "greedy", "stream": True})
        assert sse_events(r.text)[-1][0] == "error"
        r = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4})
        assert r.status_code == status and r.json()["error"]["type"] == kind


async def test_models_loading_answers_503_and_ready_says_why() -> None:
    settings = Settings(admin_token=ADMIN)
    services = assemble_services(settings, loader=FakeLoader(), search_fn=run_search)
    async with running(build_app(settings, services=services, load_models=False)) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post("/v1/solve", json={"problem": PROBLEM})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        r = await client.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["message"] == "models are loading"
        assert (await client.get("/v1/models")).json() == {"object": "list", "data": []}


async def test_plain_openai_routes_with_doubles(api: tuple[Services, httpx.AsyncClient]) -> None:
    _, client = api
    r = await client.post("/v1/completions", json={"prompt": ["a", "b"], "n": 2, "max_tokens": 3})
    body = r.json()
    assert r.status_code == 200 and [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 12
    r = await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 10**6})
    assert r.status_code == 422 and r.json()["error"]["field"] == "max_tokens"
    r = await client.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 422 and r.json()["error"]["field"] == "messages"
    r = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                        "stream": True, "stream_options": {"include_usage": True}})
    events = sse_events(r.text)
    assert events[-1] == ("message", "[DONE]")
    content = "".join(d["choices"][0]["delta"].get("content", "") for _, d in events[:-1] if isinstance(d, dict) and d["choices"])
    assert content == PROGRAM and events[-2][1]["usage"]["completion_tokens"] > 0


async def test_rerank_with_public_tests_runs_the_real_sandbox() -> None:
    from sandbox import Sandbox

    settings = Settings(admin_token=ADMIN, value={"batch_wait_ms": 0})
    sandbox = Sandbox(workers=1)
    try:
        services = assemble_services(settings, loader=FakeLoader(), search_fn=run_search, sandbox=sandbox)
        await services.registry.load_initial(None, None)
        problem = {**PROBLEM, "public_tests": [{"kind": "call", "args": [1, 2], "expected": 3},
                                               {"kind": "call", "args": [2, 2], "expected": 5}]}
        async with running(build_app(settings, services=services, load_models=False)) as url, \
                httpx.AsyncClient(base_url=url, timeout=60) as client:
            r = await client.post("/v1/solve", json={"problem": problem, "strategy": "best_of_n",
                                                     "budget": {"samples": 2}, "rerank_with_tests": True})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["reranked"] and body["candidates"][0]["pass_fraction"] == 0.5
            ready = (await client.get("/ready")).json()
            assert ready["sandbox"]["workers"] == 1
            verdicts = {s.labels["status"]: s.value
                        for f in text_string_to_metric_families((await client.get("/metrics")).text)
                        if f.name == "restrl:sandbox_verdicts" for s in f.samples}
            assert sum(verdicts.values()) >= 1 and set(verdicts) <= {"passed", "failed", "timeout", "error", "infra_error"}
    finally:
        sandbox.close()


def test_search_options_reach_the_search_config() -> None:
    from server.protocol import ServerLimits, SolveRequest

    limits = ServerLimits(max_samples=64, max_tokens_budget=100_000, max_deadline_s=60.0, max_new_tokens=512)
    request = SolveRequest.model_validate({"problem": PROBLEM, "step_lines": 3, "k": 4, "c_uct": 0.3, "count_weight": 0.5, "widen": True})
    config, capped = request.to_config(limits)
    assert (config.step_lines, config.k, config.c_uct, config.count_weight, config.widen, capped) == (3, 4, 0.3, 0.5, True, [])
    default = SolveRequest.model_validate({"problem": PROBLEM}).to_config(limits)[0]
    assert default.step_lines == 1 and default.widen is False


def test_the_wire_search_options_are_search_config_fields() -> None:
    """One table: each search option of /v1/solve and the OpenAI `search` object is SearchConfig's
    field of that name - same bounds, same description - unset meaning SearchConfig's default."""
    from search.types import SearchConfig
    from server.protocol import SEARCH_OPTIONS, SearchParams, SearchSpec, SolveRequest

    for name in SEARCH_OPTIONS:
        wire, own = SearchParams.model_fields[name], SearchConfig.model_fields[name]
        assert wire.metadata == own.metadata and wire.default is None, name
        assert wire.description is not None and own.description is not None and wire.description.startswith(own.description), name
    assert SearchParams.model_fields["strategy"].default == SearchConfig.model_fields["strategy"].default
    assert set(SEARCH_OPTIONS) <= set(SearchConfig.model_fields)
    for model in (SolveRequest, SearchSpec):
        with pytest.raises(ValidationError):
            model.model_validate({"problem": {"statement": "s"}, "c_uct": 11} if model is SolveRequest else {"c_uct": 11})
    with pytest.raises(ValidationError):
        SearchConfig(c_uct=11)
    with pytest.raises(ValidationError, match="widen applies to the MCTS strategies"):
        SearchSpec.model_validate({"strategy": "beam", "widen": True})


async def test_openai_search_takes_the_top_level_sampling_fields_and_answers_with_the_code(
        api: tuple[Services, httpx.AsyncClient]) -> None:
    """Through the official client: with `search`, the top-level temperature, top_p and max_tokens
    apply where the search object leaves them unset (max_tokens capped as the search's own, and
    reported); `stop` with a search is refused; the choice's text is the generated code and the
    program the sandbox runs is in `search.programs`, streamed or not. Without `search` a max_tokens
    over the cap is refused (422)."""
    import openai

    from server.protocol import CompletionRequest

    spec = CompletionRequest.model_validate({"prompt": "p", "temperature": 0.2, "top_p": 0.5, "seed": 7, "max_tokens": 99,
                                             "search": {"temperature": 0.9}}).search_spec()
    assert (spec.temperature, spec.top_p, spec.seed, spec.max_tokens) == (0.9, 0.5, 7, 99)
    unset = CompletionRequest.model_validate({"prompt": "p", "search": {}}).search_spec()
    assert (unset.temperature, unset.top_p, unset.seed, unset.max_tokens) == (None, None, None, None)  # OpenAI's defaults do not apply

    services, http = api
    policy = services.registry.active.policy  # type: ignore[union-attr]
    client = openai.AsyncOpenAI(base_url=f"{str(http.base_url).rstrip('/')}/v1", api_key="unused", max_retries=0)
    search = {"strategy": "best_of_n", "budget": {"samples": 2}, "starter_code": PROBLEM["starter_code"]}
    policy.sampling.clear()  # the load's probe
    out = await client.completions.create(model="restrl", prompt=PROBLEM["statement"], max_tokens=10**6, n=2, temperature=0.2,
                                          top_p=0.5, extra_body={"search": search})
    info = out.model_extra["search"]
    assert info["budget_capped"] == ["max_tokens"]
    assert {(c["max_tokens"], c["temperature"], c["top_p"]) for c in policy.sampling} == {(services.settings.max_new_tokens, 0.2, 0.5)}
    assert [c.text for c in out.choices] == [PROGRAM]  # one distinct candidate: the generated code alone
    (program,) = info["programs"]  # the program the sandbox runs: the starter code, then the code
    assert program.startswith(PROBLEM["starter_code"]) and program.endswith(PROGRAM) and program != PROGRAM
    policy.sampling.clear()
    await client.completions.create(model="restrl", prompt=PROBLEM["statement"], extra_body={"search": search})
    assert {(c["max_tokens"], c["temperature"], c["top_p"]) for c in policy.sampling} == {(512, 0.7, 1.0)}  # the search's defaults

    stream = await client.chat.completions.create(model="restrl", messages=[{"role": "user", "content": "Add."}], stream=True,
                                                  extra_body={"search": {"strategy": "greedy", "budget": {"samples": 1}}})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == PROGRAM
    assert chunks[-1].model_extra["search"]["programs"] == [PROGRAM]  # no starter code: the program is the code

    with pytest.raises(openai.BadRequestError, match="stop"):
        await client.completions.create(model="restrl", prompt="p", stop=["\n"], extra_body={"search": search})
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        await client.completions.create(model="restrl", prompt="p", max_tokens=5000)


async def test_restrl_solve_prints_the_generated_code(api: tuple[Services, httpx.AsyncClient], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`restrl solve` prints what a user pastes - the generated code, not the starter code around it."""
    import restrl

    _, http = api
    problem = tmp_path / "problem.json"
    problem.write_text(json.dumps(PROBLEM))
    args = ["solve", str(problem), "--url", str(http.base_url).rstrip("/"), "--strategy", "greedy", "--samples", "1", "--quiet"]
    assert await asyncio.to_thread(restrl.main, args) == 0
    assert capsys.readouterr().out == PROGRAM + "\n"
    assert await asyncio.to_thread(restrl.main, [*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["code"] == PROGRAM and result["program"].startswith(PROBLEM["starter_code"])
