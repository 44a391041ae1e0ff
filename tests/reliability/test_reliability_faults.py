"""Faults against the real server: corrupt and partial checkpoints during a hot swap (rolled back,
the old pair keeps serving, the error names the file), a client disconnecting mid-search (the
search is cancelled, its engine requests aborted, the metric counts it), and the value model failing
mid-search (injected by a wrapper defined here, never in the product: that request fails with a
clean 500, the others and the next ones succeed). The engine's death: test_reliability_z_engine_death.py."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.load import PROBLEMS, ServeProcess, gauge
from tasks import Problem

GREEDY = {"problem": PROBLEMS[0], "strategy": "greedy", "budget": {"samples": 1, "deadline_s": 30}, "max_tokens": 16}


def _counter(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(selector)}\}} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_corrupt_and_partial_checkpoints_roll_back_while_requests_run(
        served: ServeProcess, tmp_path: Path, default_model_dir: Any) -> None:
    from tests.server.test_real_engine import make_adapter

    good = make_adapter(Path(default_model_dir), tmp_path / "adapter-good", seed=1)
    weights = "adapter_model.safetensors"
    corrupt = Path(shutil.copytree(good, tmp_path / "adapter-corrupt"))
    data = (corrupt / weights).read_bytes()
    (corrupt / weights).write_bytes(data[:-64] + bytes(b ^ 0xFF for b in data[-64:]))  # flipped bytes
    partial = Path(shutil.copytree(good, tmp_path / "adapter-partial"))
    (partial / weights).write_bytes(data[: len(data) // 2])  # a copy cut short
    missing = Path(shutil.copytree(good, tmp_path / "adapter-missing"))
    (missing / weights).unlink()
    no_manifest = Path(shutil.copytree(good, tmp_path / "adapter-no-manifest"))
    (no_manifest / "restrl.json").write_text('{"kind": "policy", "format": "lora"')  # truncated JSON
    bad = {corrupt: corrupt / weights, partial: partial / weights, missing: missing / weights,
           no_manifest: no_manifest / "restrl.json"}

    async with httpx.AsyncClient(base_url=served.url, timeout=300, headers=served.admin_headers) as admin, \
            httpx.AsyncClient(base_url=served.url, timeout=300, headers=served.headers) as client:
        before = (await admin.get("/admin/models")).json()["active"]
        in_flight = [asyncio.create_task(client.post("/v1/solve", json=GREEDY)) for _ in range(2)]
        for folder, culprit in bad.items():
            r = await admin.post("/admin/models", json={"policy": str(folder)})
            assert r.status_code == 400 and r.json()["error"]["type"] == "swap_failed", r.text
            assert str(culprit) in r.json()["error"]["message"], (culprit, r.text)
            assert (await admin.get("/admin/models")).json()["active"]["pair_id"] == before["pair_id"]
        for response in await asyncio.gather(*in_flight):  # admitted before the swaps: served by the old pair
            assert response.status_code == 200 and response.json()["policy_version"] == before["policy_version"]
        r = await client.post("/v1/solve", json=GREEDY)
        assert r.status_code == 200 and r.json()["policy_version"] == before["policy_version"]

        r = await admin.post("/admin/models", json={"policy": str(good)})  # a good swap still works
        assert r.status_code == 200 and "adapter-good@" in r.json()["active"]["policy_version"], r.text
        r = await admin.post("/admin/models/rollback")
        assert r.status_code == 200 and r.json()["active"]["policy_version"] == before["policy_version"], r.text
        status = (await admin.get("/admin/models")).json()
        metrics = (await client.get("/metrics")).text
    assert [(e["kind"], e["result"]) for e in status["history"]][-6:] == [
        ("swap", "failed")] * 4 + [("swap", "ok"), ("rollback", "ok")]
    assert _counter(metrics, "restrl:swap_events_total", kind="swap", result="failed") >= 4
    assert status["draining"] == []


async def test_client_disconnect_cancels_search_and_aborts_engine_requests(served: ServeProcess) -> None:
    # the server's largest search: seconds of engine work even on an idle machine
    body = {"problem": PROBLEMS[1], "strategy": "vm_mcts", "budget": {"samples": 8, "deadline_s": 30}, "k": 2,
            "max_tokens": 64, "temperature": 1.0}
    async with httpx.AsyncClient(base_url=served.url, timeout=60, headers=served.headers) as observer:
        text = (await observer.get("/metrics")).text
        before = {r: _counter(text, "restrl:searches_cancelled_total", reason=r) for r in ("disconnect", "cancelled")}
        gone_before = _counter(text, "restrl:requests_total", route="/v1/solve", status="499", strategy="vm_mcts")
        for stream in (False, True):
            async with httpx.AsyncClient(base_url=served.url, timeout=120, headers=served.headers) as client:
                task = asyncio.create_task(client.post("/v1/solve", json={**body, "stream": stream}))
                for _ in range(600):
                    if gauge((await observer.get("/metrics")).text, "restrl:active_searches") == 1:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # the search is in its engine requests
                assert not task.done()
                task.cancel()  # closes the connection
                await asyncio.gather(task, return_exceptions=True)
            for _ in range(200):
                text = (await observer.get("/metrics")).text
                if gauge(text, "restrl:active_searches") == 0:
                    break
                await asyncio.sleep(0.1)
            assert gauge(text, "restrl:active_searches") == 0
        after = {r: _counter(text, "restrl:searches_cancelled_total", reason=r) for r in ("disconnect", "cancelled")}
        # plain and streamed alike: reason `disconnect` (the stream's too, whichever side noticed first; it
        # was counted as `cancelled` before issue 24) and status 499 (the stream's was counted as a 200)
        assert after == {"disconnect": before["disconnect"] + 2, "cancelled": before["cancelled"]}, (before, after)
        gone = _counter(text, "restrl:requests_total", route="/v1/solve", status="499", strategy="vm_mcts")
        assert gone == gone_before + 2
        for _ in range(100):  # vLLM finishes the aborts asynchronously
            ready = (await observer.get("/ready")).json()
            if ready["engine"]["unfinished_requests"] == 0:
                break
            await asyncio.sleep(0.1)
        assert ready["engine"]["unfinished_requests"] == 0, ready
    log = served.log()
    assert log.count("cancelled (disconnect)") >= 2
    assert "Exception in ASGI application" not in log  # a disconnect is not a server error (it logged one)


class FlakyValue:
    """Test-side fault injection: the real value model, except that chosen calls raise."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.version = inner.version
        self.policy_base = inner.policy_base
        self.calls = 0
        self.fail_on: set[int] = set()
        self.failed = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls in self.fail_on:
            self.failed += 1
            raise RuntimeError("injected fault: value model forward failed")

    async def score(self, problem: Problem, states: Sequence[str]) -> list[float]:
        self._maybe_fail()
        return await self.inner.score(problem, states)

    async def score_pairs(self, pairs: Sequence[tuple[Problem, str]]) -> list[float]:
        self._maybe_fail()
        return await self.inner.score_pairs(pairs)

    async def close(self) -> None:  # the session fixture owns the real model
        pass


