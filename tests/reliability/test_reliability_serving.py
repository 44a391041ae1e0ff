"""Issue 24, finding by finding, against the app on the real vLLM engine and value model (uvicorn on
loopback, API key and admin token set): seeds beyond 64 bits (422, nothing left in the engine),
true token streaming with the official `openai` client (first chunk long before the last,
``stream_options.include_usage``, a disconnect aborts the engine request), metrics labels that say
what happened (``disconnect`` and 499, ``deadline``, 413 by Content-Length counted), statuses and
types as documented, admin checkpoint paths confined, deadlines counted from arrival (queueing
included, at most half of it), and OpenAI fields that would change the answer refused with 400 naming them.

The engine's own count of unfinished requests (`AsyncLLM.get_num_unfinished_requests`) is the
witness that a request was aborted: it is read from the session's engine, in this process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.reliability.conftest import ADMIN, API_KEY, AUTH, inproc_server
from tests.server.test_api import PROBLEM

pytestmark = pytest.mark.vllm

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # SmolLM2 keeps counting greedily: long outputs on demand
HEAVY = {"problem": PROBLEM, "strategy": "vm_mcts", "budget": {"samples": 100}, "k": 4, "max_tokens": 96,
         "temperature": 1.0}  # more than any deadline below allows


def samples(services: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """A metric's samples (``_total`` for counters) by their sorted labels."""
    text = services.metrics.render().decode()
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text) if f.name == name
            for s in f.samples if s.name in (name, f"{name}_total")}


def count(services: Any, name: str, **labels: str) -> float:
    return samples(services, name).get(tuple(sorted(labels.items())), 0.0)


async def settled(engine: Any, timeout_s: float = 10.0) -> int:
    """The engine's unfinished requests, once it has nothing (or ``timeout_s`` passed)."""
    until = time.monotonic() + timeout_s
    while engine.get_num_unfinished_requests() and time.monotonic() < until:
        await asyncio.sleep(0.02)
    return int(engine.get_num_unfinished_requests())


async def until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.02)


async def leave_mid_request(send: Callable[[], Awaitable[Any]], started: Callable[[], bool]) -> None:
    """Start a request, wait until ``started()``, then drop it (closes the connection)."""
    task = asyncio.create_task(send())
    await until(lambda: started() or task.done())
    assert not task.done(), task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------- 1. seeds and leaked engine requests


