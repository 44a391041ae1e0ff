"""Evaluators: what gives the children and rollouts of an expansion their values.

In: the problem, an expansion's proposed children (states) and rollouts (full programs). Out: one
value in [0, 1] per child and per rollout, plus what it cost. Strategies never call a value model
or the sandbox directly; they call an `Evaluator`, so the same MCTS serves decoding and the
value-data collection of RESTRL_SPEC.md section 3:

* `VMEvaluator(value)` - VM-MCTS: the value model scores every new child state and every full
  program in ONE batched call per expansion (terminal children are full programs: scored once).
* `ORMEvaluator(value)` - ORM-MCTS: only full programs are scored; a child's value is the mean
  (or max) of the rollouts passing through it. State nodes are never scored directly.
* `PRMEvaluator(value, aggregate)` - PRM-BoN (the paper's process-reward baseline, Math-Shepherd
  style): every rollout is scored at each of its generated lines (`step_prefixes`: the program
  cut after each non-blank generated line, the last cut being the whole program), all prefixes of
  an expansion in ONE batched call; the rollout's value aggregates its prefix values by ``min``
  (Math-Shepherd, the default), ``mean`` or ``last`` (= the whole program's value, the ORM score).
* `TestEvaluator(sandbox)` - training: rollouts are executed on the problem's tests; a rollout's
  value is its pass fraction, a child's value the mean of the rollouts through it.
* `ExecutedRewards(evaluator, sandbox)` - value-data collection with the *decoding* settings: the
  wrapped evaluator (a `VMEvaluator`) values the tree, so the search visits the states VM-MCTS
  visits, and every rollout is also executed on the tests; its pass fraction is reported
  (`Evaluation.pass_fractions`, the traces' ``reward``) as the training target.

Each evaluator keeps a per-search cache (a state sampled twice is scored once); build one per
search with `fork()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from models.base import ValueModel
from models.prompting import PromptMode, assemble_program, root_state
from sandbox.api import ProgramRunner
from sandbox.limits import Limits
from search.tree import ChildSpec, RolloutSpec
from tasks import Problem, TestCase


@dataclass
class Evaluation:
    child_values: list[float]
    rollout_values: list[float]
    value_calls: int = 0  # states the value model scored (after de-duplication and caching)
    scored: dict[str, float] = field(default_factory=dict)  # newly scored state -> value (traces)
    pass_fractions: list[float | None] | None = None  # per rollout, test-based evaluators only
    statuses: list[str] | None = None  # per rollout sandbox verdict status, test-based only


@runtime_checkable
class Evaluator(Protocol):
    version: str

    def max_value_calls(self, n: int, *, grow: bool, max_tokens: int) -> int:
        """Worst-case value-model calls of an expansion with ``n`` continuations of at most
        ``max_tokens`` tokens each, that adds children to a tree (``grow``) or only keeps its
        rollouts (budgeting)."""
        ...

    def fork(self) -> Evaluator:
        """A fresh instance for one search (own cache, same models)."""
        ...

    async def evaluate(
        self, problem: Problem, children: Sequence[ChildSpec], rollouts: Sequence[RolloutSpec], *, mode: PromptMode
    ) -> Evaluation: ...


def _aggregate(values: list[float], how: Literal["mean", "max"]) -> float:
    if not values:
        return 0.0
    return max(values) if how == "max" else sum(values) / len(values)


def _through(children: Sequence[ChildSpec], rollouts: Sequence[RolloutSpec]) -> list[list[int]]:
    """For each child, the indices of the rollouts passing through it."""
    out: list[list[int]] = [[] for _ in children]
    for r, ro in enumerate(rollouts):
        if ro.child is not None:
            out[ro.child].append(r)
    return out


class _CachedScorer:
    def __init__(self, value: ValueModel) -> None:
        self.value = value
        self.cache: dict[str, float] = {}

    async def score(self, problem: Problem, states: Sequence[str]) -> tuple[dict[str, float], int, dict[str, float]]:
        todo = list(dict.fromkeys(s for s in states if s not in self.cache))
        new: dict[str, float] = {}
        if todo:
            values = await self.value.score(problem, todo)
            new = {s: float(v) for s, v in zip(todo, values, strict=True)}
            self.cache.update(new)
        return self.cache, len(todo), new


class VMEvaluator:
    """Value-model evaluation of child states and full programs (VM-MCTS, beam, best-of-N)."""

    def __init__(self, value: ValueModel) -> None:
        self.value = value
        self.version = value.version
        self._scorer = _CachedScorer(value)

    def max_value_calls(self, n: int, *, grow: bool, max_tokens: int) -> int:
        return 2 * n if grow else n  # children + rollouts; a terminal child is its rollout (cached)

    def fork(self) -> VMEvaluator:
        return VMEvaluator(self.value)

    async def evaluate(
        self, problem: Problem, children: Sequence[ChildSpec], rollouts: Sequence[RolloutSpec], *, mode: PromptMode
    ) -> Evaluation:
        states = [c.state for c in children] + [r.code for r in rollouts]
        table, calls, new = await self._scorer.score(problem, states)
        return Evaluation(
            child_values=[table[c.state] for c in children],
            rollout_values=[table[r.code] for r in rollouts],
            value_calls=calls,
            scored=new,
        )


class ORMEvaluator:
    """Outcome-only evaluation: the value model scores full programs; children inherit the mean
    (or max) of the rollouts through them (ORM-MCTS)."""

    def __init__(self, value: ValueModel, *, aggregate: Literal["mean", "max"] = "mean") -> None:
        self.value = value
        self.aggregate = aggregate
        self.version = value.version
        self._scorer = _CachedScorer(value)

    def max_value_calls(self, n: int, *, grow: bool, max_tokens: int) -> int:
        return n

    def fork(self) -> ORMEvaluator:
        return ORMEvaluator(self.value, aggregate=self.aggregate)

    async def evaluate(
        self, problem: Problem, children: Sequence[ChildSpec], rollouts: Sequence[RolloutSpec], *, mode: PromptMode
    ) -> Evaluation:
        table, calls, new = await self._scorer.score(problem, [r.code for r in rollouts])
        rollout_values = [table[r.code] for r in rollouts]
        child_values = [_aggregate([rollout_values[i] for i in ids], self.aggregate) for ids in _through(children, rollouts)]
        return Evaluation(child_values=child_values, rollout_values=rollout_values, value_calls=calls, scored=new)


PRMAggregate = Literal["min", "mean", "last"]


def step_prefixes(code: str, root: str) -> list[str]:
    """The states a process reward model scores for program ``code`` sampled from ``root``: the
    code cut after each non-blank line generated after ``root`` (blank lines are no step), ending
    with ``code`` itself. A line needs at least one generated token, so there are at most
    ``tokens + 1`` prefixes."""
    head, body = (root, code[len(root):]) if code.startswith(root) else ("", code)
    out: list[str] = []
    for line in body.splitlines(keepends=True):
        head += line
        if line.strip():
            out.append(head)
    if not out or out[-1] != code:
        out.append(code)
    return out


def aggregate_steps(values: Sequence[float], how: PRMAggregate) -> float:
    """A program's PRM score from its prefix values (in order; the last is the whole program)."""
    if how == "last":
        return float(values[-1])
    if how == "min":
        return float(min(values))
    return float(sum(values) / len(values))


