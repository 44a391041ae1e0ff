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
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from search.types import Budget, Candidate, SearchConfig, StopReason, StrategyName, Usage, check_widen
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


# The search options of the wire: `SearchConfig`'s own fields, with its bounds and descriptions
# (`option`); unset means SearchConfig's default. One table: `search_options_table` prints it for
# docs/api.md, tests/server/test_api.py checks that every field here is SearchConfig's.
SEARCH_OPTIONS = ("k", "num_decision", "c_uct", "temperature", "top_p", "max_tokens", "beam_width", "parallel_expansions",
                  "step_lines", "prompt_mode", "prm_aggregate", "top_candidates", "count_weight", "seed")
# SearchConfig fields the wire sets with SearchConfig's own default rather than None
SEARCH_SWITCHES = ("strategy", "widen", "rerank_with_tests", "stop_when_solved")


def option(name: str) -> Any:
    """`SearchConfig`'s field ``name`` as an optional wire field: the same bounds and description;
    unset (None) = SearchConfig's default, named in the description."""
    src = SearchConfig.model_fields[name]
    default = src.get_default(call_default_factory=True)
    shown = "" if default is None else f" (default: {default})"
    info: Any = Field(default=None, description=f"{src.description}{shown}")
    info.metadata = list(src.metadata)
    return info


def _search_default(name: str) -> Any:
    src = SearchConfig.model_fields[name]
    return Field(default=src.get_default(call_default_factory=True), description=src.description)


def _bound(name: str, kind: str) -> Any:
    """The bound ``kind`` (``le``: at most, ...) SearchConfig's field ``name`` declares, if any."""
    return next((getattr(m, kind) for m in SearchConfig.model_fields[name].metadata if getattr(m, kind, None) is not None), None)


def _values(name: str) -> str:
    """The values SearchConfig's field ``name`` takes, as docs/api.md shows them."""
    field = SearchConfig.model_fields[name]
    literals = [a for a in get_args(field.annotation) if a is not type(None)]
    if get_origin(field.annotation) is Literal or any(get_origin(a) is Literal for a in literals):
        options = get_args(field.annotation) if get_origin(field.annotation) is Literal else get_args(literals[0])
        return " \\| ".join(f"`{o}`" for o in options)
    if field.annotation is bool:
        return "bool"
    number = "int" if int in (field.annotation, *literals) else "float"
    if (_bound(name, "ge"), _bound(name, "le")) == (-(2**63), 2**63 - 1):
        return f"{number}, signed 64-bit"
    low = next((f"{op} {_bound(name, kind)}" for op, kind in ((">=", "ge"), (">", "gt")) if _bound(name, kind) is not None), "")
    high = next((f"{op} {_bound(name, kind)}" for op, kind in (("<=", "le"), ("<", "lt")) if _bound(name, kind) is not None), "")
    return f"{number} {low}, {high}".replace(" ,", "").strip(", ")


def search_options_table() -> str:
    """The search options of /v1/solve and of the OpenAI ``search`` object: SearchConfig's fields,
    bounds, defaults and meanings (docs/api.md holds it as it prints:
    ``python -c "from server.protocol import search_options_table as t; print(t())"``)."""
    rows = ["| option | values | default | meaning |", "|---|---|---|---|"]
    for name in (*SEARCH_SWITCHES[:1], *SEARCH_OPTIONS, *SEARCH_SWITCHES[1:]):
        field = SearchConfig.model_fields[name]
        default = field.get_default(call_default_factory=True)
        rows.append(f"| `{name}` | {_values(name)} | {'unset' if default is None else f'`{default}`'} | {field.description} |")
    return "\n".join(rows) + "\n"


