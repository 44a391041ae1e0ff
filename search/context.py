"""`SearchRun`: the machinery every strategy shares - budgets, policy requests, evaluation,
candidates, usage, traces and progress.

In: a problem, a `Policy`, an `Evaluator`, a `SearchConfig`. Strategies ask it to *reserve* an
expansion of a node (the budget check happens here and only here), *fetch* it (one policy
request with n continuations, then one evaluator call - run as a task, several may be in
flight), and *apply* the results in issue order. Applying in issue order, not completion
order, makes a seeded search reproduce the same tree from the same engine output whatever the
timing of concurrent requests.

Budget accounting (all limits are hard, never exceeded by completed work):

* samples: an expansion asks for ``n = min(k, samples left)``; samples of in-flight requests
  are reserved.
* tokens: a request reserves ``n * max_tokens``; ``n`` shrinks to fit what is left, then the
  request's ``max_tokens`` shrinks (the last request may be shorter than the config's).
* value_calls: an expansion reserves the evaluator's worst case (2n for VM-MCTS: n children +
  n rollouts; n for ORM and outcome-only strategies; n * (max_tokens + 1) line prefixes for
  PRM-BoN); cached states cost nothing.
* deadline: enforced by `search.runner.run_search`; work that completed before it is kept.

When a reservation fails while other expansions are in flight, the strategy waits for them
(their unused reservation comes back) and tries again; with nothing in flight the search stops
with that limit as its stop reason.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from models.base import Policy, Sample
from models.prompting import (
    STOP,
    PromptMode,
    assemble_program,
    render_prompt,
    root_state,
)
from sandbox.api import ProgramRunner
from search.evaluators import Evaluation, Evaluator
from search.tree import ChildSpec, Node, RolloutSpec, Tree, rollout_code, split_continuations
from search.types import (
    Candidate,
    SearchConfig,
    SearchProgress,
    SearchResult,
    StopReason,
    Usage,
    count_weighted,
)
from tasks import Problem

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[SearchProgress], Awaitable[None] | None]


@dataclass(eq=False)
class Expansion:
    """One policy request of a search and what came of it."""

    seq: int  # issue order within the search
    node: Node
    n: int
    max_tokens: int
    temperature: float
    seed: int | None
    grow: bool  # add the first-line children to the tree (tree strategies) or only keep rollouts
    value_reserve: int
    samples: list[Sample] | None = None
    children: list[ChildSpec] | None = None
    rollouts: list[RolloutSpec] | None = None
    evaluation: Evaluation | None = None
    task: asyncio.Task[None] | None = None


def resolve_mode(policy: Policy, config: SearchConfig) -> PromptMode:
    if config.prompt_mode is not None:
        return config.prompt_mode
    return policy.prompt_mode


class SearchRun:
    """State of one search (see the module docstring)."""

    def __init__(
        self,
        problem: Problem,
        policy: Policy,
        evaluator: Evaluator,
        config: SearchConfig,
        *,
        sandbox: ProgramRunner | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.problem = problem
        self.policy = policy
        self.evaluator = evaluator
        self.config = config
        self.sandbox = sandbox
        self.on_progress = on_progress
        self.mode: PromptMode = resolve_mode(policy, config)
        self.tree = Tree(root_state(problem, self.mode), widen=config.widen)
        self.rng = random.Random(config.seed)
        self.usage = Usage()
        self.candidates: dict[str, Candidate] = {}
        self._order: dict[str, tuple[int, int]] = {}
        self.inflight: deque[Expansion] = deque()
        self.stop_reason: StopReason | None = None
        self.refusal: StopReason | None = None  # why the last reservation failed
        self.reranked = False
        self._reserved = {"samples": 0, "tokens": 0, "value_calls": 0}
        self._seq = 0
        self.t0 = time.monotonic()
        self.trace_expansions: list[dict[str, Any]] = []
        self.trace_values: dict[str, float] = {}
        self._public_pass: dict[str, float] = {}  # program -> pass fraction on public tests
        self.test_public = bool(sandbox is not None and problem.public_tests)

    # ---------------------------------------------------------------- budget
    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def reserve(self, node: Node, *, n: int, temperature: float, grow: bool = True) -> Expansion | None:
        """Reserve budget for an expansion of ``node`` with up to ``n`` continuations, or return
        None and set `refusal` to the limit that prevents it."""
        b = self.config.budget
        max_tokens = self.config.max_tokens
        samples_left = b.samples - self.usage.samples - self._reserved["samples"]
        if samples_left <= 0:
            self.refusal = "samples"
            return None
        n = min(n, samples_left)
        if b.tokens is not None:
            tokens_left = b.tokens - self.usage.policy_tokens - self._reserved["tokens"]
            n = min(n, max(1, tokens_left // max_tokens))
            max_tokens = min(max_tokens, tokens_left // n)
            if max_tokens < 1:
                self.refusal = "tokens"
                return None
        per = self.evaluator.max_value_calls(1, grow=grow, max_tokens=max_tokens)
        if b.value_calls is not None and per:
            calls_left = b.value_calls - self.usage.value_calls - self._reserved["value_calls"]
            n = min(n, calls_left // per)
            if n < 1:
                self.refusal = "value_calls"
                return None
        seq = self._seq
        self._seq += 1
        seed = None
        if self.config.seed is not None and temperature > 0:
            seed = (self.config.seed * 1_000_003 + seq) % (2**31 - 1)
        exp = Expansion(
            seq=seq, node=node, n=n, max_tokens=max_tokens, temperature=temperature, seed=seed,
            grow=grow, value_reserve=per * n,
        )
        self._reserved["samples"] += n
        self._reserved["tokens"] += n * max_tokens
        self._reserved["value_calls"] += exp.value_reserve
        self.refusal = None
        return exp

    def _release(self, exp: Expansion) -> None:
        self._reserved["samples"] -= exp.n
        self._reserved["tokens"] -= exp.n * exp.max_tokens
        self._reserved["value_calls"] -= exp.value_reserve

    # ---------------------------------------------------------------- requests
    def launch(self, exp: Expansion) -> None:
        """Start fetching ``exp`` as a task tracked in `inflight` (issue order)."""
        exp.task = asyncio.get_running_loop().create_task(self.fetch(exp))
        self.inflight.append(exp)

    async def fetch(self, exp: Expansion) -> None:
        prompt = render_prompt(self.policy.tokenizer, self.problem, exp.node.state, self.mode)
        exp.samples = list(
            await self.policy.sample(
                prompt, n=exp.n, max_tokens=exp.max_tokens, stop=STOP, temperature=exp.temperature,
                top_p=self.config.top_p, seed=exp.seed,
            )
        )
        children, rollouts = split_continuations(
            exp.node.state, [s.text for s in exp.samples], [s.finish_reason for s in exp.samples],
            step_lines=self.config.step_lines,
        )
        if not exp.grow:
            children = []
            rollouts = [RolloutSpec(code=r.code, sample=r.sample, finish_reason=r.finish_reason, child=None) for r in rollouts]
        exp.children, exp.rollouts = children, rollouts
        exp.evaluation = await self.evaluator.evaluate(self.problem, children, rollouts, mode=self.mode)

    async def next_done(self) -> Expansion:
        """Wait for the oldest in-flight expansion, remove it from `inflight` and return it."""
        exp = self.inflight[0]
        assert exp.task is not None
        await exp.task  # re-raises the request's error
        self.inflight.popleft()
        return exp

    async def cancel_inflight(self) -> None:
        tasks = [e.task for e in self.inflight if e.task is not None and not e.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---------------------------------------------------------------- results
    async def apply(self, exp: Expansion) -> list[Node]:
        """Account an expansion whose fetch finished: usage, candidates, tree, trace; then emit
        progress and, when configured, check new candidates on the public tests."""
        new_rollouts = self._account(exp)
        new_nodes = self._grow(exp)
        await self._emit(new_nodes)
        if self.config.stop_when_solved and self.test_public and new_rollouts:
            await self._run_public(new_rollouts)
            if any(self._public_pass.get(c.program, 0.0) >= 1.0 for c in new_rollouts):
                self.stop("solved")
        return new_nodes

    def salvage(self) -> None:
        """After a deadline: keep what finished in-flight expansions sampled (and scored)."""
        for exp in list(self.inflight):
            if exp.samples is not None:
                self._account(exp)
                if exp.evaluation is not None:
                    self._grow(exp)
        self.inflight.clear()

    def _account(self, exp: Expansion) -> list[Candidate]:
        self._release(exp)
        assert exp.samples is not None
        u = self.usage
        u.policy_requests += 1
        u.samples += len(exp.samples)
        u.policy_tokens += sum(s.tokens for s in exp.samples)
        if exp.samples:  # one prompt per request; the engine reports it on every sample
            u.prompt_tokens += exp.samples[0].prompt_tokens
            u.cached_prompt_tokens += exp.samples[0].cached_prompt_tokens
        ev = exp.evaluation
        if ev is not None:
            u.value_calls += ev.value_calls
            self.trace_values.update(ev.scored)
        rollouts = exp.rollouts
        if rollouts is None:  # sampled but not split yet (deadline): every sample is a rollout
            rollouts = [
                RolloutSpec(code=rollout_code(exp.node.state, s.text, s.finish_reason), sample=i, finish_reason=s.finish_reason, child=None)
                for i, s in enumerate(exp.samples) if s.finish_reason != "abort"
            ]
        new: list[Candidate] = []
        for r_idx, r in enumerate(rollouts):
            value = ev.rollout_values[r_idx] if ev is not None else None
            cand = self.candidates.get(r.code)
            if cand is None:
                cand = Candidate(code=r.code, program=assemble_program(self.problem, r.code, self.mode), value=value)
                self.candidates[r.code] = cand
                self._order[r.code] = (exp.seq, r.sample)
                new.append(cand)
            else:
                cand.samples += 1
                if cand.value is None and value is not None:
                    cand.value = value
        if self.config.record_trace:
            self.trace_expansions.append(
                {
                    "seq": exp.seq,
                    "node": exp.node.id,
                    "n": exp.n,
                    "max_tokens": exp.max_tokens,
                    "temperature": exp.temperature,
                    "seed": exp.seed,
                    "complete": ev is not None,
                    "value_calls": ev.value_calls if ev is not None else 0,
                    "samples": [
                        {"text": s.text, "tokens": s.tokens, "finish_reason": s.finish_reason,
                         "prompt_tokens": s.prompt_tokens, "cached_prompt_tokens": s.cached_prompt_tokens}
                        for s in exp.samples
                    ],
                    "rollouts": [
                        {"sample": r.sample, "finish_reason": r.finish_reason,
                         "value": ev.rollout_values[i] if ev is not None else None,
                         "status": ev.statuses[i] if ev is not None and ev.statuses else None,
                         "reward": ev.pass_fractions[i] if ev is not None and ev.pass_fractions else None}
                        for i, r in enumerate(rollouts)
                    ],
                    "children": [],
                }
            )
        return new

    def _grow(self, exp: Expansion) -> list[Node]:
        ev = exp.evaluation
        assert ev is not None and exp.children is not None
        exp.node.rollout_values.extend(ev.rollout_values)
        if not exp.grow:
            return []
        num_decision = self.config.num_decision or self.config.k
        new = self.tree.expand(exp.node, exp.children, ev.child_values, num_decision=num_decision,
                               per_sample=self.config.merged_visits == "samples")
        if self.config.record_trace and self.trace_expansions and self.trace_expansions[-1]["seq"] == exp.seq:
            self.trace_expansions[-1]["children"] = [n.id for n in new]
        return new

    async def _emit(self, new_nodes: list[Node]) -> None:
        if self.on_progress is None:
            return
        self.usage.wall_s = time.monotonic() - self.t0
        best = self.best()
        progress = SearchProgress(
            nodes=len(self.tree.nodes),
            usage=self.usage.model_copy(),
            best_code=best.code if best else None,
            best_value=best.value if best else None,
            new_nodes=[n.summary() for n in new_nodes],
        )
        out = self.on_progress(progress)
        if inspect.isawaitable(out):
            await out

    def _rank_key(self, cand: Candidate) -> tuple[float, float, int, int]:
        seq, idx = self._order[cand.code]
        value = cand.value if cand.value is not None else -1.0
        if self.config.count_weight and cand.value is not None:
            value = count_weighted(cand.value, cand.samples, self.config.count_weight)
        if self.reranked:
            return (-(cand.pass_fraction or 0.0), -value, seq, idx)
        return (0.0, -value, seq, idx)

    def ranked(self) -> list[Candidate]:
        return sorted(self.candidates.values(), key=self._rank_key)

    def best(self) -> Candidate | None:
        return min(self.candidates.values(), key=self._rank_key, default=None)

    # ---------------------------------------------------------------- re-ranking
    async def _run_public(self, cands: list[Candidate]) -> None:
        todo = list(dict.fromkeys(c.program for c in cands if c.program not in self._public_pass))
        if todo:
            tests = list(self.problem.public_tests)
            assert self.sandbox is not None  # `test_public` says so
            verdicts = await self.sandbox.run_many([(p, tests, self.problem.entry_point) for p in todo])
            for p, v in zip(todo, verdicts, strict=True):
                self._public_pass[p] = float(v.pass_fraction) if v.status != "infra_error" else 0.0
        for c in cands:
            c.pass_fraction = self._public_pass[c.program]

    async def rerank(self) -> None:
        """Execute every candidate on the public tests; rank by pass fraction, then value."""
        await self._run_public(list(self.candidates.values()))
        self.reranked = True

    def result(self, strategy: str, *, trace: dict[str, Any] | None) -> SearchResult:
        self.usage.wall_s = time.monotonic() - self.t0
        ranked = self.ranked()
        best = ranked[0] if ranked else None
        return SearchResult(
            strategy=strategy,  # type: ignore[arg-type]
            program=best.program if best else None,
            code=best.code if best else None,
            value=best.value if best else None,
            candidates=[c.model_copy() for c in ranked[: self.config.top_candidates]],
            usage=self.usage.model_copy(),
            stop_reason=self.stop_reason or "done",
            nodes=len(self.tree.nodes),
            max_depth=self.tree.max_depth,
            policy_version=str(self.policy.version),
            value_version=str(self.evaluator.version),
            reranked=self.reranked,
            trace=trace,
        )
