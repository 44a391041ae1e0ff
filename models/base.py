"""The two interfaces the search engine and the training jobs talk to: `Policy` and `ValueModel`,
and the optional capabilities some engines add, as small Protocols checked with ``isinstance``:
`PausablePolicy` (the engine can stop for a value batch on the same CPU cores), `PingablePolicy`
(a health check), `SharedEnginePolicy` (an engine shared by adapter views, shut down by its owner),
`RolloutPolicy` (token ids in and out, a new LoRA adapter version without a restart: the training
jobs' rollouts), `PreparingValueModel` (warms a problem's cache when a search starts) and
`PairScoringValueModel` (scores states of several problems in one call).

Engines implement them (`models.vllm_engine.VLLMPolicy`, `models.hf_engine.HFPolicy`,
`models.value.HFValueModel`); test doubles live in `tests/`, never here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from models.prompting import PromptMode
from tasks import Problem

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampled continuation of a prompt."""

    text: str  # the continuation, without the stop string that ended it
    tokens: int  # generated tokens
    finish_reason: FinishReason
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens served from the engine's prefix cache (0 if unknown)


@dataclass(frozen=True, slots=True)
class SampleDelta:
    """A piece of one of the ``n`` completions of a request, as the engine produces it
    (`StreamingPolicy.stream`). Concatenating the ``text`` of one ``index`` gives that completion."""

    index: int  # which of the n completions (0-based)
    text: str  # text new since this index's previous delta (may be empty: a stop string is held back)
    tokens: int  # tokens new since this index's previous delta
    finish_reason: FinishReason | None  # set on the index's last delta only
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0


class ModelError(RuntimeError):
    """A model call failed but the engine is alive: the request may be retried or failed alone."""


class EngineDeadError(ModelError):
    """The engine is gone: every request fails until the process (or engine) is restarted."""


class CheckpointError(ValueError):
    """A checkpoint directory or manifest is invalid; the message names the file and what is wrong."""


@runtime_checkable
class Policy(Protocol):
    """A causal LM that samples continuations of fully rendered prompts.

    ``version`` identifies the weights (base + adapter) for responses, metrics and traces.
    ``base_model`` names the base model they derive from (a manifest's ``base``, else the folder or
    hub id): what a value model's training policy is matched against. ``tokenizer`` is the HF
    tokenizer (chat template, token counting) used by `models.prompting.render_prompt`;
    ``prompt_mode`` the prompt format the model was measured best with.
    """

    version: str
    base_model: str
    tokenizer: Any
    prompt_mode: PromptMode

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
        """Return ``n`` samples (``temperature == 0`` is greedy). Cancelling the awaiting task aborts
        the engine request. Raises `ModelError` / `EngineDeadError`."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class StreamingPolicy(Protocol):
    """A `Policy` that can hand out its completions token by token (vLLM): what plain OpenAI
    streaming uses. A policy without it streams each completion whole when it is done."""

    def stream(
        self,
        prompt: str,
        *,
        n: int = 1,
        max_tokens: int = 512,
        stop: Sequence[str] = (),
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> AsyncGenerator[SampleDelta, None]:
        """Deltas of the ``n`` completions in the order the engine produces them; every index ends
        with a delta carrying its ``finish_reason``. Closing the iterator early (or cancelling the
        task iterating it) aborts the engine request. Raises `ModelError` / `EngineDeadError`."""
        ...


@runtime_checkable
class ValueModel(Protocol):
    """Scores states (partial or complete programs) of a problem with an estimate in [0, 1] of the
    chance that continuing from the state passes the tests."""

    @property
    def version(self) -> str: ...  # read-only here: a plain attribute or a property satisfies it

    @property
    def policy_base(self) -> str | None:
        """The ``base_model`` of the policy whose rollouts trained it (None: untrained, or unknown)."""
        ...

    async def score(self, problem: Problem, states: Sequence[str]) -> list[float]: ...

    async def close(self) -> None: ...


@runtime_checkable
class PausablePolicy(Protocol):
    """A policy whose engine can hold its scheduler while a value model uses the same CPU cores."""

    @property
    def on_cpu(self) -> bool:
        """True when the engine computes on this machine's CPU cores."""
        ...

    def paused(self) -> AbstractAsyncContextManager[None]:
        """Hold the engine for the block: its requests keep their place and resume afterwards."""
        ...


@runtime_checkable
class PingablePolicy(Protocol):
    """A policy with a health check of its engine."""

    async def ping(self) -> dict[str, Any]:
        """A small status dict; raises `EngineDeadError` when the engine is gone."""
        ...


@runtime_checkable
class SharedEnginePolicy(Protocol):
    """A policy whose engine may be shared by views (adapter hot swap): ``close`` releases this
    view, ``shutdown`` stops the engine for all of them."""

    async def shutdown(self) -> None: ...


@runtime_checkable
class RolloutPolicy(Protocol):
    """A policy the training jobs generate their rollouts with: prompts and completions as token ids
    (the trainer's own tokenization both ways, so the ids it trains on are the ids sampled), and a
    new version of a LoRA adapter taken without restarting the engine."""

    async def sample_tokens(
        self,
        prompt_ids: Sequence[int],
        *,
        n: int = 1,
        max_tokens: int = 512,
        temperature: float = 0.7,
        top_p: float = 1.0,
        stop_token_ids: Sequence[int] = (),
    ) -> list[list[int]]:
        """``n`` completions' token ids (a stop token ends a completion and is kept, like an EOS)."""
        ...

    def with_adapter(self, adapter_dir: str | None, *, version: str, prompt_mode: PromptMode | None = None) -> RolloutPolicy:
        """A view on the same engine sampling with the adapter in ``adapter_dir`` (a folder never
        used before on this engine is a new adapter version)."""
        ...

    async def load_adapter(self) -> None:
        """Load this view's adapter into the engine now (else its first request does)."""
        ...

    async def load_linear_weights(self, path: str) -> int:
        """Replace the engine's own weights of the linear layers in the safetensors file ``path``
        (every view samples with them); the number of layers replaced."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class PreparingValueModel(Protocol):
    """A value model that can warm its cache for a problem before its first states arrive."""

    async def prepare(self, problem: Problem) -> None: ...


@runtime_checkable
class PairScoringValueModel(Protocol):
    """A value model that scores states of several problems in one call (shared forward passes)."""

    async def score_pairs(self, pairs: Sequence[tuple[Problem, str]]) -> list[float]: ...


def encode_prompt(tokenizer: Any, prompt: str, *, n: int, max_model_len: int) -> tuple[list[int], int]:
    """The prompt's token ids and the room left for new tokens; `ModelError` for a request no
    engine can serve (``n < 1``, a prompt that fills the context). Both policy engines use it."""
    if n < 1:
        raise ModelError(f"n must be >= 1 (got {n})")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    room = max_model_len - len(ids)
    if room < 1:
        raise ModelError(f"prompt of {len(ids)} tokens leaves no room within max_model_len={max_model_len}")
    return ids, room
