"""Search configuration, budgets, usage and results: the data that crosses the search boundary.

The server converts its wire requests into `SearchConfig`; strategies report a `SearchResult`.
Budgets are explicit (RESTRL_SPEC.md section 2): the primary unit is *sampled programs*; policy
tokens, value-model calls and a wall-clock deadline also bound a search, and the result says
which limit stopped it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

StrategyName = Literal["greedy", "best_of_n", "prm_best_of_n", "beam", "orm_mcts", "vm_mcts"]
# the strategies that select in their tree by UCT (``widen`` applies to them only)
MCTS_STRATEGIES: tuple[StrategyName, ...] = ("vm_mcts", "orm_mcts")
StopReason = Literal[
    "samples", "tokens", "value_calls", "deadline", "exhausted", "solved", "cancelled", "done"
]


class Budget(BaseModel):
    """Limits of one search. ``None`` means unbounded for that unit (samples is always bounded)."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(default=20, ge=0, le=100_000, description="sampled complete programs (the paper's unit)")
    tokens: int | None = Field(default=None, ge=0, description="policy tokens generated, all requests together")
    value_calls: int | None = Field(default=None, ge=0, description="states scored by the value model")
    deadline_s: float | None = Field(default=None, gt=0, description="wall-clock seconds from the start")


class SearchConfig(BaseModel):
    """Everything a strategy needs besides the problem and the models."""

    model_config = ConfigDict(extra="forbid")

    strategy: StrategyName = Field(default="vm_mcts", description="greedy, best_of_n, prm_best_of_n, beam, orm_mcts or vm_mcts")
    budget: Budget = Field(default_factory=Budget)
    k: int = Field(default=5, ge=1, le=64, description="continuations per expansion (n of one policy request)")
    num_decision: int | None = Field(default=None, ge=1, le=64, description="children kept selectable per node; None = k")
    c_uct: float = Field(default=0.1, ge=0, le=10, description="UCT exploration constant C (0.2 when collecting value data)")
    eps_uct: float = Field(default=0.1, gt=0, le=10, description="UCT epsilon in the visit denominator")
    temperature: float = Field(default=0.7, ge=0, le=2, description="sampling temperature of the policy requests (0 = greedy)")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling of the policy requests")
    max_tokens: int = Field(default=512, ge=1, le=8192, description="max new tokens per policy request")
    step_lines: int = Field(default=1, ge=1, le=64, description="lines per step of the tree (the spec's step is one line)")
    beam_width: int = Field(default=2, ge=1, le=64, description="beam: states kept per depth")
    prm_aggregate: Literal["min", "mean", "last"] = Field(
        default="min", description="prm_best_of_n: how a program's line-prefix values make its score (min = Math-Shepherd)"
    )
    parallel_expansions: int = Field(default=2, ge=1, le=64, description="expansions of one search in flight (virtual loss)")
    merged_visits: Literal["one", "samples"] = Field(
        default="one",
        description="a child chosen by several samples of one expansion starts with N = 1 (one, the spec) or N = that many samples, W = N * V (samples, the reference's duplicate counting)",
    )
    prompt_mode: Literal["continue", "rewrite"] | None = Field(default=None, description="prompt format; None = the policy's measured default")
    rerank_with_tests: bool = Field(default=False, description="execute candidates on the problem's public tests and rank by pass fraction, then value")
    stop_when_solved: bool = Field(default=False, description="with test-based evaluation: stop at the first candidate passing all public tests")
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1, description="seeds the search's random choices and its policy requests (signed 64-bit)")
    record_trace: bool = Field(default=False, description="keep the search's full trace (tree, samples, values) in the result")
    top_candidates: int = Field(default=5, ge=0, le=100, description="candidates returned besides the chosen program")
    widen: bool = Field(
        default=False,
        description="MCTS strategies (vm_mcts, orm_mcts; refused for the others): an expanded node may be expanded again (K more"
        " samples from its state) when UCT rates a fresh sample from it, worth the mean value of the children its samples reached,"
        " above its remaining children; off = the spec's tree, where a node is expanded once and the search descends past exhausted"
        " terminal children",
    )
    count_weight: float = Field(
        default=0.0, ge=0, le=4,
        description="final choice by value x samples^w, samples = how many of the search's samples ended in that program (self-consistency); 0 = value alone, the spec's rule",
    )

    @field_validator("widen")
    @classmethod
    def _widen_needs_mcts(cls, widen: bool, info: ValidationInfo) -> bool:
        return check_widen(widen, info.data.get("strategy"))


def check_widen(widen: bool, strategy: str | None) -> bool:
    """``widen`` as given, or a ValueError when ``strategy`` does not select by UCT (not ignored:
    a request that asks for it would otherwise run another search than it asked for)."""
    if widen and strategy is not None and strategy not in MCTS_STRATEGIES:
        raise ValueError(f"widen applies to the MCTS strategies ({', '.join(MCTS_STRATEGIES)}); {strategy} has no UCT selection to widen")
    return widen


def count_weighted(value: float, samples: int, weight: float) -> float:
    """The final-choice score with self-consistency (`SearchConfig.count_weight`): value x samples^w.
    One rule for the search, `restrl eval`'s ``count:w`` arms and `bench.choice_rules`."""
    return value * samples**weight


class Usage(BaseModel):
    samples: int = 0
    policy_requests: int = 0
    policy_tokens: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    value_calls: int = 0
    wall_s: float = 0.0


class Candidate(BaseModel):
    code: str  # generated code (state + completion) inside the block
    program: str  # what the sandbox executes (`models.prompting.assemble_program`)
    value: float | None = None
    pass_fraction: float | None = None  # set when re-ranked with public tests
    samples: int = 1  # how many of the search's samples ended in this program (self-consistency: bench.choice_rules)


class SearchResult(BaseModel):
    strategy: StrategyName
    program: str | None  # best program, None when the budget allowed no sample
    code: str | None
    value: float | None
    candidates: list[Candidate]
    usage: Usage
    stop_reason: StopReason
    nodes: int = 0
    max_depth: int = 0
    policy_version: str = ""
    value_version: str = ""
    reranked: bool = False
    trace: dict[str, Any] | None = None


class SearchProgress(BaseModel):
    """Emitted by strategies after each expansion (the server streams these as SSE)."""

    nodes: int
    usage: Usage
    best_code: str | None
    best_value: float | None
    new_nodes: list[dict[str, Any]] = Field(default_factory=list)  # {id, parent, line, value, visits, terminal}