async def test_seed_outside_64_bits_is_422_and_no_error_path_leaves_an_engine_request(vllm_policy: Any,
                                                                                      value_model: Any) -> None:
    engine = vllm_policy.engine
    async with inproc_server(vllm_policy, value_model, max_new_tokens=1024) as (services, url), \
            httpx.AsyncClient(base_url=url, timeout=300, headers=AUTH) as client:
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        for seed in (2**64, 2**63, -(2**63) - 1, 10**30):
            for route, body, field in (("/v1/completions", {"prompt": "def f():", "max_tokens": 4, "seed": seed}, "seed"),
                                       ("/v1/chat/completions", {**chat, "seed": seed}, "seed"),
                                       ("/v1/completions", {"prompt": "x", "search": {"seed": seed}}, "search.seed"),
                                       ("/v1/solve", {"problem": PROBLEM, "seed": seed}, "seed")):
                r = await client.post(route, json=body)
                assert r.status_code == 422 and r.json()["error"]["field"] == field, (route, seed, r.text)
        for seed in (2**63 - 1, -(2**63), -1, 0):
            r = await client.post("/v1/completions", json={"prompt": "def f():", "max_tokens": 4, "seed": seed,
                                                           "temperature": 0.8})
            assert r.status_code == 200, (seed, r.text)
        assert await settled(engine) == 0

        # every failure we can provoke through HTTP leaves the engine with nothing unfinished
        r = await client.post("/v1/completions", json={"prompt": "word " * 5000, "max_tokens": 4})
        assert r.status_code == 500 and r.json()["error"]["type"] == "model_error"  # prompt over max_model_len
        busy = lambda: engine.get_num_unfinished_requests() > 0  # noqa: E731
        await leave_mid_request(lambda: client.post("/v1/completions", json={
            "prompt": COUNTING, "max_tokens": 1000, "temperature": 0}), busy)
        assert await settled(engine) == 0
        await leave_mid_request(lambda: client.post("/v1/completions", json={
            "prompt": [COUNTING, "def f():"], "n": 3, "max_tokens": 1000, "temperature": 1.0, "stream": True}), busy)
        assert await settled(engine) == 0
        for stream in (False, True):
            await leave_mid_request(lambda stream=stream: client.post("/v1/solve", json={**HEAVY, "stream": stream}), busy)
            assert await settled(engine) == 0
        r = await client.post("/v1/completions", json={"prompt": "def f():", "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200
        await until(lambda: services.admission.active == 0)
        ready = (await client.get("/ready")).json()
        assert ready["engine"]["unfinished_requests"] == 0 and ready["active_searches"] == 0


# ---------------------------------------------------------------- 2. token streaming


async def test_plain_streams_are_token_by_token_and_a_disconnect_aborts_the_engine_request(
        vllm_policy: Any, value_model: Any) -> None:
    engine = vllm_policy.engine
    async with inproc_server(vllm_policy, value_model, max_new_tokens=1024) as (services, url):
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
        plain = await client.completions.create(model="x", prompt=COUNTING, max_tokens=200, temperature=0)

        started = time.monotonic()
        stream = await client.completions.create(model="x", prompt=COUNTING, max_tokens=200, temperature=0,
                                                 stream=True, stream_options={"include_usage": True})
        arrivals, text, usage = [], [], None
        async for chunk in stream:
            arrivals.append(time.monotonic() - started)
            text.extend(c.text for c in chunk.choices)
            usage = chunk.usage or usage
        total = arrivals[-1]
        assert "".join(text) == plain.choices[0].text  # the same completion, in pieces
        assert len(arrivals) > 50  # about one chunk per token
        assert arrivals[0] < 0.25 * total, (arrivals[0], total)  # the first piece long before the end
        assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens == 200
        assert usage.prompt_tokens == plain.usage.prompt_tokens

        # chat: role first, content deltas, the finish reason, a usage chunk; n=2 interleaves two choices
        chunks = [c async for c in await client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "Count from 1 to 20."}], max_tokens=32, temperature=0,
            n=2, stream=True, stream_options={"include_usage": True})]
        by_choice: dict[int, list[Any]] = {}
        for chunk in chunks[:-1]:
            assert chunk.usage is None and len(chunk.choices) == 1
            by_choice.setdefault(chunk.choices[0].index, []).append(chunk.choices[0])
        assert sorted(by_choice) == [0, 1] and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
        for choices in by_choice.values():
            assert choices[0].delta.role == "assistant" and choices[-1].finish_reason in ("stop", "length")
            assert len(choices) > 5
        assert "".join(c.delta.content or "" for c in by_choice[0]) == "".join(c.delta.content or "" for c in by_choice[1])

        # a client that leaves mid-stream: the engine request is aborted at once (it had ~990 tokens to go,
        # several times the whole 200-token stream above), and the request is counted as a 499
        before = count(services, "restrl:requests", route="/v1/completions", strategy="none", status="499")
        stream = await client.completions.create(model="x", prompt=COUNTING, max_tokens=1000, temperature=0, stream=True)
        got = 0
        async for _ in stream:
            got += 1
            if got == 10:
                break
        assert engine.get_num_unfinished_requests() == 1
        closed = time.monotonic()
        await stream.close()
        assert await settled(engine, timeout_s=total) == 0
        assert time.monotonic() - closed < total / 2
        await until(lambda: count(services, "restrl:requests", route="/v1/completions", strategy="none",
                                  status="499") == before + 1)
        await until(lambda: services.admission.active == 0)


# ---------------------------------------------------------------- 3. metrics labels


