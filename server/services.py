"""The services one app holds, and how a request runs a search on them.

`Services` bundles the `ModelRegistry` (active model pair, hot swap), the sandbox (metered), the
`AdmissionController` and the `Metrics`. `build_services(settings)` makes the real ones (models,
search and sandbox imported there); tests pass their own to `server.app.build_app`.

Deadlines are wall time from the request's arrival (`RequestState`, recorded by the app's
middleware): `Services.hold` waits for an admission slot for at most ``queue_wait_share`` of the
deadline (then 429 ``overloaded``: nothing ran), and `Services.run_search` gives the search what is
left of it as its ``budget.deadline_s``, so time spent queued counts. `Services.supervise` awaits a request's work
(a search, plain sampling) as a task and cancels it - and so every engine request it has in
flight - when the client disconnects, when a safety-net time passes, or when the request itself is
cancelled; `Services.run_search` is the path of every search on top of it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from fastapi import Request
from starlette.types import Scope

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
REQUEST_STATE_KEY = "restrl.request"  # the ASGI scope key of a request's `RequestState`
T = TypeVar("T")


@dataclass
class RequestState:
    """What the server knows about one HTTP request beyond its body: put in the ASGI scope by the
    app's outermost middleware, read by `Services` and the request metrics."""

    arrived: float = field(default_factory=time.monotonic)  # when the server received the request
    admitted: float | None = None  # when it got its admission slot
    disconnected: bool = False  # the client went away before its answer was complete

    @property
    def queued_s(self) -> float:
        return 0.0 if self.admitted is None else self.admitted - self.arrived

    def left_s(self, deadline_s: float) -> float:
        """What is left of a deadline counted from arrival."""
        return deadline_s - (time.monotonic() - self.arrived)


def request_state(scope: Scope) -> RequestState:
    """The request's `RequestState` (a fresh one when no middleware recorded it: the app mounted
    without `server.app`'s middleware)."""
    state = scope.get(REQUEST_STATE_KEY)
    if state is None:
        state = scope[REQUEST_STATE_KEY] = RequestState()
    return state


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

    async def hold(self, request: Request, *, deadline_s: float | None) -> tuple[AsyncExitStack, ModelPair]:
        """Admission slot + the active pair, held until the returned stack is closed (a streamed
        response closes it when its stream ends). The slot is waited for at most ``queue_wait_share``
        of ``deadline_s`` (counted from the request's arrival), and not after the client has gone
        (499). Raises 429/503 before anything is held."""
        state = request_state(request.scope)
        stack = AsyncExitStack()
        try:
            # at most a share of the deadline in the queue: a search that starts has the rest (a queue full
            # of requests that each get a sliver of time would answer nothing, slowly)
            wait_s = None if deadline_s is None else state.left_s(deadline_s * self.settings.queue_wait_share)
            entering = asyncio.ensure_future(stack.enter_async_context(self.admission.slot(wait_s=wait_s)))
            try:
                while not (await asyncio.wait({entering}, timeout=DISCONNECT_POLL_S))[0]:
                    if state.disconnected or await request.is_disconnected():  # left while queued: give the place up
                        raise ClientDisconnected("the client disconnected while the request waited for a slot")
            finally:
                if not entering.done():
                    entering.cancel()
                    await asyncio.gather(entering, return_exceptions=True)
            entering.result()
            state.admitted = time.monotonic()
            if deadline_s is not None and state.left_s(deadline_s) <= 0:  # admitted too late to do anything
                raise self.admission.deadline_passed(state.queued_s)
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
    async def supervise(self, request: Request, work: Awaitable[T], *, what: str, give_up_at: float | None = None,
                        on_cancel: Callable[[str], None] | None = None) -> T:
        """Await ``work`` as a task; cancel it (and so its engine requests) when the client
        disconnects (raises `ClientDisconnected`: a 499), when the monotonic time ``give_up_at``
        passes (`asyncio.TimeoutError`: a 504) or when this request is cancelled (a stream closed,
        shutdown). ``on_cancel`` gets the reason: ``disconnect``, ``deadline`` or ``cancelled``."""
        state = request_state(request.scope)
        task = asyncio.ensure_future(work)
        reason = ""
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    return task.result()
                if state.disconnected or await request.is_disconnected():
                    reason = "disconnect"
                    raise ClientDisconnected(f"the client disconnected; the {what} was cancelled")
                if give_up_at is not None and time.monotonic() > give_up_at:
                    reason = "deadline"
                    raise asyncio.TimeoutError(f"the {what} overran its deadline by {DEADLINE_GRACE_S:.0f} s")
        except BaseException:
            if not task.done():
                # cancelled from outside: a closed SSE stream whose client left counts as a disconnect
                reason = reason or ("disconnect" if state.disconnected else "cancelled")
                task.cancel()
                if on_cancel is not None:
                    on_cancel(reason)
                logger.info("%s cancelled (%s)", what, reason)  # before the await: it may be cancelled too
                await asyncio.gather(task, return_exceptions=True)
            raise

    async def run_search(
        self,
        request: Request,
        pair: ModelPair,
        problem: Problem,
        config: SearchConfig,
        *,
        on_progress: Callable[[SearchProgress], Awaitable[None] | None] | None = None,
    ) -> SearchResult:
        """Run one search on ``pair`` within what is left of its deadline (counted from the
        request's arrival); cancelled on client disconnect, or past the deadline plus a grace
        period (the search's own deadline normally stops it first, with a result)."""
        self.check_value(pair)
        state = request_state(request.scope)
        # `hold` admitted it with time left; a search with none left stops at once with stop reason "deadline"
        left = max(state.left_s(config.budget.deadline_s or self.settings.max_deadline_s), 1e-3)
        config = config.model_copy(update={"budget": config.budget.model_copy(update={"deadline_s": left})})
        sandbox = self.sandbox if config.rerank_with_tests else None
        result = await self.supervise(
            request, self.search_fn(problem, pair.policy, pair.value, config, sandbox=sandbox, on_progress=on_progress),
            what=f"search {problem.id}", give_up_at=time.monotonic() + left + DEADLINE_GRACE_S,
            on_cancel=lambda reason: self.metrics.searches_cancelled.labels(reason).inc())
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
    active, queued, chosen = settings.admission_limits()
    if chosen != "set":
        logger.info("admission: %d concurrent searches, %d queued (%s; RESTRL_MAX_CONCURRENT_SEARCHES and RESTRL_MAX_QUEUED"
                    " override)", active, queued, chosen)
    admission = AdmissionController(max_active=active, max_queued=queued, metrics=metrics)
    return Services(settings=settings, registry=registry, admission=admission, metrics=metrics,
                    search_fn=search_fn, sandbox=MeteredSandbox(sandbox, metrics) if sandbox is not None else None)
