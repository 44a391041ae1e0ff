"""Replay a recorded search: `ReplayPolicy` answers with the recorded samples and `ReplayValue`
with the recorded scores, so `run_search(problem, ReplayPolicy(t), ReplayValue(t), config)` with
the trace's problem and config rebuilds the same tree (same nodes, values, visits and answer).

A request is matched to a recorded expansion by the state it continues (the prompt ends with
the open code block holding that state; states never contain a fence, so the match is exact)
and its ``n``; repeated requests for one state are answered in recorded order. Anything the
trace cannot answer raises `ReplayMismatch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models.base import ModelError, Sample
from models.prompting import FENCE_OPEN, prompt_code
from search.types import SearchConfig
from tasks import Problem


class ReplayMismatch(ModelError):
    """The replayed search asked for something the trace did not record."""


class _PlainTokenizer:
    """Enough of a tokenizer for `models.prompting.render_prompt` when replaying without a model."""

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = True) -> str:
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"


class ReplayPolicy:
    def __init__(self, trace: dict[str, Any], *, tokenizer: Any = None) -> None:
        self.version = str(trace["policy_version"])
        self.prompt_mode = trace["prompt_mode"]
        self.tokenizer = tokenizer if tokenizer is not None else _PlainTokenizer()
        states = {n["id"]: n["state"] for n in trace["nodes"]}
        self._pending: list[tuple[str, int, list[Sample]] | None] = [
            (states[e["node"]], e["n"], [Sample(**s) for s in e["samples"]]) for e in trace["expansions"]
        ]
        self.calls = 0

    async def sample(
        self,
        prompt: str,
        *,
        n: int = 1,
        max_tokens: int = 512,
        stop: Sequence[str] = (),
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Sample]:
        for i, rec in enumerate(self._pending):
            if rec is not None and rec[1] == n and prompt.endswith(FENCE_OPEN + prompt_code(rec[0])):
                self._pending[i] = None
                self.calls += 1
                return list(rec[2])
        raise ReplayMismatch(f"no recorded expansion left for this state with n={n}: {prompt[-120:]!r}")

    async def close(self) -> None:
        return None


class ReplayValue:
    def __init__(self, trace: dict[str, Any]) -> None:
        self.version = str(trace["value_version"])
        self._values = {s: float(v) for s, v in trace["values"]}

    async def score(self, problem: Problem, states: Sequence[str]) -> list[float]:
        try:
            return [self._values[s] for s in states]
        except KeyError as exc:
            raise ReplayMismatch(f"state not scored in the trace: {str(exc)[:120]}") from None

    async def close(self) -> None:
        return None


def replay_inputs(trace: dict[str, Any]) -> tuple[Problem, SearchConfig]:
    """The problem and config a trace was recorded with."""
    problem = Problem.model_validate(trace["problem"])
    config = SearchConfig.model_validate(trace["config"])
    return problem, config
