"""The wire protocol: every request and response body of the HTTP API, in one module.

Requests convert themselves into internal configuration: `SearchParams.to_config(limits)` returns
the `search.types.SearchConfig` a strategy runs with and the list of budget fields the server's
limits reduced (reported to the client as ``budget_capped``). The OpenAI-compatible bodies follow
OpenAI's field names; their optional ``search`` object (what the official client sends through
``extra_body``) is a `SearchSpec`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from search.types import Budget, Candidate, SearchConfig, StopReason, StrategyName, Usage
from tasks import Problem, TestCase

MAX_TEXT = 100_000  # characters of a statement / starter code / prompt
# a signed 64-bit integer, as OpenAI and vLLM's own server take it; vLLM's engine fails on seeds
# beyond 64 bits (it answered 500 and kept the request), so every `seed` is checked here
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1, description="a signed 64-bit integer")]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class ServerLimits(BaseModel):
    """The caps the server applies to every request (from `server.settings.Settings`)."""

    max_samples: int
    max_tokens_budget: int
    max_deadline_s: float
    max_new_tokens: int


class BudgetIn(BaseModel):
    """A request's budget. Unset fields take the server's defaults; values above the server's caps
    are reduced and named in the response's ``budget_capped``."""

    model_config = ConfigDict(extra="forbid")

    samples: int | None = Field(default=None, ge=1, description="sampled complete programs (default 20)")
    tokens: int | None = Field(default=None, ge=1, description="policy tokens, all requests of the search")
    value_calls: int | None = Field(default=None, ge=1, description="states scored by the value model")
    deadline_s: float | None = Field(default=None, gt=0, description="wall-clock seconds")


# SearchParams fields copied into SearchConfig when set
_SEARCH_OPTIONS = ("k", "num_decision", "c_uct", "temperature", "top_p", "max_tokens", "beam_width",
                   "parallel_expansions", "prompt_mode", "top_candidates", "step_lines", "prm_aggregate")


class SearchParams(BaseModel):
    """Strategy, budget and search options shared by /v1/solve and the OpenAI ``search`` object."""

    model_config = ConfigDict(extra="forbid")

    strategy: StrategyName = Field(default="vm_mcts", description="greedy, best_of_n, prm_best_of_n, beam, orm_mcts or vm_mcts")
    budget: BudgetIn = Field(default_factory=BudgetIn)
    k: int | None = Field(default=None, ge=1, le=64, description="continuations per expansion")
    num_decision: int | None = Field(default=None, ge=1, le=64, description="children kept selectable per node")
    c_uct: float | None = Field(default=None, ge=0, le=10, description="UCT exploration constant")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, description="max new tokens per policy request")
    beam_width: int | None = Field(default=None, ge=1, le=64)
    parallel_expansions: int | None = Field(default=None, ge=1, le=64)
    step_lines: int | None = Field(default=None, ge=1, le=64, description="lines per step of the tree (default 1, the paper's step)")
    prompt_mode: Literal["continue", "rewrite"] | None = None
    prm_aggregate: Literal["min", "mean", "last"] | None = Field(
        default=None, description="prm_best_of_n: how line-prefix values make a program's score (default min)"
    )
    top_candidates: int | None = Field(default=None, ge=0, le=100)
    rerank_with_tests: bool = Field(default=False, description="execute candidates on the public tests (sandbox) and rank by pass fraction first")
    stop_when_solved: bool = Field(default=False, description="with rerank_with_tests: stop at the first candidate passing every public test")
    seed: Seed | None = Field(default=None, description="seeds the search's random choices (signed 64-bit)")

    def to_config(self, limits: ServerLimits, *, record_trace: bool = False) -> tuple[SearchConfig, list[str]]:
        """The `SearchConfig` to run and the budget fields reduced to the server's limits."""
        capped: list[str] = []

        def cap(name: str, requested: float | None, limit: float, default: float | None) -> Any:
            if requested is None:
                return default if default is None else min(default, limit)
            if requested > limit:
                capped.append(name)
                return limit
            return requested

        b = self.budget
        budget = Budget(
            samples=cap("budget.samples", b.samples, limits.max_samples, Budget().samples),
            tokens=cap("budget.tokens", b.tokens, limits.max_tokens_budget, limits.max_tokens_budget),
            value_calls=b.value_calls,
            deadline_s=cap("budget.deadline_s", b.deadline_s, limits.max_deadline_s, limits.max_deadline_s),
        )
        options = {name: getattr(self, name) for name in _SEARCH_OPTIONS if getattr(self, name) is not None}
        if "max_tokens" in options:
            options["max_tokens"] = cap("max_tokens", options["max_tokens"], limits.max_new_tokens, None)
        else:
            options["max_tokens"] = min(SearchConfig().max_tokens, limits.max_new_tokens)
        config = SearchConfig(
            strategy=self.strategy,
            budget=budget,
            rerank_with_tests=self.rerank_with_tests,
            stop_when_solved=self.stop_when_solved,
            seed=self.seed,
            record_trace=record_trace,
            **options,
        )
        return config, capped


