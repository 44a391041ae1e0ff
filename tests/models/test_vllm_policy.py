"""The sampling contract of `VLLMPolicy` on the real vLLM CPU engine with the real SmolLM2.

The engine is the session fixture `vllm_policy` (started once). Prompts are rendered by
`models.prompting`, exactly as the search does.
"""

from __future__ import annotations

import asyncio

import pytest

from models import EngineConfig, EngineDeadError, ModelError, Policy, load_policy
from models.prompting import STOP, render_prompt
from tasks import Problem

pytestmark = pytest.mark.vllm

ADD = Problem(id="add", prompt="Write a function add(a, b) that returns a + b.", starter_code="def add(a, b):\n", entry_point="add")


def prompt_for(policy, problem: Problem = ADD, state: str = "") -> str:
    return render_prompt(policy.tokenizer, problem, state, policy.prompt_mode)


async def test_identity_and_protocol(vllm_policy):
    assert isinstance(vllm_policy, Policy)
    assert vllm_policy.version.startswith("smollm2-135m-instruct@")
    assert vllm_policy.prompt_mode == "rewrite"  # the measured default for SmolLM2
    assert (await vllm_policy.ping())["engine"] == "vllm"


async def test_n_and_length_finish(vllm_policy):
    samples = await vllm_policy.sample(prompt_for(vllm_policy), n=3, max_tokens=5, temperature=1.0)
    assert len(samples) == 3
    for s in samples:
        assert s.finish_reason == "length" and s.tokens == 5 and s.prompt_tokens > 20


async def test_greedy_stops_at_fence_and_strips_it(vllm_policy):
    samples = await vllm_policy.sample(prompt_for(vllm_policy), n=2, max_tokens=128, stop=STOP, temperature=0)
    assert len(samples) == 2 and samples[0] == samples[1]
    s = samples[0]
    assert s.finish_reason == "stop" and "```" not in s.text
    assert "def add" in s.text  # SmolLM2 writes this one correctly


async def test_stop_string_ends_early(vllm_policy):
    [s] = await vllm_policy.sample(prompt_for(vllm_policy), max_tokens=64, stop=["\n"], temperature=0)
    assert s.finish_reason == "stop" and "\n" not in s.text and s.text


async def test_per_request_seed_reproducible(vllm_policy):
    prompt = prompt_for(vllm_policy)
    a = await vllm_policy.sample(prompt, n=3, max_tokens=24, temperature=1.0, seed=11)
    b = await vllm_policy.sample(prompt, n=3, max_tokens=24, temperature=1.0, seed=11)
    c = await vllm_policy.sample(prompt, n=3, max_tokens=24, temperature=1.0, seed=12)
    assert [s.text for s in a] == [s.text for s in b]
    assert [s.text for s in a] != [s.text for s in c]
    assert len({s.text for s in a}) > 1  # the n children get distinct seeds


async def test_seeded_request_with_long_prompt_does_not_kill_engine(vllm_policy):
    # A per-request seed used to crash the CPU engine when the prompt was prefilled in chunks
    # (ENVIRONMENT.md); chunked prefill is off, so a prompt longer than the default chunk works.
    long_state = "".join(f"x{i} = {i}\n" for i in range(170))
    prompt = prompt_for(vllm_policy, state=long_state)
    samples = await vllm_policy.sample(prompt, n=2, max_tokens=8, temperature=0.8, seed=5)
    assert samples[0].prompt_tokens > 1500, samples[0].prompt_tokens and len(samples) == 2
    assert (await vllm_policy.ping())["engine"] == "vllm"


async def test_repeated_prefix_reports_cached_tokens(vllm_policy):
    await vllm_policy.reset_prefix_cache()
    state = "".join(f"    # step {i}: keep going\n" for i in range(40))
    prompt = prompt_for(vllm_policy, state="def add(a, b):\n" + state)
    [first] = await vllm_policy.sample(prompt, max_tokens=4, temperature=0)
    [second] = await vllm_policy.sample(prompt + "    total = a\n", max_tokens=4, temperature=0)
    assert first.prompt_tokens > 256
    assert first.cached_prompt_tokens == 0
    assert second.cached_prompt_tokens >= 128  # whole 128-token blocks of the shared prefix
    assert second.cached_prompt_tokens <= second.prompt_tokens