class SearchParams(BaseModel):
    """Strategy, budget and search options shared by /v1/solve and the OpenAI ``search`` object:
    the fields of `search.types.SearchConfig` with its bounds and descriptions (`SEARCH_OPTIONS`,
    unset = SearchConfig's default; `SEARCH_SWITCHES` with that default), and the budget, which the
    server's limits cap (`to_config`)."""

    model_config = ConfigDict(extra="forbid")

    strategy: StrategyName = _search_default("strategy")
    budget: BudgetIn = Field(default_factory=BudgetIn)
    k: int | None = option("k")
    num_decision: int | None = option("num_decision")
    c_uct: float | None = option("c_uct")
    temperature: float | None = option("temperature")
    top_p: float | None = option("top_p")
    max_tokens: int | None = option("max_tokens")
    beam_width: int | None = option("beam_width")
    parallel_expansions: int | None = option("parallel_expansions")
    step_lines: int | None = option("step_lines")
    prompt_mode: Literal["continue", "rewrite"] | None = option("prompt_mode")
    prm_aggregate: Literal["min", "mean", "last"] | None = option("prm_aggregate")
    top_candidates: int | None = option("top_candidates")
    count_weight: float | None = option("count_weight")
    seed: Seed | None = option("seed")
    widen: bool = _search_default("widen")
    rerank_with_tests: bool = _search_default("rerank_with_tests")
    stop_when_solved: bool = _search_default("stop_when_solved")

    @field_validator("widen")
    @classmethod
    def _widen_needs_mcts(cls, widen: bool, info: ValidationInfo) -> bool:
        return check_widen(widen, info.data.get("strategy"))

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
        options = self.model_dump(include={*SEARCH_OPTIONS, *SEARCH_SWITCHES}, exclude_none=True)
        # the server's cap, within SearchConfig's own bound (an OpenAI top-level max_tokens has no such bound)
        max_new_tokens = min(limits.max_new_tokens, _bound("max_tokens", "le"))
        if "max_tokens" in options:
            options["max_tokens"] = cap("max_tokens", options["max_tokens"], max_new_tokens, None)
        else:
            options["max_tokens"] = min(SearchConfig().max_tokens, max_new_tokens)
        config = SearchConfig(budget=budget, record_trace=record_trace, **options)
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
    max_tokens: int | None = Field(default=None, ge=1, description="new tokens per completion; with `search`: per policy request"
                                   " of the search when search.max_tokens is unset (capped like it, named in budget_capped)")
    temperature: float = Field(default=1.0, ge=0, le=2, description="with `search`: the search's when search.temperature is unset")
    top_p: float = Field(default=1.0, gt=0, le=1, description="with `search`: the search's when search.top_p is unset")
    n: int = Field(default=1, ge=1, le=64, description="completions; with `search`: the best n distinct programs")
    stop: StopText | Annotated[list[StopText], Field(max_length=16)] | None = Field(
        default=None, description="stop sequences (non-empty strings; an empty one made the engine fail with a 500)")
    seed: Seed | None = Field(default=None, description="with `search`: the search's when search.seed is unset")
    stream: bool = False
    stream_options: StreamOptions | None = None
    search: SearchSpec | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def search_spec(self) -> SearchSpec:
        """The ``search`` object with the top-level sampling fields the client set applied where it
        leaves them unset: ``temperature``, ``top_p``, ``seed`` and ``max_tokens`` (chat:
        ``max_completion_tokens`` too) then bound the search's policy requests as the search's
        own would (``max_tokens`` capped by the server and named in ``budget_capped``)."""
        assert self.search is not None
        given: dict[str, Any] = {name: getattr(self, name) for name in ("temperature", "top_p", "seed") if name in self.model_fields_set}
        tokens = self.max_tokens if self.max_tokens is not None else getattr(self, "max_completion_tokens", None)
        if tokens is not None:
            given["max_tokens"] = tokens
        return self.search.model_copy(update={k: v for k, v in given.items() if getattr(self.search, k) is None})

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
    programs: list[str] = Field(
        default_factory=list,
        description="per choice, in order, the program the sandbox runs: the choice's generated code with the problem's"
        " starter code (imports, helpers) put around it; the choice's text is the generated code alone")


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
