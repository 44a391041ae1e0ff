"""Admission control: a bound on running searches and on requests waiting for one.

`AdmissionController.slot(wait_s=...)` is an async context manager: it enters at once while fewer
than ``max_active`` requests run, waits (FIFO) while fewer than ``max_queued`` wait, and otherwise
raises `Overloaded` (429) with a Retry-After estimated from recent request durations. A request
waits at most ``wait_s`` (its share of its deadline for waiting, `server.services`): then it gets
the same 429 (nothing ran). While the server drains (shutdown) new requests get
`Unavailable` (503). Gauges and the ``rejected_requests`` counter (reasons ``queue_full``,
``deadline``, ``draining``) follow every change.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from server.errors import Overloaded, Unavailable
from server.metrics import Metrics


class AdmissionController:
    def __init__(self, *, max_active: int, max_queued: int, metrics: Metrics):
        self.max_active = max_active
        self.max_queued = max_queued
        self._metrics = metrics
        self._semaphore = asyncio.Semaphore(max_active)
        self.active = 0
        self.queued = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._mean_s = 5.0  # running mean of slot hold times, for Retry-After

    def _publish(self) -> None:
        self._metrics.active_searches.set(self.active)
        self._metrics.queue_depth.set(self.queued)
        if self.active == 0 and self.queued == 0:
            self._idle.set()
        else:
            self._idle.clear()

    def retry_after_s(self) -> int:
        waves = (self.queued + self.active) / self.max_active
        return max(1, min(120, math.ceil(waves * self._mean_s)))

    def deadline_passed(self, waited_s: float) -> Overloaded:
        """The 429 of a request that could not start within its share of its deadline (counted as ``deadline``)."""
        self._metrics.rejected_requests.labels("deadline").inc()
        return Overloaded(
            f"no search slot freed within the request's share of its deadline for waiting ({waited_s:.1f} s; "
            f"{self.active} running, {self.queued} queued); nothing ran", retry_after_s=self.retry_after_s())

    @asynccontextmanager
    async def slot(self, *, wait_s: float | None = None) -> AsyncIterator[None]:
        """A running slot, waited for at most ``wait_s`` seconds (None: as long as it takes)."""
        if self.draining:
            self._metrics.rejected_requests.labels("draining").inc()
            raise Unavailable("the server is shutting down", retry_after_s=5)
        if self.active >= self.max_active and self.queued >= self.max_queued:
            self._metrics.rejected_requests.labels("queue_full").inc()
            raise Overloaded(
                f"server busy: {self.active} searches running and {self.queued} queued (limits "
                f"{self.max_active}/{self.max_queued})",
                retry_after_s=self.retry_after_s(),
            )
        if wait_s is not None and wait_s <= 0:
            raise self.deadline_passed(0.0)
        self.queued += 1
        self._publish()
        started = time.monotonic()
        try:
            async with asyncio.timeout(wait_s):
                await self._semaphore.acquire()
        except TimeoutError:
            raise self.deadline_passed(time.monotonic() - started) from None
        finally:
            self.queued -= 1
            self._publish()
        self.active += 1
        self._publish()
        start = time.monotonic()
        try:
            yield
        finally:
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - start)
            self.active -= 1
            self._semaphore.release()
            self._publish()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for the admitted ones; True when all finished in time."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False