async def test_cancellation_aborts_engine_request(vllm_policy):
    engine = vllm_policy.engine
    task = asyncio.create_task(vllm_policy.sample(prompt_for(vllm_policy), n=4, max_tokens=1500, temperature=1.0))
    for _ in range(100):  # wait until the engine has it
        await asyncio.sleep(0.05)
        if engine.get_num_unfinished_requests() > 0:
            break
    assert engine.get_num_unfinished_requests() > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if engine.get_num_unfinished_requests() == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.get_num_unfinished_requests() == 0
    [s] = await vllm_policy.sample(prompt_for(vllm_policy), max_tokens=4, temperature=0)  # still serving
    assert s.tokens == 4


async def test_prompt_too_long_is_a_model_error(vllm_policy):
    with pytest.raises(ModelError, match="max_model_len"):
        await vllm_policy.sample("word " * 5000, max_tokens=4)


async def test_concurrent_requests_batch(vllm_policy):
    prompt = prompt_for(vllm_policy)
    results = await asyncio.gather(*[vllm_policy.sample(prompt, n=2, max_tokens=8, temperature=0.7, seed=i) for i in range(6)])
    assert [len(r) for r in results] == [2] * 6


def _engine_cpu_s() -> float:
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "EngineCore" in child.name():
                total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


async def test_paused_engine_holds_requests_spends_no_cpu_and_resumes_them(vllm_policy):
    """`paused()`: running and new requests wait and finish afterwards; the engine process is idle
    meanwhile."""
    engine, prompt = vllm_policy.engine, prompt_for(vllm_policy)
    running = asyncio.create_task(vllm_policy.sample(prompt, n=2, max_tokens=48, temperature=0.8, seed=11))
    for _ in range(100):  # until the engine works on it
        await asyncio.sleep(0.02)
        if engine.get_num_unfinished_requests() > 0:
            break
    async with vllm_policy.paused():
        assert await engine.is_paused()
        new = asyncio.create_task(vllm_policy.sample(prompt, max_tokens=4, temperature=0))
        cpu0 = _engine_cpu_s()
        await asyncio.sleep(1.0)
        assert not running.done() and not new.done()
        assert _engine_cpu_s() - cpu0 < 0.3  # a running engine would spend ~1 CPU-s here
    assert not await engine.is_paused()
    assert [s.finish_reason in ("stop", "length") and s.tokens > 0 for s in await running] == [True, True]
    assert (await new)[0].tokens == 4


async def test_overlapping_pauses_resume_when_the_last_ends(vllm_policy):
    engine = vllm_policy.engine
    first, second = vllm_policy.paused(), vllm_policy.paused()
    await first.__aenter__()
    await second.__aenter__()
    await first.__aexit__(None, None, None)
    assert await engine.is_paused()
    await second.__aexit__(None, None, None)
    assert not await engine.is_paused()
    with pytest.raises(RuntimeError, match="inside"):  # an error inside still resumes
        async with vllm_policy.paused():
            raise RuntimeError("inside")
    assert not await engine.is_paused()


async def test_pause_cancelled_while_it_is_taken_leaves_the_engine_running(vllm_policy):
    engine = vllm_policy.engine

    async def hold_forever() -> None:
        async with vllm_policy.paused():
            await asyncio.sleep(3600)

    for delay in (0.0, 0.5):  # cancelled during the pause request, and while held
        task = asyncio.create_task(hold_forever())
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):
            if vllm_policy._shared.pausers == 0 and not await engine.is_paused():
                break
            await asyncio.sleep(0.05)
        assert vllm_policy._shared.pausers == 0 and not await engine.is_paused()
    [s] = await vllm_policy.sample(prompt_for(vllm_policy), max_tokens=4, temperature=0)
    assert s.tokens == 4


