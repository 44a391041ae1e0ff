"""`HFPolicy` on transformers with the real SmolLM2: the same sampling contract as vLLM, and greedy
parity with the vLLM engine."""

from __future__ import annotations

import asyncio

import pytest

from models import Policy
from models.prompting import STOP, render_prompt
from tasks import Problem

ADD = Problem(id="add", prompt="Write a function add(a, b) that returns a + b.", starter_code="def add(a, b):\n", entry_point="add")
PARITY = [
    ADD,
    Problem(id="rev", prompt="Return the reverse of the string s.", starter_code="def reverse(s: str) -> str:\n"),
    Problem(id="evens", prompt="Return the even numbers of a list, in order.", starter_code="def evens(xs):\n"),
]


def prompt_for(policy, problem: Problem = ADD, state: str = "") -> str:
    return render_prompt(policy.tokenizer, problem, state, policy.prompt_mode)


async def test_contract_n_length_and_seed(hf_policy):
    assert isinstance(hf_policy, Policy) and hf_policy.version.startswith("smollm2-135m-instruct@")
    prompt = prompt_for(hf_policy)
    a, b, c = await asyncio.gather(
        hf_policy.sample(prompt, n=3, max_tokens=6, temperature=1.0, seed=7),
        hf_policy.sample(prompt, n=3, max_tokens=6, temperature=1.0, seed=7),
        hf_policy.sample(prompt, n=3, max_tokens=6, temperature=1.0, seed=8),
    )
    assert len(a) == 3 and all(s.finish_reason == "length" and s.tokens == 6 for s in a)
    assert [s.text for s in a] == [s.text for s in b]  # same seed, batched together
    assert [s.text for s in a] != [s.text for s in c]
    again = await hf_policy.sample(prompt, n=3, max_tokens=6, temperature=1.0, seed=7)  # alone
    assert [s.text for s in again] == [s.text for s in a]


async def test_greedy_stop_string(hf_policy):
    samples = await hf_policy.sample(prompt_for(hf_policy), n=2, max_tokens=40, stop=STOP, temperature=0)
    assert samples[0] == samples[1]
    s = samples[0]
    assert s.finish_reason == "stop" and "```" not in s.text and "def add" in s.text
    [line] = await hf_policy.sample(prompt_for(hf_policy), max_tokens=40, stop=["\n"], temperature=0)
    assert line.finish_reason == "stop" and "\n" not in line.text and s.text.startswith(line.text)


async def test_cancellation_stops_rows(hf_policy):
    task = asyncio.create_task(hf_policy.sample(prompt_for(hf_policy), n=2, max_tokens=1000, temperature=1.0))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the worker moves on: a new request is served
    [s] = await asyncio.wait_for(hf_policy.sample(prompt_for(hf_policy), max_tokens=3, temperature=0), timeout=120)
    assert s.tokens == 3


@pytest.mark.vllm
async def test_greedy_parity_with_vllm(hf_policy, vllm_policy):
    # vLLM runs bf16 and HF float32 (their measured defaults), so long greedy outputs may drift
    # apart where two logits nearly tie; the first tokens must agree.
    n_tokens = 12
    for problem in PARITY:
        prompt = prompt_for(hf_policy, problem)
        [h] = await hf_policy.sample(prompt, max_tokens=n_tokens, temperature=0)
        [v] = await vllm_policy.sample(prompt, max_tokens=n_tokens, temperature=0)
        tok = hf_policy.tokenizer
        h_ids = tok(h.text, add_special_tokens=False)["input_ids"][:8]
        v_ids = tok(v.text, add_special_tokens=False)["input_ids"][:8]
        assert h_ids == v_ids, (problem.id, h.text, v.text)
