"""The active (policy, value) pair, hot swap and rollback.

A `ModelPair` holds a policy, a value model, the `search.ValueBatcher` in front of that value
model, and a reference count. Every request takes the active pair with `ModelRegistry.acquire()`
and keeps it until it finishes, so a swap never changes the models under a running search.

`swap()` loads the new side(s) next to the old ones (a LoRA policy adapter may reuse the running
engine: `models.load_policy(..., reuse=old)`), probes the new pair with one real expansion and one
value call, then makes it active in one assignment. Every pair carries its `search.ValueMatch`
(whether its value model may guide its policy: `search.stack`); a value model that may not is
neither probed nor used, and the log, ``/ready``, ``/admin/models`` and every response's
``value_version`` say so. A new policy of another base with the value left to the settings (no
value source) gets the value model the settings give that policy, as at start-up. The previous pair is *retired*: its models
are closed once its last request releases it (models shared with the new pair stay open). Any
failure closes what was loaded and leaves the old pair serving; the error names the file at fault.
`rollback()` reloads the pair that was active before the last swap.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from models.base import CheckpointError, ModelError, PausablePolicy, Policy, ValueModel
from models.prompting import join_code, render_prompt, root_state
from search.stack import ValueMatch
from server.errors import SwapFailed, Unavailable
from server.metrics import Metrics
from server.protocol import ModelsStatus, PairInfo, SwapEvent
from tasks import Problem

logger = logging.getLogger(__name__)

PROBE_PROBLEM = Problem(
    id="readiness-probe",
    prompt="Write a function add(a, b) that returns the sum of a and b.",
    starter_code="def add(a, b):\n",
    entry_point="add",
)


class ModelLoader(Protocol):
    """Loads models from checkpoint folders (None = the settings' choice); `server.loading`."""

    async def load_policy(self, source: str | None, *, reuse: Policy | None = None) -> Policy: ...

    async def load_value(self, source: str | None, *, policy: Policy) -> ValueModel: ...

    def match(self, policy: Policy, value: ValueModel) -> ValueMatch:
        """Whether ``value`` may guide ``policy`` (`search.stack.value_match`)."""
        ...


BatcherFactory = Callable[[ValueModel], ValueModel]


async def probe(policy: Policy, value: ValueModel | None, *, metrics: Metrics | None = None) -> dict[str, Any]:
    """One real expansion (a short greedy continuation of a fixed problem) and one value call
    (``value`` None: none, the pair's value model may not be used)."""
    start = time.monotonic()
    mode = policy.prompt_mode
    state = root_state(PROBE_PROBLEM, mode)
    prompt = render_prompt(policy.tokenizer, PROBE_PROBLEM, state, mode)
    samples = await policy.sample(prompt, n=1, max_tokens=8, temperature=0.0)
    if len(samples) != 1:
        raise RuntimeError(f"probe expansion returned {len(samples)} samples instead of 1")
    if metrics is not None:
        s = samples[0]
        metrics.observe_engine(generated=s.tokens, prompt=s.prompt_tokens, cached=s.cached_prompt_tokens)
    if value is None:
        return {"expansion_tokens": samples[0].tokens, "value": None, "seconds": round(time.monotonic() - start, 3)}
    scores = await value.score(PROBE_PROBLEM, [join_code(state, samples[0].text)])
    if len(scores) != 1 or not 0.0 <= scores[0] <= 1.0:
        raise RuntimeError(f"probe value call returned {scores!r}, expected one score in [0, 1]")
    return {"expansion_tokens": samples[0].tokens, "value": scores[0], "seconds": round(time.monotonic() - start, 3)}


@dataclass(eq=False)
class ModelPair:
    pair_id: int
    policy: Policy
    value: ValueModel  # the batcher: what searches call
    raw_value: ValueModel
    policy_source: str | None
    value_source: str | None
    match: ValueMatch  # whether the value model may guide the policy
    loaded_at: float = field(default_factory=time.time)
    refs: int = 0
    retired: bool = False

    @property
    def value_version(self) -> str:
        """The value model's version as responses report it: with what it was trained for when
        that is not the served policy's base (or is unknown)."""
        if self.match.status in ("other_policy", "unknown") and self.match.trained_for != self.match.policy_base:
            return f"{self.value.version} (trained for {self.match.trained_for or 'an unknown policy'})"
        return self.value.version

    def info(self) -> PairInfo:
        return PairInfo(pair_id=self.pair_id, policy_version=self.policy.version, value_version=self.value_version,
                        policy_source=self.policy_source, value_source=self.value_source,
                        policy_base=self.match.policy_base, value_trained_for=self.match.trained_for,
                        value_match=self.match.status, searches_allowed=self.match.allowed,
                        value_note=self.match.message, loaded_at=self.loaded_at, in_flight=self.refs)


class ModelRegistry:
    def __init__(self, loader: ModelLoader, metrics: Metrics, *, batcher_factory: BatcherFactory,
                 probe_timeout_s: float = 60.0):
        self._loader = loader
        self._metrics = metrics
        self._batcher_factory = batcher_factory
        self._probe_timeout_s = probe_timeout_s
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self.active: ModelPair | None = None
        self._retired: list[ModelPair] = []
        self._previous: list[tuple[str | None, str | None]] = []  # sources of earlier active pairs
        self.history: list[SwapEvent] = []
        self.load_error: str | None = None

    # ------------------------------------------------------------------ requests

    @asynccontextmanager
    async def policy_paused(self) -> AsyncIterator[None]:
        """Pause the active policy's engine for the block (`VLLMPolicy.paused`; a no-op for a policy
        that cannot pause): the `ValueBatcher` hold of CPU time-sharing. Resolved per batch, so it
        follows policy swaps."""
        pair = self.active
        if pair is None or not isinstance(pair.policy, PausablePolicy):
            yield
            return
        async with pair.policy.paused():
            started = time.perf_counter()
            try:
                yield
            finally:
                self._metrics.engine_paused_seconds.inc(time.perf_counter() - started)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[ModelPair]:
        """The active pair, held (not closed by a swap) until the block exits."""
        pair = self.active
        if pair is None:
            reason = f"model load failed: {self.load_error}" if self.load_error else "models are loading"
            raise Unavailable(reason, retry_after_s=None if self.load_error else 5)
        pair.refs += 1
        try:
            yield pair
        finally:
            pair.refs -= 1
            if pair.retired and pair.refs == 0:
                await self._close_pair(pair)

    # ------------------------------------------------------------------ loading and swapping

    async def load_initial(self, policy: str | None, value: str | None) -> ModelPair:
        try:
            return await self._replace(policy, value, change_policy=True, change_value=True, kind="load")
        except Exception as exc:
            self.load_error = str(exc)
            raise

    async def install(self, policy: Policy, value: ValueModel, *, policy_source: str | None = None,
                      value_source: str | None = None) -> ModelPair:
        """Make already-loaded models the first active pair (probed first). For embedding the app
        next to engines the caller owns; the registry closes them when they are swapped out."""
        if self.active is not None:
            raise RuntimeError("install() is for the first pair; use swap() afterwards")
        batcher = self._batcher_factory(value)
        match = self._loader.match(policy, value)
        await asyncio.wait_for(probe(policy, batcher if match.allowed else None, metrics=self._metrics), self._probe_timeout_s)
        self.active = ModelPair(pair_id=next(self._ids), policy=policy, value=batcher, raw_value=value,
                                policy_source=policy_source, value_source=value_source, match=match)
        self._note(self.active)
        self._metrics.set_active_pair(policy.version, self.active.value_version)
        self._record("load", "ok", policy_source, value_source, "installed", 0.0)
        return self.active

    async def swap(self, *, policy: str | None = None, value: str | None = None) -> ModelPair:
        """Load the given side(s) (an omitted side keeps its model), probe, make active."""
        if policy is None and value is None:
            raise SwapFailed("name a 'policy' and/or a 'value' checkpoint folder", field="policy")
        return await self._replace(policy, value, change_policy=policy is not None,
                                   change_value=value is not None, kind="swap")

    async def rollback(self) -> ModelPair:
        if not self._previous:
            raise SwapFailed("no earlier pair to roll back to")
        policy, value = self._previous[-1]
        pair = await self._replace(policy, value, change_policy=True, change_value=True, kind="rollback")
        return pair

    async def _replace(self, policy_src: str | None, value_src: str | None, *, change_policy: bool,
                       change_value: bool, kind: Literal["load", "swap", "rollback"]) -> ModelPair:
        async with self._lock:
            start = time.monotonic()
            old = self.active
            if old is None and not (change_policy and change_value):
                raise Unavailable("no models loaded yet")
            new_policy: Policy | None = None
            new_value: ValueModel | None = None
            batcher: ValueModel | None = None
            try:
                if change_policy:
                    new_policy = await self._loader.load_policy(policy_src, reuse=old.policy if old else None)
                policy = new_policy if new_policy is not None else old.policy  # type: ignore[union-attr]
                if old is not None and not change_value and old.value_source is None and policy.base_model != old.policy.base_model:
                    change_value, value_src = True, None  # the settings' value model for a policy of another base
                if change_value:
                    new_value = await self._loader.load_value(value_src, policy=policy)
                raw_value = new_value if new_value is not None else old.raw_value  # type: ignore[union-attr]
                batcher = self._batcher_factory(raw_value) if new_value is not None or old is None else old.value
                match = self._loader.match(policy, raw_value)
                result = await asyncio.wait_for(probe(policy, batcher if match.allowed else None, metrics=self._metrics),
                                                self._probe_timeout_s)
            except BaseException as exc:
                for model in (batcher if batcher is not (old.value if old else None) else None, new_value, new_policy):
                    if model is not None:
                        await _close_quietly(model)
                message = _describe_failure(exc, policy_src if change_policy else None, value_src if change_value else None)
                self._record(kind, "failed", policy_src, value_src, message, time.monotonic() - start)
                logger.warning("%s failed, the active pair keeps serving: %s", kind, message,
                               exc_info=not isinstance(exc, (CheckpointError, asyncio.CancelledError)))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise SwapFailed(message) from exc
            pair = ModelPair(
                pair_id=next(self._ids), policy=policy, value=batcher, raw_value=raw_value,
                policy_source=policy_src if change_policy else old.policy_source,  # type: ignore[union-attr]
                value_source=value_src if change_value else old.value_source,  # type: ignore[union-attr]
                match=match,
            )
            self.active = pair  # the swap: new requests take this pair from here on
            self.load_error = None
            self._metrics.set_active_pair(policy.version, pair.value_version)
            if old is not None:
                if kind == "rollback":
                    self._previous.pop()
                else:
                    self._previous.append((old.policy_source, old.value_source))
                old.retired = True
                if old.refs == 0:
                    await self._close_pair(old)
                else:
                    self._retired.append(old)
            seconds = time.monotonic() - start
            note = f"; {match.message}" if match.message else ""
            self._record(kind, "ok", pair.policy_source, pair.value_source,
                         f"policy {policy.version}, value {pair.value_version}, probe {result}{note}", seconds)
            logger.info("%s: pair %d active (policy %s, value %s) in %.2fs", kind, pair.pair_id,
                        policy.version, pair.value_version, seconds)
            self._note(pair)
            return pair

    @staticmethod
    def _note(pair: ModelPair) -> None:
        """Say in the log when the pair's value model does not match its policy."""
        if pair.match.message:
            logger.warning("pair %d: %s%s", pair.pair_id, pair.match.message,
                           "" if pair.match.allowed else "; searches answer 400 until RESTRL_VALUE names a value model"
                           " trained for this policy (or RESTRL_VALUE__ANY_POLICY=true)")

    def _record(self, kind: Literal["load", "swap", "rollback"], result: Literal["ok", "failed"],
                policy: str | None, value: str | None, message: str, seconds: float) -> None:
        self._metrics.swap_events.labels(kind, result).inc()
        self.history.append(SwapEvent(at=time.time(), kind=kind, result=result, policy=policy, value=value,
                                      message=message, seconds=round(seconds, 3)))
        del self.history[:-100]

    async def _close_pair(self, pair: ModelPair) -> None:
        """Close the models of a retired pair that no live pair still uses."""
        if pair in self._retired:
            self._retired.remove(pair)
        live = [p for p in (self.active, *self._retired) if p is not None]
        if not any(p.value is pair.value for p in live):
            await _close_quietly(pair.value)
        if not any(p.raw_value is pair.raw_value for p in live):
            await _close_quietly(pair.raw_value)
        if not any(p.policy is pair.policy for p in live):
            await _close_quietly(pair.policy)
        logger.info("pair %d drained and closed", pair.pair_id)

    async def close(self) -> None:
        """Close every model (shutdown)."""
        pairs = [p for p in (self.active, *self._retired) if p is not None]
        self.active = None
        self._retired = []
        seen: set[int] = set()
        for pair in pairs:
            for model in (pair.value, pair.raw_value, pair.policy):
                if id(model) not in seen:
                    seen.add(id(model))
                    await _close_quietly(model)

    def status(self) -> ModelsStatus:
        return ModelsStatus(active=self.active.info() if self.active else None,
                            draining=[p.info() for p in self._retired], history=list(self.history))


def _describe_failure(exc: BaseException, policy: str | None, value: str | None) -> str:
    """What a client is told (the log has the traceback): our own errors name the file at fault
    inside the checkpoint; other errors (a library's text may name any file of the server) only
    their kind."""
    if isinstance(exc, CheckpointError):
        return str(exc)  # names the file and what is wrong
    if isinstance(exc, asyncio.TimeoutError):
        what = "probe timed out"
    elif isinstance(exc, ModelError):
        what = f"{type(exc).__name__}: {exc}"
    else:
        what = f"{type(exc).__name__} while loading or probing (details in the server log)"
    sources = ", ".join(f"{side} {src}" for side, src in (("policy", policy), ("value", value)) if src)
    return f"{what} ({sources})" if sources else what


async def _close_quietly(model: Policy | ValueModel) -> None:
    try:
        await model.close()
    except Exception:  # closing must never break a swap or a shutdown
        logger.exception("closing %r failed", model)