@pytest.mark.vllm
async def test_value_model_failing_mid_search_fails_that_request_cleanly(vllm_policy: Any, value_model: Any) -> None:
    from search import run_search
    from server import Settings, build_app
    from server.loading import EngineLoader
    from server.services import assemble_services
    from tests.server.conftest import running

    settings = Settings(max_new_tokens=64, policy=vllm_policy.config, value={"batch_wait_ms": 2}, ready_cache_s=0)
    services = assemble_services(settings, loader=EngineLoader(settings),
                                 search_fn=run_search)
    flaky = FlakyValue(value_model)
    await services.registry.install(vllm_policy.with_adapter(None, version=vllm_policy.version), flaky)
    mcts = {"problem": PROBLEMS[2], "strategy": "vm_mcts", "budget": {"samples": 4, "deadline_s": 120}, "k": 2,
            "max_tokens": 24, "seed": 0}
    async with running(build_app(settings, services=services, load_models=False)) as url, \
            httpx.AsyncClient(base_url=url, timeout=300) as client:
        flaky.fail_on = {flaky.calls + 2}  # the search's second value call: after it has scored nodes
        failing = asyncio.create_task(client.post("/v1/solve", json=mcts))
        other = asyncio.create_task(client.post("/v1/solve", json=GREEDY))  # greedy makes no value call
        failed, ok = await failing, await other
        assert flaky.failed == 1
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "internal_error", failed.text
        assert ok.status_code == 200 and ok.json()["program"], ok.text
        again = await client.post("/v1/solve", json=mcts)  # the next search uses the same value model
        assert again.status_code == 200 and again.json()["usage"]["value_calls"] >= 1, again.text
        streamed = await client.post("/v1/solve", json={**mcts, "stream": True})
        assert streamed.status_code == 200 and "event: result" in streamed.text
        flaky.fail_on = {flaky.calls + 2}
        streamed = await client.post("/v1/solve", json={**mcts, "stream": True})
        assert flaky.failed == 2
        assert "event: error" in streamed.text and "event: result" not in streamed.text
        text = (await client.get("/metrics")).text
        assert gauge(text, "restrl:active_searches") == 0
        assert (await client.get("/ready")).status_code == 200
    await services.registry.close()  # the view it holds (the session owns the engine)


async def test_stream_disconnect_leaves_no_pending_task() -> None:
    """Found by the load run ("Task was destroyed but it is pending!" after streams were abandoned):
    the progress getter of a closed stream stayed pending. Doubles: the policy blocks at a gate."""
    from tests.server.test_api import PROBLEM, serve

    services, server = await serve()
    policy: Any = services.registry.active.policy  # type: ignore[union-attr]
    policy.gate = asyncio.Event()
    try:
        async with server as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                task = asyncio.create_task(client.post("/v1/solve", json={"problem": PROBLEM, "stream": True}))
                while services.admission.active == 0:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # the stream waits in drain_progress
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            for _ in range(200):
                if services.admission.active == 0:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            pending = [t for t in asyncio.all_tasks() if "Queue.get" in repr(t.get_coro())]
            assert services.admission.active == 0 and pending == [], pending
    finally:
        policy.gate.set()