async def test_a_pause_that_times_out_is_undone(vllm_policy, monkeypatch):
    from models import vllm_engine

    engine = vllm_policy.engine
    monkeypatch.setattr(vllm_engine, "PAUSE_TIMEOUT_S", 1e-6)
    with pytest.raises(ModelError, match="did not pause"):
        async with vllm_policy.paused():
            pytest.fail("the body must not run without the pause")
    monkeypatch.undo()
    for _ in range(50):
        if not await engine.is_paused():
            break
        await asyncio.sleep(0.05)
    assert vllm_policy._shared.pausers == 0 and not await engine.is_paused()
    [s] = await vllm_policy.sample(prompt_for(vllm_policy), max_tokens=4, temperature=0)
    assert s.tokens == 4


@pytest.mark.slow  # starts a second engine
async def test_closed_engine_fails_with_engine_dead(default_model_dir):
    policy = await load_policy(EngineConfig(engine="vllm", kv_cache_gib=0.25, max_model_len=512, enable_lora=False))
    [s] = await policy.sample("def f():", max_tokens=2, temperature=0)
    assert s.tokens == 2
    view = policy.with_adapter(None, version="same")
    await policy.close()
    assert (await view.sample("def f():", max_tokens=2, temperature=0))[0].tokens == 2  # view keeps it alive
    await view.close()
    with pytest.raises(EngineDeadError):
        await view.ping()


@pytest.mark.slow  # starts two engines
async def test_engine_level_seed_reproduces_unseeded_requests(default_model_dir):
    cfg = EngineConfig(engine="vllm", kv_cache_gib=0.25, max_model_len=512, enable_lora=False, seed=123)
    texts = []
    for _ in range(2):
        policy = await load_policy(cfg)
        try:
            samples = await policy.sample("def fibonacci(n):", n=3, max_tokens=16, temperature=1.0)
            texts.append([s.text for s in samples])
        finally:
            await policy.close()
    assert texts[0] == texts[1] and len(set(texts[0])) > 1


