"""The server on the real vLLM CPU engine and SmolLM2 model, through uvicorn on loopback: the
official `openai` client, /v1/solve with every strategy, SSE, readiness, metrics, and a hot swap
between two LoRA adapters (made here with PEFT, saved with a manifest) while 8 requests run."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from search import run_search
from server import Settings, build_app
from server.loading import EngineLoader
from server.services import Services, assemble_services
from tests.server.conftest import running
from tests.server.test_api import PROBLEM, sse_events

pytestmark = pytest.mark.vllm

ADMIN = "admin-secret"
SMALL = {"max_tokens": 64, "k": 2}


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A random rank-8 LoRA adapter on the default model, saved with its restrl.json manifest."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from models.checkpoints import write_manifest

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out)
    write_manifest(out, kind="policy", format="lora", base=str(base_dir), job="tests/server")
    return out


@pytest.fixture(scope="module")
async def real(vllm_policy: Any, value_model: Any) -> AsyncIterator[tuple[Services, str]]:
    settings = Settings(admin_token=ADMIN, max_concurrent_searches=8, max_queued=16, max_new_tokens=256,
                        ready_cache_s=0, ready_timeout_s=600, policy=vllm_policy.config, value={"batch_wait_ms": 2})
    from sandbox.pool import Sandbox

    with Sandbox(workers=2) as sandbox:  # as `restrl serve` has one: rerank_with_tests works
        services = assemble_services(settings, loader=EngineLoader(settings),
                                     search_fn=run_search, sandbox=sandbox)
        # a view on the session's engine: the registry may close it on a swap without stopping the engine
        view = vllm_policy.with_adapter(None, version=vllm_policy.version)
        await services.registry.install(view, value_model)
        try:
            async with running(build_app(settings, services=services, load_models=False)) as url:
                yield services, url
        finally:
            await services.registry.close()  # the views it holds (the session owns the engine)


async def test_openai_client_completions_chat_and_streams(real: tuple[Services, str]) -> None:
    services, url = real
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
    models = await client.models.list()
    version = services.registry.active.policy.version  # type: ignore[union-attr]
    assert [m.id for m in models.data] == [version]

    completion = await client.completions.create(model=version, prompt="def fibonacci(n):", max_tokens=16,
                                                 temperature=0.7, n=2, seed=3)
    assert len(completion.choices) == 2 and all(c.text for c in completion.choices)
    assert completion.usage.completion_tokens <= 32 and completion.usage.prompt_tokens > 0
    assert {c.finish_reason for c in completion.choices} <= {"stop", "length"}

    stopped = await client.completions.create(model=version, prompt="1, 2, 3, 4,", max_tokens=32, temperature=0,
                                              stop=["7"])
    assert "7" not in stopped.choices[0].text

    chat = await client.chat.completions.create(
        model=version, messages=[{"role": "user", "content": "Write a Python function that reverses a string."}],
        max_tokens=48, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    stream = await client.chat.completions.create(
        model=version, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, temperature=0,
        stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    async for chunk in stream:
        pieces.extend(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    assert "".join(pieces) == (await client.chat.completions.create(
        model=version, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, temperature=0,
    )).choices[0].message.content
    assert usage is not None and usage.completion_tokens > 0

    searched = await client.completions.create(
        model=version, prompt=PROBLEM["statement"], max_tokens=64,
        extra_body={"search": {"strategy": "best_of_n", "budget": {"samples": 2}, "starter_code": PROBLEM["starter_code"],
                               **SMALL}})
    info = searched.model_extra["search"]
    # the choice is the generated code (what a user pastes); the program the sandbox ran adds the starter code
    assert searched.choices[0].text and searched.choices[0].text in info["programs"][0]
    assert info["programs"][0].startswith(PROBLEM["starter_code"])
    assert info["strategy"] == "best_of_n" and info["usage"]["samples"] == 2 and 0 <= info["value"] <= 1
    assert searched.usage.completion_tokens == info["usage"]["policy_tokens"]

    chunks = []
    async for chunk in await client.chat.completions.create(
            model=version, messages=[{"role": "user", "content": PROBLEM["statement"]}], stream=True,
            extra_body={"search": {"strategy": "greedy", "budget": {"samples": 1}, **SMALL}}):
        chunks.append(chunk)
    text = "".join(c.delta.content or "" for ch in chunks for c in ch.choices)
    final = chunks[-1].model_extra["search"]
    assert text and final["strategy"] == "greedy" and final["usage"]["samples"] == 1


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


async def test_the_readme_examples_hold_on_the_real_server(real: tuple[Services, str]) -> None:
    """The README's first two examples, as written there, answer what the README says: a program
    that passes the request's public tests (the search with rerank_with_tests on the real model)."""
    from sandbox.pool import Sandbox
    from tasks import TestCase

    _, url = real
    curl = next(b for b in readme_blocks("bash") if "/v1/solve" in b)
    body = json.loads(re.search(r"-d '(.*)'", curl, flags=re.S).group(1))  # type: ignore[union-attr]
    async with httpx.AsyncClient(timeout=900) as client:
        r = await client.post(f"{url}/v1/solve", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["reranked"] and out["candidates"][0]["pass_fraction"] == 1.0 and out["program"] == out["candidates"][0]["program"]

    snippet = next(b for b in readme_blocks("python") if "completions.create" in b)
    namespace: dict[str, Any] = {}
    await asyncio.to_thread(exec, snippet.replace("http://127.0.0.1:8000/v1", f"{url}/v1"), namespace)
    answer = namespace["r"]
    search = answer.model_extra["search"]
    listed = re.search(r'"public_tests": (\[.*?\])\}', snippet)
    assert listed is not None
    tests = [TestCase.model_validate(t) for t in json.loads(listed.group(1))]
    # the choice is the generated code, what a user pastes; what the sandbox ranked it by is its program
    (program,) = search["programs"][:1]
    assert answer.choices[0].text and answer.choices[0].text in program
    with Sandbox(workers=1) as box:
        (verdict,) = await box.run_many([(program, tests, "largest")])
    assert verdict.status == "passed", (answer.choices[0].text, search)


@pytest.mark.parametrize("strategy", ["greedy", "best_of_n", "prm_best_of_n", "beam", "orm_mcts", "vm_mcts"])
async def test_solve_every_strategy_on_the_real_engine(real: tuple[Services, str], strategy: str) -> None:
    _, url = real
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        r = await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": strategy, "budget": {"samples": 3},
                                                 "seed": 0, **SMALL})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["program"] and body["code"] and 0 <= body["value"] <= 1
    assert 1 <= body["usage"]["samples"] <= 3 and body["usage"]["policy_tokens"] > 0
    assert body["usage"]["value_calls"] >= 1 and body["stop_reason"]
    assert body["policy_version"].startswith("smollm2-135m-instruct@")