class PRMEvaluator:
    """Process-reward evaluation (PRM-BoN): each rollout's value aggregates the value model's scores
    of its line prefixes; children (if a tree strategy uses it) get their own state's value."""

    def __init__(self, value: ValueModel, *, aggregate: PRMAggregate = "min") -> None:
        self.value = value
        self.aggregate = aggregate
        self.version = value.version
        self._scorer = _CachedScorer(value)

    def max_value_calls(self, n: int, *, grow: bool, max_tokens: int) -> int:
        return n * (max_tokens + 1) + (n if grow else 0)

    def fork(self) -> PRMEvaluator:
        return PRMEvaluator(self.value, aggregate=self.aggregate)

    async def evaluate(
        self, problem: Problem, children: Sequence[ChildSpec], rollouts: Sequence[RolloutSpec], *, mode: PromptMode
    ) -> Evaluation:
        root = root_state(problem, mode)
        prefixes = [step_prefixes(r.code, root) for r in rollouts]
        states = [c.state for c in children] + [p for ps in prefixes for p in ps]
        table, calls, new = await self._scorer.score(problem, states)
        return Evaluation(
            child_values=[table[c.state] for c in children],
            rollout_values=[aggregate_steps([table[p] for p in ps], self.aggregate) for ps in prefixes],
            value_calls=calls,
            scored=new,
        )