async def test_metrics_say_what_happened(vllm_policy: Any, value_model: Any) -> None:
    engine = vllm_policy.engine
    async with inproc_server(vllm_policy, value_model, max_body_bytes=2048) as (services, url), \
            httpx.AsyncClient(base_url=url, timeout=300, headers=AUTH) as client:
        # a client leaving mid-search, plain and SSE: reason "disconnect" and status 499, both times
        for stream in (False, True):
            await leave_mid_request(lambda stream=stream: client.post("/v1/solve", json={**HEAVY, "stream": stream}),
                                    lambda: engine.get_num_unfinished_requests() > 0)
            await until(lambda: services.admission.active == 0)
        assert samples(services, "restrl:searches_cancelled") == {(("reason", "disconnect"),): 2.0}
        assert count(services, "restrl:requests", route="/v1/solve", strategy="vm_mcts", status="499") == 2
        assert count(services, "restrl:requests", route="/v1/solve", strategy="vm_mcts", status="200") == 0

        # a search stopped by its deadline
        r = await client.post("/v1/solve", json={**HEAVY, "budget": {"samples": 100, "deadline_s": 2}})
        assert r.status_code == 200 and r.json()["stop_reason"] == "deadline", r.text
        assert count(services, "restrl:searches_cancelled", reason="deadline") == 1
        assert count(services, "restrl:requests", route="/v1/solve", strategy="vm_mcts", status="200") == 1

        # 413 by Content-Length (refused before routing) and while streaming in: both counted on their route
        r = await client.post("/v1/solve", content=b"x" * 4096, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

        async def chunks() -> Any:
            yield b'{"problem": {"statement": "'
            for _ in range(8):
                yield b"y" * 1024
            yield b'"}}'

        r = await client.post("/v1/solve", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = await client.post("/v1/nothing", content=b"x" * 4096)
        assert r.status_code == 413
        assert count(services, "restrl:requests", route="/v1/solve", strategy="none", status="413") == 2
        assert count(services, "restrl:requests", route="unmatched", strategy="none", status="413") == 1


# ---------------------------------------------------------------- 4. statuses and types as documented


async def test_statuses_and_types_are_the_documented_ones(vllm_policy: Any, value_model: Any) -> None:
    from server.errors import ERROR_KINDS

    documented = {(k.status, k.type) for k in ERROR_KINDS}
    async with inproc_server(vllm_policy, value_model, max_new_tokens=64) as (_, url), \
            httpx.AsyncClient(base_url=url, timeout=300, headers=AUTH) as client:
        json_headers = {**AUTH, "content-type": "application/json"}
        cases: list[tuple[str, dict[str, Any], int, str, str | None]] = [
            ("/v1/completions", {"json": {"prompt": "x", "max_tokens": 65}}, 422, "invalid_request", "max_tokens"),
            ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 65}},
             422, "invalid_request", "max_tokens"),
            ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "x"}],
                                               "max_completion_tokens": 65}}, 422, "invalid_request", "max_completion_tokens"),
            ("/v1/completions", {"content": b"[" * 5000 + b"]" * 5000, "headers": json_headers}, 400, "invalid_json", "body"),
            ("/v1/solve", {"content": b'{"problem": {"statement": "\xff\xfe"}}', "headers": json_headers}, 400,
             "invalid_json", "body"),
            ("/v1/solve", {"content": b'{"problem": ', "headers": json_headers}, 400, "invalid_json", "body"),
            ("/v1/solve", {"content": b"[1, 2]", "headers": json_headers}, 422, "invalid_request", "body"),
            ("/v1/solve", {"json": {"problem": PROBLEM, "rerank_with_tests": True}}, 400, "invalid_request",
             "rerank_with_tests"),
            ("/v1/completions", {"json": {"prompt": "word " * 5000, "max_tokens": 4}}, 500, "model_error", None),
        ]
        for route, kwargs, status, type_, field in cases:
            r = await client.post(route, **kwargs)
            error = r.json()["error"]
            assert (r.status_code, error["type"], error.get("field")) == (status, type_, field), (route, r.text)
            assert (r.status_code, error["type"]) in documented
        assert "character" in (await client.post("/v1/solve", content=b'{"problem": ', headers=json_headers)).json()[
            "error"]["message"]  # says where, not a bare offset in `field`
        r = await client.get("/v1/solve")
        assert (r.status_code, r.json()["error"]["type"]) == (405, "method_not_allowed")


# ---------------------------------------------------------------- 5. admin checkpoint paths