_KILLED_SERVER = """
import asyncio, sys
from models import EngineConfig, load_policy

async def main():
    policy = await load_policy(EngineConfig(engine="vllm", **{config!r}))
    print("ENGINE PIDS", *policy._shared.reaper.pids, flush=True)
    await asyncio.sleep(600)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_engine_processes_die_with_a_killed_parent(tmp_path, default_model_dir):
    """SIGKILL of the process that owns the engine must not leave vLLM's EngineCore behind
    (it would keep the model's memory): the reaper kills it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    from tests.conftest import TEST_ENGINE

    script = tmp_path / "owner.py"
    script.write_text(_KILLED_SERVER.format(config=TEST_ENGINE))
    root = Path(__file__).resolve().parents[2]
    owner = subprocess.Popen([sys.executable, str(script)], cwd=root, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert owner.stdout is not None
        pids: list[int] = []
        for line in owner.stdout:  # vLLM logs to stdout too
            if line.startswith("ENGINE PIDS"):
                pids = [int(p) for p in line.split()[2:]]
                break
        assert pids, "the owner printed no engine pids (did the engine start?)"
        names = " ".join(psutil.Process(p).name() for p in pids if psutil.pid_exists(p))
        assert "EngineCore" in names
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        def alive() -> list[int]:
            out = []
            for pid in pids:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        out.append(pid)
                except psutil.NoSuchProcess:
                    pass
            return out

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and alive():
            time.sleep(0.2)
        assert not alive(), f"engine processes outlived their killed owner: {alive()}"
    finally:
        if owner.poll() is None:
            owner.kill()


async def _settled(engine) -> int:
    """The engine's unfinished requests once in-flight aborts have landed (they are awaited, so at once)."""
    for _ in range(20):
        if engine.get_num_unfinished_requests() == 0:
            break
        await asyncio.sleep(0.05)
    return engine.get_num_unfinished_requests()


@pytest.mark.parametrize("kwargs", [
    {"seed": 2**64}, {"seed": 2**64, "n": 2}, {"seed": 2**64, "temperature": 0}, {"seed": -(2**63) - 1},
    {"stop": [""]}, {"top_p": 0.0}, {"temperature": -1.0}, {"max_tokens": 0},
], ids=["seed-2^64", "seed-2^64-n2", "seed-2^64-greedy", "seed-below-int64", "empty-stop", "top_p-0", "negative-temperature",
        "max_tokens-0"])
async def test_failed_requests_leave_nothing_unfinished_in_the_engine(vllm_policy, kwargs):
    """Issue 24: a seed beyond 64 bits made vLLM fail *after* registering the request, which then
    stayed unfinished forever (`unfinished_requests` 0 -> 4 over four requests). Every failure of
    the adapter, in `sample` and in `stream`, is a `ModelError` and leaves the engine with nothing."""
    engine = vllm_policy.engine
    assert await _settled(engine) == 0
    options = {"max_tokens": 4, "temperature": 0.8, **kwargs}
    with pytest.raises(ModelError):
        await vllm_policy.sample("def f():", **options)
    assert engine.get_num_unfinished_requests() == 0
    with pytest.raises(ModelError):
        async for _ in vllm_policy.stream("def f():", **options):
            pass
    assert engine.get_num_unfinished_requests() == 0
    [s] = await vllm_policy.sample("def f():", max_tokens=2, temperature=0)  # the engine still serves
    assert s.tokens == 2


async def test_stream_yields_the_same_completions_as_sample_token_by_token(vllm_policy):
    prompt = "1, 2, 3, 4, 5, 6,"
    for n, temperature, seed in ((1, 0.0, None), (2, 0.0, None), (3, 1.0, 7)):
        samples = await vllm_policy.sample(prompt, n=n, max_tokens=24, temperature=temperature, seed=seed)
        pieces: dict[int, list] = {}
        async for delta in vllm_policy.stream(prompt, n=n, max_tokens=24, temperature=temperature, seed=seed):
            pieces.setdefault(delta.index, []).append(delta)
        assert sorted(pieces) == list(range(n))
        for i, s in enumerate(samples):
            deltas = pieces[i]
            assert "".join(d.text for d in deltas) == s.text and sum(d.tokens for d in deltas) == s.tokens
            assert [d.finish_reason for d in deltas][-1] == s.finish_reason
            assert all(d.finish_reason is None for d in deltas[:-1])
            assert len(deltas) > 5  # token by token, not one piece at the end
            assert deltas[0].prompt_tokens == s.prompt_tokens


async def test_closing_or_cancelling_a_stream_aborts_its_engine_request(vllm_policy):
    engine = vllm_policy.engine
    stream = vllm_policy.stream("1, 2, 3, 4, 5, 6,", n=3, max_tokens=1500, temperature=1.0)
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 6:
            break
    assert engine.get_num_unfinished_requests() == 3  # the three children are generating
    await stream.aclose()
    assert engine.get_num_unfinished_requests() == 0  # aborted before aclose returned

    async def consume() -> None:
        async for _ in vllm_policy.stream("1, 2, 3, 4, 5, 6,", max_tokens=1500, temperature=0):
            pass

    task = asyncio.create_task(consume())
    while engine.get_num_unfinished_requests() == 0:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _settled(engine) == 0


async def test_sample_tokens_is_the_token_level_sample(vllm_policy):
    """`sample_tokens` (the GRPO rollouts' entry): the same greedy completion as `sample`, as ids; a
    stop token ends it and is kept; greedy copies are identical; bad arguments are model errors."""
    tokenizer = vllm_policy.tokenizer
    prompt = prompt_for(vllm_policy)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    [text] = await vllm_policy.sample(prompt, max_tokens=16, temperature=0)
    got = await vllm_policy.sample_tokens(ids, n=2, max_tokens=16, temperature=0)
    assert len(got) == 2 and got[0] == got[1]
    assert tokenizer.decode(got[0]) == text.text
    stop = got[0][3]
    [cut] = await vllm_policy.sample_tokens(ids, max_tokens=16, temperature=0, stop_token_ids=[stop])
    assert cut == got[0][: got[0].index(stop) + 1]
    sampled = await vllm_policy.sample_tokens(ids, n=3, max_tokens=8, temperature=1.0)
    assert len(sampled) == 3 and all(1 <= len(c) <= 8 for c in sampled)  # an EOS may end one early
    with pytest.raises(ModelError, match="n must be"):
        await vllm_policy.sample_tokens(ids, n=0)
    with pytest.raises(ModelError, match="no room"):
        await vllm_policy.sample_tokens([1] * vllm_policy.config.max_model_len)