async def test_solve_stream_on_the_real_engine(real: tuple[Services, str]) -> None:
    _, url = real
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        r = await client.post("/v1/solve", json={"problem": PROBLEM, "strategy": "vm_mcts", "budget": {"samples": 4},
                                                 "stream": True, **SMALL})
    events = sse_events(r.text)
    assert [n for n, _ in events][-1] == "result"
    progress = [d for n, d in events if n == "progress"]
    assert progress and progress[-1]["usage"]["samples"] <= 4 and progress[-1]["best_code"]
    assert events[-1][1]["usage"]["samples"] >= progress[-1]["usage"]["samples"]


async def test_ready_and_metrics_on_the_real_engine(real: tuple[Services, str]) -> None:
    services, url = real
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        r = await client.get("/ready")
        assert r.status_code == 200 and r.json()["probe"]["expansion_tokens"] >= 1
        text = (await client.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    generated = next(s.value for s in families["restrl:engine_generated_tokens"].samples)
    prompt = next(s.value for s in families["restrl:engine_prompt_tokens"].samples)
    assert generated > 0 and prompt > 0 and "restrl:engine_cached_prompt_tokens" in families
    # on the CPU build value batches pause the engine (RESTRL_VALUE_CPU_SHARING=auto): the probe's batch did
    paused = next(s.value for s in families["restrl:engine_paused_seconds"].samples if s.name.endswith("_total"))
    assert paused > 0
    assert not await services.registry.active.policy.engine.is_paused()  # type: ignore[union-attr]


async def test_hot_swap_lora_adapters_while_8_requests_run(real: tuple[Services, str], tmp_path: Path,
                                                            default_model_dir: Any) -> None:
    services, url = real
    base_version = services.registry.active.policy.version  # type: ignore[union-attr]
    a = make_adapter(Path(default_model_dir), tmp_path / "adapter-a", seed=1)
    b = make_adapter(Path(default_model_dir), tmp_path / "adapter-b", seed=2)
    corrupt = tmp_path / "adapter-corrupt"
    shutil.copytree(b, corrupt)
    weights = corrupt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    body = {"problem": PROBLEM, "strategy": "greedy", "budget": {"samples": 1}, "max_tokens": 48}
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        in_flight = [asyncio.create_task(client.post("/v1/solve", json=body)) for _ in range(8)]
        while services.admission.active < 8 and not any(t.done() for t in in_flight):
            await asyncio.sleep(0.005)
        assert services.admission.active == 8  # all 8 hold the base pair while the swap starts
        r = await client.post("/admin/models", json={"policy": str(a)}, headers=auth)
        assert r.status_code == 200, r.text
        version_a = r.json()["active"]["policy_version"]
        assert "adapter-a@" in version_a
        results = await asyncio.gather(*in_flight)
        assert [x.status_code for x in results] == [200] * 8, [x.text for x in results]
        assert {x.json()["policy_version"] for x in results} == {base_version}  # the pair they started with
        r = await client.post("/v1/solve", json=body)
        assert r.status_code == 200 and r.json()["policy_version"] == version_a

        r = await client.post("/admin/models", json={"policy": str(b)}, headers=auth)
        assert r.status_code == 200, r.text
        version_b = r.json()["active"]["policy_version"]
        assert "adapter-b@" in version_b

        r = await client.post("/admin/models", json={"policy": str(corrupt)}, headers=auth)
        assert r.status_code == 400 and str(weights) in r.json()["error"]["message"]
        r = await client.post("/v1/solve", json=body)
        assert r.status_code == 200 and r.json()["policy_version"] == version_b  # B kept serving

        r = await client.post("/admin/models/rollback", headers=auth)
        assert r.status_code == 200 and r.json()["active"]["policy_version"] == version_a
        r = await client.post("/admin/models/rollback", headers=auth)
        assert r.status_code == 200 and r.json()["active"]["policy_version"] == base_version
        status = (await client.get("/admin/models", headers=auth)).json()
    assert [(e["kind"], e["result"]) for e in status["history"]][-5:] == [
        ("swap", "ok"), ("swap", "ok"), ("swap", "failed"), ("rollback", "ok"), ("rollback", "ok")]
    assert status["draining"] == []  # every retired pair drained and closed
    assert json.dumps(status).count(ADMIN) == 0