async def test_admin_checkpoint_paths_are_confined_and_errors_name_only_the_sent_path(
        vllm_policy: Any, value_model: Any, tmp_path: Path, default_model_dir: Any) -> None:
    from models.checkpoints import sha256_file, write_manifest
    from tests.server.test_real_engine import make_adapter

    root = tmp_path / "checkpoints"
    root.mkdir()
    good = make_adapter(Path(default_model_dir), root / "adapter-good", seed=3)
    secret = tmp_path / "shadow"  # stands for /etc/shadow
    secret.write_bytes(b"root:$6$secret-hash:19000:0:99999:7:::\n")
    linked = root / "adapter-linked"
    linked.mkdir()
    (linked / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    (linked / "adapter_model.safetensors").write_bytes(secret.read_bytes())
    manifest = write_manifest(linked, kind="policy", format="lora", base=str(default_model_dir))  # (it refuses links)
    (linked / "adapter_model.safetensors").unlink()
    (linked / "adapter_model.safetensors").symlink_to(secret)  # then the file becomes a link out, hashes matching
    assert manifest.files["adapter_model.safetensors"] == sha256_file(secret)
    outside = tmp_path / "outside-ckpt"  # a checkpoint folder, but outside the root
    outside.mkdir()
    (outside / "restrl.json").write_text("{}")
    (root / "escape").symlink_to(tmp_path, target_is_directory=True)

    async with inproc_server(vllm_policy, value_model, checkpoint_root=str(root)) as (services, url), \
            httpx.AsyncClient(base_url=url, timeout=300, headers=ADMIN) as admin:
        before = services.registry.active.pair_id  # type: ignore[union-attr]
        refused = {"": 422, "../../": 400, "/usr": 400, "/": 400, "escape/outside-ckpt": 400, str(outside): 400,
                   "missing": 400, "adapter-good/adapter_model.safetensors": 400, str(Path.cwd()): 400}
        for sent, status in refused.items():
            started = time.monotonic()
            r = await admin.post("/admin/models", json={"policy": sent})
            error = r.json()["error"]
            assert r.status_code == status and error["type"] == "invalid_request" and error["field"] == "policy", r.text
            assert time.monotonic() - started < 2.0  # a few stat calls: nothing walked or read (/usr took 4 s)
            if status == 400:
                assert error["message"].startswith(repr(sent)), error
                assert str(root) not in error["message"] and str(tmp_path) not in error["message"].replace(repr(sent), "")
                assert ".venv" not in error["message"] and "site-packages" not in error["message"]

        r = await admin.post("/admin/models", json={"policy": "adapter-linked"})
        error = r.json()["error"]
        assert r.status_code == 400 and error["type"] == "swap_failed", r.text
        assert error["message"].startswith("adapter-linked/adapter_model.safetensors: a symbolic link leading outside")
        assert str(secret) not in error["message"] and str(root) not in error["message"]
        assert services.registry.active.pair_id == before  # type: ignore[union-attr]

        r = await admin.post("/admin/models", json={"policy": "adapter-good"})  # relative to the root
        assert r.status_code == 200 and "adapter-good@" in r.json()["active"]["policy_version"], r.text
        r = await admin.post("/admin/models", json={"policy": str(good)})  # absolute, inside the root
        assert r.status_code == 200, r.text
        r = await admin.post("/admin/models/rollback")
        assert r.status_code == 200
        r = await admin.post("/admin/models/rollback")
        assert r.status_code == 200 and r.json()["active"]["policy_version"] == vllm_policy.version
    async with inproc_server(vllm_policy, value_model) as (_, url), \
            httpx.AsyncClient(base_url=url, timeout=60, headers=ADMIN) as admin:
        r = await admin.post("/admin/models", json={"policy": "adapter-good"})  # no root: absolute paths only
        assert r.status_code == 400 and "not an absolute path" in r.json()["error"]["message"], r.text


# ---------------------------------------------------------------- 6. deadlines count the queue


async def test_deadline_is_wall_time_from_arrival_queueing_included(vllm_policy: Any, value_model: Any) -> None:
    async with inproc_server(vllm_policy, value_model, max_concurrent_searches=1, max_queued=4) as (services, url), \
            httpx.AsyncClient(base_url=url, timeout=300, headers=AUTH) as client:

        async def solve(deadline_s: float) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            r = await client.post("/v1/solve", json={**HEAVY, "budget": {"samples": 100, "deadline_s": deadline_s}})
            return r, time.monotonic() - started

        first = asyncio.create_task(solve(6))  # holds the only slot for its 6 s
        await until(lambda: services.admission.active == 1)
        # a client that leaves while queued gives its place up at once (499), not when a slot frees
        await leave_mid_request(lambda: solve(60), lambda: services.admission.queued == 1)
        await until(lambda: services.admission.queued == 0, timeout_s=2)
        await until(lambda: count(services, "restrl:requests", route="/v1/solve", strategy="vm_mcts", status="499") == 1,
                    timeout_s=2)
        assert not first.done()
        short = asyncio.create_task(solve(2))  # may wait 1 s (half its deadline) for a slot: none frees
        long = asyncio.create_task(solve(16))  # may wait 8 s: starts after `first`, with what is left of its 16 s
        await until(lambda: services.admission.queued == 2)
        (r_short, t_short), (r_first, t_first), (r_long, t_long) = await asyncio.gather(short, first, long)

        assert r_short.status_code == 429 and r_short.json()["error"]["type"] == "overloaded", r_short.text
        assert "nothing ran" in r_short.json()["error"]["message"] and int(r_short.headers["retry-after"]) >= 1
        assert t_short < 1 + 2  # after its half of the deadline (1 s), not when a slot freed
        assert t_short < t_first  # answered when its deadline passed, not when a slot freed
        assert count(services, "restrl:rejected_requests", reason="deadline") == 1

        # a small problem's tree can run out of open states before the clock does ("exhausted", seen on
        # CI after 12 samples); either way a search runs only in what its deadline has left
        assert r_first.status_code == 200 and r_first.json()["stop_reason"] in ("deadline", "exhausted"), r_first.text
        body = r_long.json()
        assert r_long.status_code == 200 and body["stop_reason"] in ("deadline", "exhausted"), r_long.text
        assert 3 < body["queued_s"] <= 8  # it waited for `first`, within its half of the deadline
        # the search got what was left: queue + search within the deadline (was 40-61 s for 20 s deadlines)
        assert body["queued_s"] + body["usage"]["wall_s"] <= 16 + 3, body
        assert t_long <= 16 + 5
        stopped_by_clock = (r_first.json()["stop_reason"] == "deadline") + (body["stop_reason"] == "deadline")
        assert count(services, "restrl:searches_cancelled", reason="deadline") == stopped_by_clock


# ---------------------------------------------------------------- 7. OpenAI fields that change the answer


async def test_openai_fields_that_would_change_the_answer_are_refused(vllm_policy: Any, value_model: Any) -> None:
    async with inproc_server(vllm_policy, value_model) as (_, url), \
            httpx.AsyncClient(base_url=url, timeout=300, headers=AUTH) as http:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        refused = [
            lambda: client.completions.create(model="x", prompt="def f():", max_tokens=4, logprobs=1),
            lambda: client.completions.create(model="x", prompt="def f():", max_tokens=4, echo=True),
            lambda: client.completions.create(model="x", prompt="def f():", max_tokens=4, best_of=3),
            lambda: client.completions.create(model="x", prompt="def f():", max_tokens=4, suffix="\n"),
            lambda: client.chat.completions.create(model="x", messages=messages, max_tokens=4, logprobs=True),
            lambda: client.chat.completions.create(model="x", messages=messages, max_tokens=4, tools=[
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]),
            lambda: client.chat.completions.create(model="x", messages=messages, max_tokens=4,
                                                   response_format={"type": "json_object"}),
            lambda: client.chat.completions.create(model="x", messages=messages, max_tokens=4, extra_body={"top_k": 5}),
        ]
        fields = ["logprobs", "echo", "best_of", "suffix", "logprobs", "tools", "response_format", "top_k"]
        for call, field in zip(refused, fields, strict=True):
            with pytest.raises(openai.BadRequestError) as err:
                await call()
            assert err.value.status_code == 400 and err.value.body["field"] == field, err.value.body  # type: ignore[index]
            assert err.value.body["type"] == "invalid_request"  # type: ignore[index]
        # neutral values, and fields that do not change the answer, are fine
        r = await client.completions.create(model="x", prompt="def f():", max_tokens=4, echo=False, best_of=1,
                                            logprobs=None, user="u1", presence_penalty=0, frequency_penalty=0.0)
        assert r.choices[0].text
        r = await client.chat.completions.create(model="x", messages=messages, max_tokens=4, logprobs=False, tools=[],
                                                 response_format={"type": "text"}, tool_choice="none", metadata={"a": "b"})
        assert r.choices[0].message.content is not None
        r = await http.post("/v1/completions", json={"prompt": "def f():", "max_tokens": 4, "n": 2, "best_of": 2})
        assert r.status_code == 200 and len(r.json()["choices"]) == 2
        r = await http.post("/v1/completions", json={"prompt": "def f():", "max_tokens": 4, "logprobs": 0})
        assert r.status_code == 400 and r.json()["error"]["field"] == "logprobs"  # 0 asks for the token logprobs
        r = await http.post("/v1/completions", json={"prompt": "x", "search": {"strategy": "greedy"}, "echo": True})
        assert r.status_code == 400 and r.json()["error"]["field"] == "echo"


def test_every_refused_field_accepts_null_and_its_default() -> None:
    from server.protocol import UNSUPPORTED_FIELDS, CompletionRequest

    request = CompletionRequest(prompt="x", n=2)
    assert all(check(None, request) for check in UNSUPPORTED_FIELDS.values())
    assert UNSUPPORTED_FIELDS["best_of"](2, request) and not UNSUPPORTED_FIELDS["best_of"](3, request)
    assert not UNSUPPORTED_FIELDS["logprobs"](0, request) and UNSUPPORTED_FIELDS["logprobs"](False, request)
