"""Search: VM-MCTS and the baseline strategies over a policy and a value model.

In: a `tasks.Problem`, a `models.base.Policy` (sampling continuations of a code state), a
`models.base.ValueModel` (scoring states) or an `Evaluator` replacing it (test execution when
collecting value-training data), a `SearchConfig` with an explicit `Budget`, optionally a
`sandbox.Sandbox` for public-test re-ranking. Out: a `SearchResult` (program, value, candidates,
usage, stop reason, tree size, versions, optional replayable trace) and `SearchProgress` events
after each expansion. `ValueBatcher` groups the value calls of all concurrent searches into
batched forward passes. This package imports `models.base`, `models.prompting`, `tasks` and
nothing that needs vLLM or FastAPI. `open_stack` (`search.stack`) opens what searches run on - the
policy, the value model behind the batcher, the sandbox - for every entry point that searches;
`open_replicas` (`search.replicas`) one per GPU group for the data-parallel jobs, with
`run_sharded` dealing problems across them and merging the results in order.
"""

from search.batcher import ValueBatcher
from search.evaluators import (
    Evaluation,
    Evaluator,
    ExecutedRewards,
    ORMEvaluator,
    PRMEvaluator,
    TestEvaluator,
    VMEvaluator,
    step_prefixes,
)
from search.replay import ReplayMismatch, ReplayPolicy, ReplayValue, replay_inputs
from search.replicas import open_replicas, run_sharded
from search.runner import run_search
from search.stack import NoValueModel, Stack, ValueMatch, open_stack, value_match
from search.strategies import STRATEGIES, Strategy
from search.trace import load_trace, save_trace
from search.types import Budget, Candidate, SearchConfig, SearchProgress, SearchResult, StopReason, Usage

__all__ = [
    "STRATEGIES",
    "Budget",
    "Candidate",
    "Evaluation",
    "Evaluator",
    "ExecutedRewards",
    "NoValueModel",
    "ORMEvaluator",
    "PRMEvaluator",
    "ReplayMismatch",
    "ReplayPolicy",
    "ReplayValue",
    "SearchConfig",
    "SearchProgress",
    "SearchResult",
    "Stack",
    "StopReason",
    "Strategy",
    "TestEvaluator",
    "Usage",
    "VMEvaluator",
    "ValueMatch",
    "ValueBatcher",
    "load_trace",
    "open_replicas",
    "open_stack",
    "replay_inputs",
    "run_search",
    "run_sharded",
    "save_trace",
    "step_prefixes",
    "value_match",
]