class ProblemIn(BaseModel):
    """The problem of a /v1/solve request."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, min_length=1, max_length=256)
    statement: str = Field(min_length=1, max_length=MAX_TEXT, description="what the program must do")
    starter_code: str = Field(default="", max_length=MAX_TEXT, description="signature, imports, helpers")
    entry_point: str | None = Field(default=None, max_length=256, description="the function tests call")
    public_tests: list[TestCase] = Field(default_factory=list, max_length=1000, description="tests the request exposes to re-ranking")

    def to_problem(self, request_id: str) -> Problem:
        return Problem(id=self.id or request_id, prompt=self.statement, starter_code=self.starter_code,
                       entry_point=self.entry_point, public_tests=self.public_tests)


class SolveRequest(SearchParams):
    """``POST /v1/solve``."""

    problem: ProblemIn
    return_tree: bool = Field(default=False, description="include the search tree (trace) in the response")
    stream: bool = Field(default=False, description="answer with Server-Sent Events: progress..., result")


class SolveResponse(BaseModel):
    id: str
    object: Literal["solve"] = "solve"
    created: int = Field(default_factory=lambda: int(time.time()))
    strategy: StrategyName
    program: str | None = Field(description="the chosen program (what the sandbox would run); None if the budget allowed no sample")
    code: str | None = Field(description="the generated code of the chosen candidate")
    value: float | None
    candidates: list[Candidate]
    usage: Usage
    stop_reason: StopReason
    nodes: int
    max_depth: int
    reranked: bool
    policy_version: str
    value_version: str
    budget_capped: list[str] = Field(description="budget fields the server's limits reduced")
    queued_s: float = Field(default=0.0, description="seconds the request waited for a search slot; they count against budget.deadline_s")
    tree: dict[str, Any] | None = None


class ProgressEvent(BaseModel):
    """The ``progress`` SSE event of /v1/solve."""

    id: str
    nodes: int
    usage: Usage
    best_code: str | None
    best_value: float | None
    new_nodes: list[dict[str, Any]]


# ---------------------------------------------------------------- OpenAI-compatible


class SearchSpec(SearchParams):
    """The ``search`` object of an OpenAI-style request: decode by running the search. The prompt
    (or the last user message) is the problem statement."""

    starter_code: str = Field(default="", max_length=MAX_TEXT)
    entry_point: str | None = Field(default=None, max_length=256)
    public_tests: list[TestCase] = Field(default_factory=list, max_length=1000)

    def to_problem(self, statement: str, request_id: str) -> Problem:
        return Problem(id=request_id, prompt=statement, starter_code=self.starter_code,
                       entry_point=self.entry_point, public_tests=self.public_tests)


class StreamOptions(BaseModel):
    include_usage: bool = False


StopText = Annotated[str, Field(min_length=1, max_length=1000)]
PromptText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


def _neutral(*values: Any) -> Any:
    """A check that a field's value is one of ``values`` (booleans by identity: ``0`` is not ``False``)."""

    def check(value: Any, _request: Any) -> bool:
        return any(value is v if isinstance(v, bool) or isinstance(value, bool) or v is None else value == v for v in values)

    return check


