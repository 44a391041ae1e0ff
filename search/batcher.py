"""`ValueBatcher`: one queue in front of a value model, shared by every search of a process.

In: ``score(problem, states)`` calls from any number of concurrent searches. Out: the same
scores, computed in forward passes of up to ``max_batch`` states. A worker task waits at most
``max_wait_ms`` after the first queued state for more to arrive, then scores what is queued.

If the wrapped model scores pairs (`models.base.PairScoringValueModel`), states of different
problems share one forward pass; otherwise the batch is split per problem
(states of one problem, e.g. the parallel expansions of one search, still share a pass).
A caller cancelled while its states wait is dropped from the queue; a batch already running
finishes for the others. ``max_batch=1`` reproduces the reference's one-state-per-call pattern.

``hold`` (optional) returns an async context manager entered while the queue is scored (one hold
for consecutive batches). With `VLLMPolicy.paused` it time-shares CPU cores between the policy
engine and a value model on the same cores: the engine pauses while the value model scores on all
of them, instead of both running at once and the engine's OpenMP threads stalling on the core the
value model took (`pauses_engine` decides when). If the hold cannot be taken the batch is scored
anyway (and the failure logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from models.base import ModelError, PairScoringValueModel, PreparingValueModel, ValueModel
from models.config import CpuSharing
from tasks import Problem

logger = logging.getLogger(__name__)


def pauses_engine(mode: CpuSharing, *, engine_on_cpu: bool, value_device: str) -> bool:
    """Whether value batches should pause the policy engine (``hold=policy.paused``): "pause" and
    "concurrent" say so; "auto" pauses when both compute on this machine's CPU cores (the vLLM CPU
    build and a value model on ``cpu``), where running at once costs the engine more than the
    value model's batch: its OpenMP threads wait on the cores the value model took."""
    if mode != "auto":
        return mode == "pause"
    return engine_on_cpu and value_device.startswith("cpu")


@dataclass(eq=False, slots=True)
class _Item:
    problem: Problem
    state: str
    future: asyncio.Future[float]


class ValueBatcher:
    """A `ValueModel` that groups ``score`` calls into batched calls of ``value``."""

    def __init__(
        self,
        value: ValueModel,
        *,
        max_batch: int = 64,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
        hold: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.value = value
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.hold = hold
        self.batches = 0  # forward passes issued (statistics for benches and tests)
        self.batched_states = 0
        self.busy_s = 0.0  # wall seconds spent inside the wrapped model's calls
        self.hold_wait_s = 0.0  # wall seconds spent taking the hold (the engine finishing its step)
        self._queue: list[_Item] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def version(self) -> str:  # the wrapped model's version, so responses and traces name it
        return self.value.version

    @property
    def policy_base(self) -> str | None:
        return self.value.policy_base

    async def score(self, problem: Problem, states: Sequence[str]) -> list[float]:
        if self._closed:
            raise ModelError("ValueBatcher is closed")
        if not states:
            return []
        loop = asyncio.get_running_loop()
        items = [_Item(problem, s, loop.create_future()) for s in states]
        self._queue.extend(items)
        self._ensure_worker().set()
        try:
            return list(await asyncio.gather(*(it.future for it in items)))
        finally:
            for it in items:  # cancelled or failed: do not score what nobody waits for
                if not it.future.done():
                    it.future.cancel()

    async def prepare(self, problem: Problem) -> None:
        """Pass a search's start on to the wrapped model's ``prepare`` (warming its cache for the
        problem), when it has one."""
        if isinstance(self.value, PreparingValueModel) and not self._closed:
            await self.value.prepare(problem)

    def _ensure_worker(self) -> asyncio.Event:
        if self._worker is None or self._worker.done() or self._wakeup is None:
            self._wakeup = asyncio.Event()  # bound to the running loop on first use
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="value-batcher")
        return self._wakeup

    async def _run(self) -> None:
        assert self._wakeup is not None
        while not self._closed:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.max_wait_s > 0 and len(self._live()) < self.max_batch:
                await asyncio.sleep(self.max_wait_s)  # let concurrent searches add their states
            if self._live():
                await self._drain()

    async def _drain(self) -> None:
        """Score the queue (and what joins it meanwhile) in batches of up to ``max_batch``, all
        under one hold."""
        held: AbstractAsyncContextManager[Any] | None = None
        if self.hold is not None:
            started = time.perf_counter()
            try:
                held = self.hold()
                await held.__aenter__()
            except Exception:
                held = None
                logger.warning("value batch: could not take the hold; scoring without it", exc_info=True)
            self.hold_wait_s += time.perf_counter() - started
        try:
            while live := self._live():
                batch = live[: self.max_batch]
                taken = set(map(id, batch))
                self._queue = [it for it in live if id(it) not in taken]
                await self._score_batch(batch)
        finally:
            if held is not None:
                try:
                    await held.__aexit__(None, None, None)
                except Exception:
                    logger.error("value batch: releasing the hold failed", exc_info=True)

    def _live(self) -> list[_Item]:
        self._queue = [it for it in self._queue if not it.future.done()]
        return self._queue

    async def _score_batch(self, batch: list[_Item]) -> None:
        self.batches += 1
        self.batched_states += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))
        started = time.perf_counter()
        try:
            if isinstance(self.value, PairScoringValueModel):
                values = list(await self.value.score_pairs([(it.problem, it.state) for it in batch]))
            else:
                by_problem: dict[int, list[_Item]] = {}
                for it in batch:
                    by_problem.setdefault(id(it.problem), []).append(it)
                groups = list(by_problem.values())
                results = await asyncio.gather(
                    *(self.value.score(g[0].problem, [it.state for it in g]) for g in groups)
                )
                scored = {id(it): v for g, vs in zip(groups, results, strict=True) for it, v in zip(g, vs, strict=True)}
                values = [scored[id(it)] for it in batch]
        except asyncio.CancelledError:
            for it in batch:
                if not it.future.done():
                    it.future.cancel()
            raise
        except Exception as exc:  # every waiter of this batch gets the model's error
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        finally:
            self.busy_s += time.perf_counter() - started
        for it, v in zip(batch, values, strict=True):
            if not it.future.done():
                it.future.set_result(float(v))

    async def close(self) -> None:
        """Stop the worker and fail queued calls. The wrapped model stays open (its owner closes it)."""
        self._closed = True
        for it in self._queue:
            if not it.future.done():
                it.future.set_exception(ModelError("ValueBatcher closed"))
        self._queue = []
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
