"""`open_stack`: what every entry point that searches runs on, opened and closed in one place.

In: an `EngineConfig` (the policy), a `ValueConfig` (None: no value model) and a `SandboxConfig`
(None: no sandbox). Out: a `Stack` - the policy engine, the value model behind the shared
`ValueBatcher` (placed beside a vLLM engine on CUDA with its memory accounted for:
`models.placement.place_models`; the batcher pauses the engine for each value batch where both compute on the same CPU
cores: `value_pauses_engine`), and the sandbox - closed in reverse order on exit, engines shut down
explicitly (never left to vLLM's finalizers at interpreter exit). The server, ``restrl eval``,
``collect-values``, the ReST-GRPO sampling stage and the benches all open it here; the server's
registry, which replaces models one side at a time while it runs, uses the same pieces
(`load_value`, `batch_values`, `open_sandbox`, `choose_value`, `value_match`).

The pairing rule. A value model estimates how likely a policy's continuations of a state are to
pass, so it is trained on one policy's rollouts; its manifest names that policy's base model
(`models.base.Policy.base_model`). A value model whose policy has the same base as the served one
(the same model, or an adapter or fine-tune of it) matches. With ``ValueConfig.model`` None a
policy gets the value model shipped for the embedded default policy only when it is of that base;
another policy gets none. A value model trained for another policy, or no value model, makes
value-guided search refused (`ValueMatch.allowed` false: jobs stop with the message, the server
answers such requests with 400) unless ``ValueConfig.any_policy`` says to use it anyway.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from models.base import ModelError, PausablePolicy, Policy, SharedEnginePolicy, ValueModel
from models.config import EngineConfig, ValueConfig, resolve_device
from models.default import DEFAULT_MODEL_BASE
from models.loading import load_policy
from models.placement import place_models
from models.value import cpu_threads, load_value_model, shipped_value_dir
from sandbox import Sandbox, SandboxConfig
from search.batcher import ValueBatcher, pauses_engine
from tasks import Problem

logger = logging.getLogger(__name__)

MatchStatus = Literal["matches", "other_policy", "unknown", "none"]


@dataclass(frozen=True)
class ValueMatch:
    """How a value model fits the policy it guides (see the module doc)."""

    status: MatchStatus  # matches | other_policy (trained for another base) | unknown (no manifest, untrained) | none
    policy_base: str  # the served policy's base model
    trained_for: str | None  # the base model of the policy whose rollouts trained the value model
    allowed: bool  # value-guided search may run
    message: str  # what an operator reads: empty when the value model matches

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "allowed": self.allowed, "policy_base": self.policy_base,
                "value_trained_for": self.trained_for, "message": self.message}


class NoValueModel:
    """The value slot of a policy that has no value model (`choose_value` gave none): every call
    fails with the reason, so that nothing is guided by a model trained for another policy."""

    policy_base: str | None = None

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.version = "none"

    async def score(self, problem: Problem, states: Sequence[str]) -> list[float]:
        raise ModelError(self.reason)

    async def close(self) -> None:
        return None


def choose_value(cfg: ValueConfig, policy_base: str) -> ValueConfig | None:
    """The value model ``cfg`` gives a policy of ``policy_base``: ``cfg`` itself, or None where
    ``cfg`` means the value model shipped for the default policy (``model`` None) and the policy is
    of another base, unless ``any_policy``. Reads no weights."""
    if cfg.model is None and shipped_value_dir(cfg) is not None and policy_base != DEFAULT_MODEL_BASE and not cfg.any_policy:
        return None
    return cfg


def value_match(policy_base: str, value: ValueModel | None, *, any_policy: bool) -> ValueMatch:
    """Whether ``value`` (None: no value model) may guide a policy of ``policy_base``."""
    if value is None or isinstance(value, NoValueModel):
        return ValueMatch("none", policy_base, None, False,
                          f"no value model for the policy {policy_base} (the shipped one was trained for {DEFAULT_MODEL_BASE})")
    return trained_for_match(policy_base, value.policy_base, value.version, any_policy=any_policy)


def trained_for_match(policy_base: str, trained_for: str | None, name: str, *, any_policy: bool) -> ValueMatch:
    """`value_match`'s rule on a value model's recorded training policy (``trained_for``, from its
    manifest) before any weights load; ``name`` names the model in the message."""
    if trained_for is None:
        return ValueMatch("unknown", policy_base, None, True,
                          f"the value model {name} names no training policy (untrained, or no restrl.json)")
    if trained_for == policy_base:
        return ValueMatch("matches", policy_base, trained_for, True, "")
    return ValueMatch("other_policy", policy_base, trained_for, any_policy,
                      f"the value model {name} was trained on rollouts of {trained_for}, not of the policy"
                      f" {policy_base}" + (" (used anyway: any_policy)" if any_policy else ""))


def value_pauses_engine(engine: EngineConfig, value: ValueConfig) -> bool:
    """Whether value batches pause the policy engine (`search.batcher.pauses_engine` on the
    configs). Only vLLM can pause: with ``engine=hf`` the answer is no, whatever the setting."""
    if engine.engine != "vllm":
        if value.cpu_sharing == "pause":
            logger.warning("value cpu_sharing=pause: the %s engine cannot pause; the value model runs beside it", engine.engine)
        return False
    on_cpu = resolve_device("auto") == "cpu"
    return pauses_engine(value.cpu_sharing, engine_on_cpu=on_cpu, value_device=value.resolved_device())


async def load_value(cfg: ValueConfig, *, pauses: bool) -> ValueModel:
    """The value model ``cfg`` names, its CPU threads set by the sharing rule (all the cores where
    its batches pause the engine, else half)."""
    return await load_value_model(cfg.model_copy(update={"threads": cpu_threads(cfg.threads, exclusive=pauses)}))


def batch_values(value: ValueModel, cfg: ValueConfig, *, hold: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> ValueBatcher:
    """The shared batcher in front of ``value`` (``hold``: entered around each run of batches)."""
    return ValueBatcher(value, max_batch=cfg.resolved_batch_max(), max_wait_ms=cfg.batch_wait_ms, on_batch=on_batch, hold=hold)


def open_sandbox(cfg: SandboxConfig, *, hide: Sequence[str | os.PathLike[str]] | None = None) -> Sandbox:
    """A sandbox pool (``hide``: directories its programs must not see; default the working
    directory and home)."""
    return Sandbox.open(cfg, hide=hide)


@dataclass
class Stack:
    """An open stack: what searches run on."""

    policy: Policy
    value: ValueBatcher | None  # what searches call (None: opened without a value model)
    sandbox: Sandbox | None
    match: ValueMatch | None
    pauses_engine: bool


@asynccontextmanager
async def open_stack(engine: EngineConfig, value: ValueConfig | None = None, sandbox: SandboxConfig | None = None, *,
                     sandbox_hide: Sequence[str | os.PathLike[str]] | None = None,
                     on_batch: Callable[[int], None] | None = None) -> AsyncIterator[Stack]:
    """Open the sandbox, the policy and the value model behind its batcher; close them all (in
    reverse order) when the block exits. A value model that may not guide this policy (see the
    module doc) raises `ValueError` saying which setting to change."""
    async with AsyncExitStack() as stack:
        box = open_sandbox(sandbox, hide=sandbox_hide) if sandbox is not None else None
        if box is not None:
            stack.callback(box.close)
        if value is not None:  # the value model's GPU memory accounted for beside a vLLM engine (models.placement)
            engine, value, _ = place_models(engine, value)
        policy = await load_policy(engine)
        # the stack started the engine: it shuts it down, also for views made from this policy
        stack.push_async_callback(policy.shutdown if isinstance(policy, SharedEnginePolicy) else policy.close)
        batcher = match = None
        pause = False
        if value is not None:
            chosen = choose_value(value, policy.base_model)
            raw: ValueModel | None = None
            if chosen is not None:
                pause = value_pauses_engine(engine, chosen)
                raw = await load_value(chosen, pauses=pause)
                stack.push_async_callback(raw.close)
            match = value_match(policy.base_model, raw, any_policy=value.any_policy)
            if not match.allowed or raw is None:
                raise ValueError(f"{match.message}: set value.model to a value model trained for this policy (restrl train"
                                 " collect-values, then restrl train value), or value.any_policy=true to use it anyway")
            if match.message:
                logger.warning("value model: %s", match.message)
            hold = policy.paused if pause and isinstance(policy, PausablePolicy) else None
            batcher = batch_values(raw, value, hold=hold, on_batch=on_batch)
            stack.push_async_callback(batcher.close)
        yield Stack(policy=policy, value=batcher, sandbox=box, match=match, pauses_engine=pause)