# OpenAI (and vLLM) request fields that would change the answer and that this server does not
# implement: set to anything but a neutral value they answer 400 naming the field, rather than an
# answer that silently differs from what was asked. Other unknown fields (`user`, `metadata`,
# `store`, ...) are ignored. docs/api.md lists these names (tests/test_docs.py checks).
UNSUPPORTED_FIELDS: dict[str, Any] = {
    "logprobs": _neutral(None, False),
    "top_logprobs": _neutral(None, 0),
    "echo": _neutral(None, False),
    "best_of": lambda value, request: value is None or value == request.n,
    "suffix": _neutral(None, ""),
    "logit_bias": _neutral(None, {}),
    "presence_penalty": _neutral(None, 0),
    "frequency_penalty": _neutral(None, 0),
    "tools": _neutral(None, []),
    "tool_choice": _neutral(None, "none"),
    "functions": _neutral(None, []),
    "function_call": _neutral(None, "none"),
    "response_format": _neutral(None, {"type": "text"}),
    "modalities": _neutral(None, ["text"]),
    "audio": _neutral(None),
    # vLLM's own sampling and decoding extras
    "top_k": _neutral(None, 0, -1),
    "min_p": _neutral(None, 0),
    "repetition_penalty": _neutral(None, 1),
    "min_tokens": _neutral(None, 0),
    "ignore_eos": _neutral(None, False),
    "use_beam_search": _neutral(None, False),
    "prompt_logprobs": _neutral(None),
    "structured_outputs": _neutral(None),
    "guided_json": _neutral(None),
    "guided_regex": _neutral(None),
    "guided_choice": _neutral(None),
    "guided_grammar": _neutral(None),
}


class _OpenAIRequest(BaseModel):
    # Unknown OpenAI fields are kept (not validated) so that `unsupported_field` can refuse the
    # ones that change the answer; the others (`user`, ...) are ignored, as vLLM does.
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, description="ignored: the active policy answers")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=64)
    stop: StopText | Annotated[list[StopText], Field(max_length=16)] | None = Field(
        default=None, description="stop sequences (non-empty strings; an empty one made the engine fail with a 500)")
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    search: SearchSpec | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def unsupported_field(self) -> str | None:
        """The first field set that this server does not implement (`UNSUPPORTED_FIELDS`), if any."""
        for name, value in (self.model_extra or {}).items():
            neutral = UNSUPPORTED_FIELDS.get(name)
            if neutral is not None and not neutral(value, self):
                return name
        return None


class CompletionRequest(_OpenAIRequest):
    prompt: PromptText | Annotated[list[PromptText], Field(max_length=64)] = Field(
        description="the text to continue (non-empty: the engine refuses an empty prompt); with `search`: the problem statement")

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str = Field(max_length=MAX_TEXT)


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, int] | None = None


class SearchInfo(BaseModel):
    """What a search-decoded OpenAI response adds (``response.search``)."""

    strategy: StrategyName
    value: float | None
    stop_reason: StopReason
    usage: Usage
    policy_version: str
    value_version: str
    budget_capped: list[str]
    queued_s: float = Field(default=0.0, description="seconds the request waited for a search slot (part of the deadline)")


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "abort"] | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    search: SearchInfo | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: Literal["stop", "length", "abort"] | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    search: SearchInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "restrl"
    value_version: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------- admin


class SwapRequest(BaseModel):
    """``POST /admin/models``: the checkpoint folder(s) to load; an omitted side keeps its model."""

    model_config = ConfigDict(extra="forbid")

    policy: str | None = Field(default=None, min_length=1, max_length=4096,
                               description="policy checkpoint folder (full weights or LoRA adapter with restrl.json): absolute,"
                               " or relative to RESTRL_CHECKPOINT_ROOT; under that root when it is set")
    value: str | None = Field(default=None, min_length=1, max_length=4096, description="value checkpoint folder (same rules)")


class PairInfo(BaseModel):
    pair_id: int
    policy_version: str
    value_version: str = Field(description="the value model's version; '(trained for X)' when that is not this policy's base")
    policy_source: str | None
    value_source: str | None
    policy_base: str = Field(description="the base model the policy derives from")
    value_trained_for: str | None = Field(description="the base of the policy whose rollouts trained the value model (None: unknown)")
    value_match: Literal["matches", "other_policy", "unknown", "none"] = Field(
        description="matches (trained for this policy's base), other_policy, unknown (no record: untrained or no manifest), none (no value model)")
    searches_allowed: bool = Field(description="whether searches run: false when the value model may not guide this policy (searches answer 400)")
    value_note: str = Field(description="what is wrong with the pairing, if anything")
    loaded_at: float
    in_flight: int


class SwapEvent(BaseModel):
    at: float
    kind: Literal["load", "swap", "rollback"]
    result: Literal["ok", "failed"]
    policy: str | None
    value: str | None
    message: str
    seconds: float


class ModelsStatus(BaseModel):
    active: PairInfo | None
    draining: list[PairInfo]
    history: list[SwapEvent]