class TestEvaluator:
    """Test execution as the evaluator (value-data collection, RESTRL_SPEC.md section 3).

    ``sandbox`` runs the programs (`sandbox.ProgramRunner`: ``run_many`` returns verdicts with
    ``status`` and ``pass_fraction``), under ``limits`` (None: the sandbox's own). ``which`` picks the problem's hidden
    ``tests`` (training problems) or its ``public_tests``. An ``infra_error`` verdict counts as 0
    and is reported in `Evaluation.statuses`, never as a pass."""

    __test__ = False  # not a pytest class

    def __init__(self, sandbox: ProgramRunner, *, which: Literal["tests", "public_tests"] = "tests",
                 limits: Limits | None = None) -> None:
        self.sandbox = sandbox
        self.which = which
        self.limits = limits
        self.version = f"tests:{which}"
        self._cache: dict[str, tuple[float, str]] = {}

    def max_value_calls(self, n: int, *, grow: bool, max_tokens: int) -> int:
        return 0

    def fork(self) -> TestEvaluator:
        return TestEvaluator(self.sandbox, which=self.which, limits=self.limits)

    async def execute(self, problem: Problem, rollouts: Sequence[RolloutSpec], *, mode: PromptMode) -> tuple[list[float], list[str]]:
        """(pass fraction, verdict status) of every rollout, each distinct program run once."""
        tests: list[TestCase] = list(problem.tests if self.which == "tests" else problem.public_tests)
        programs = [assemble_program(problem, r.code, mode) for r in rollouts]
        todo = list(dict.fromkeys(p for p in programs if p not in self._cache))
        if todo:
            verdicts = await self.sandbox.run_many([(p, tests, problem.entry_point) for p in todo], self.limits)
            for p, v in zip(todo, verdicts, strict=True):
                ok = v.status != "infra_error"
                self._cache[p] = (float(v.pass_fraction) if ok else 0.0, str(v.status))
        return [self._cache[p][0] for p in programs], [self._cache[p][1] for p in programs]

    async def evaluate(
        self, problem: Problem, children: Sequence[ChildSpec], rollouts: Sequence[RolloutSpec], *, mode: PromptMode
    ) -> Evaluation:
        rollout_values, statuses = await self.execute(problem, rollouts, mode=mode)
        child_values = [_aggregate([rollout_values[i] for i in ids], "mean") for ids in _through(children, rollouts)]
        return Evaluation(
            child_values=child_values,
            rollout_values=rollout_values,
            pass_fractions=list(rollout_values),
            statuses=statuses,
        )


class ExecutedRewards:
    """``evaluator`` values the tree; every rollout is also executed on the problem's tests and its
    pass fraction reported as the reward (value data collected with the decoding settings)."""

    def __init__(self, evaluator: Evaluator, sandbox: ProgramRunner, *, which: Literal["tests", "public_tests"] = "tests",
                 limits: Limits | None = None) -> None:
        self.evaluator = evaluator
        self.tests = TestEvaluator(sandbox, which=which, limits=limits)
        self.version = f"{evaluator.version}+{self.tests.version}"

    def max_value_calls(self, n: int, *, grow: bool, max_tokens: int) -> int:
        return self.evaluator.max_value_calls(n, grow=grow, max_tokens=max_tokens)

    def fork(self) -> ExecutedRewards:
        return ExecutedRewards(self.evaluator.fork(), self.tests.sandbox, which=self.tests.which, limits=self.tests.limits)

    async def evaluate(
        self, problem: Problem, children: Sequence[ChildSpec], rollouts: Sequence[RolloutSpec], *, mode: PromptMode
    ) -> Evaluation:
        ev = await self.evaluator.evaluate(problem, children, rollouts, mode=mode)
        rewards, ev.statuses = await self.tests.execute(problem, rollouts, mode=mode)
        ev.pass_fractions = list(rewards)
        return ev
