"""The services one app holds, and how a request runs a search on them.

`Services` bundles the `ModelRegistry` (active model pair, hot swap), the sandbox (metered), the
`AdmissionController` and the `Metrics`. `build_services(settings)` makes the real ones (models,
search and sandbox imported there); tests pass their own to `server.app.build_app`.

`Services.run_search` is the path of every search: it runs the strategy as an asyncio task on the
pair the request holds, forwards progress to a callback, and cancels the task (and so every engine
request of the search) when the client disconnects or the server-side deadline passes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request

from models.base import Policy, ValueModel
from sandbox.api import Job, ProgramRunner
from sandbox.limits import Limits, Verdict
from search.batcher import ValueBatcher
from search.stack import batch_values, value_pauses_engine
from search.types import SearchConfig, SearchProgress, SearchResult
from server.admission import AdmissionController
from server.errors import ClientDisconnected, InvalidRequest
from server.metrics import Metrics
from server.protocol import ServerLimits
from server.registry import ModelLoader, ModelPair, ModelRegistry
from server.settings import Settings
from tasks import Problem, TestCase

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25
DEADLINE_GRACE_S = 30.0  # beyond the budget's own deadline, before the server cancels a search


class SearchFn(Protocol):
    async def __call__(self, problem: Problem, policy: Policy, value: ValueModel | None, config: SearchConfig, *,
                       sandbox: ProgramRunner | None = None,
                       on_progress: Callable[[SearchProgress], Awaitable[None] | None] | None = None) -> SearchResult: ...


class MeteredSandbox:
    """A `ProgramRunner` that delegates to a sandbox and counts every verdict's status in
    `restrl:sandbox_verdicts_total`."""

    def __init__(self, sandbox: ProgramRunner, metrics: Metrics):
        self._sandbox = sandbox
        self._metrics = metrics

    def _count(self, verdicts: Sequence[Verdict]) -> None:
        for verdict in verdicts:
            self._metrics.sandbox_verdicts.labels(str(verdict.status)).inc()

    async def arun(self, program: str, tests: Sequence[TestCase], limits: Limits | None = None, *,
                   entry_point: str | None = None) -> Verdict:
        verdict = await self._sandbox.arun(program, tests, limits, entry_point=entry_point)
        self._count([verdict])
        return verdict

    async def run_many(self, jobs: Sequence[Job], limits: Limits | None = None, *,
                       entry_point: str | None = None) -> list[Verdict]:
        verdicts = await self._sandbox.run_many(jobs, limits, entry_point=entry_point)
        self._count(verdicts)
        return verdicts

    def capabilities(self) -> dict[str, Any]:
        return self._sandbox.capabilities()

    def close(self) -> None:
        self._sandbox.close()


@dataclass
class Services:
    settings: Settings
    registry: ModelRegistry
    admission: AdmissionController
    metrics: Metrics
    search_fn: SearchFn
    sandbox: MeteredSandbox | None = None  # None: re-ranking with tests unavailable
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    ready_cache: tuple[float, int, dict[str, Any]] | None = None  # (time, pair id, report)
    engine_dead: str | None = None  # set by the app's engine watchdog: why the policy engine died

    @property
    def limits(self) -> ServerLimits:
        s = self.settings
        return ServerLimits(max_samples=s.max_samples, max_tokens_budget=s.max_tokens_budget,
                            max_deadline_s=s.max_deadline_s, max_new_tokens=s.max_new_tokens)

    async def hold(self) -> tuple[AsyncExitStack, ModelPair]:
        """Admission slot + the active pair, held until the returned stack is closed (a streamed
        response closes it when its stream ends). Raises 429/503 before anything is held."""
        stack = AsyncExitStack()
        try:
            await stack.enter_async_context(self.admission.slot())
            pair = await stack.enter_async_context(self.registry.acquire())
        except BaseException:
            await stack.aclose()
            raise
        return stack, pair

    def check_value(self, pair: ModelPair | None = None) -> None:
        """400 when the pair's value model may not guide its policy (`search.stack`'s pairing
        rule): every strategy ranks by it. ``pair``: the held one (default: the active one)."""
        pair = pair or self.registry.active
        if pair is None or pair.match.allowed:
            return
        raise InvalidRequest(f"searches are refused on this server: {pair.match.message}. Set RESTRL_VALUE to a value model"
                             " trained on this policy's rollouts (restrl train collect-values, then restrl train value), or"
                             " RESTRL_VALUE__ANY_POLICY=true to search with this one anyway; plain completions (no 'search')"
                             " work", field="strategy")

    async def run_search(
        self,
        request: Request,
        pair: ModelPair,
        problem: Problem,
        config: SearchConfig,
        *,
        on_progress: Callable[[SearchProgress], Awaitable[None] | None] | None = None,
    ) -> SearchResult:
        """Run one search on ``pair``; cancelled on client disconnect or past the deadline."""
        self.check_value(pair)
        sandbox = self.sandbox if config.rerank_with_tests else None
        task = asyncio.create_task(
            self.search_fn(problem, pair.policy, pair.value, config, sandbox=sandbox, on_progress=on_progress)
        )
        limit = (config.budget.deadline_s or self.settings.max_deadline_s) + DEADLINE_GRACE_S
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + limit
        reason = "error"
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    result = task.result()
                    break
                if await request.is_disconnected():
                    reason = "disconnect"
                    raise ClientDisconnected("the client disconnected; the search was cancelled")
                if loop.time() > give_up_at:
                    reason = "deadline"
                    raise asyncio.TimeoutError(f"search exceeded {limit:.0f}s")
        except BaseException:
            if not task.done():
                if reason == "error":
                    reason = "cancelled"  # the request itself was cancelled (stream closed, shutdown)
                task.cancel()
                self.metrics.searches_cancelled.labels(reason).inc()
                logger.info("search %s cancelled (%s)", problem.id, reason)  # before the await: it may be cancelled too
                await asyncio.gather(task, return_exceptions=True)
            raise
        self.metrics.observe_search(result)  # `search` logs the one summary line of the search
        return result


def progress_forwarder(queue: asyncio.Queue[SearchProgress]) -> Callable[[SearchProgress], None]:
    """An ``on_progress`` callback that puts progress into a queue without blocking the search."""

    def forward(progress: SearchProgress) -> None:
        queue.put_nowait(progress)

    return forward


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def assemble_services(settings: Settings, *, loader: ModelLoader, search_fn: SearchFn, sandbox: ProgramRunner | None = None,
                      metrics: Metrics | None = None) -> Services:
    """Services around a model loader: metrics, registry (value calls batched by the stack's
    `ValueBatcher`, pausing the engine per the CPU-sharing rule), admission control, and the
    sandbox wrapped to count verdicts."""
    metrics = metrics or Metrics()

    pause = value_pauses_engine(settings.policy, settings.value)

    def batcher(value: ValueModel) -> ValueBatcher:
        return batch_values(value, settings.value, on_batch=metrics.value_batch_size.observe,
                            hold=registry.policy_paused if pause else None)

    registry = ModelRegistry(loader, metrics, batcher_factory=batcher, probe_timeout_s=settings.ready_timeout_s)
    admission = AdmissionController(max_active=settings.max_concurrent_searches, max_queued=settings.max_queued,
                                    metrics=metrics)
    return Services(settings=settings, registry=registry, admission=admission, metrics=metrics,
                    search_fn=search_fn, sandbox=MeteredSandbox(sandbox, metrics) if sandbox is not None else None)
