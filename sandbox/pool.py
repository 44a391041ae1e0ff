"""`Sandbox`: a bounded pool of isolated worker processes that run untrusted programs against tests.

Each worker is a separate ``python -I sandbox/_worker.py`` process (never the caller's process),
started with a scrubbed environment and talking over a pipe. A run takes one idle worker, which
forks a fresh, isolated child per program (``mode="forkserver"``, the default: the worker has
already imported the harness and the usual stdlib, so a run costs a fork, not an interpreter start)
or execs a fresh ``python -I -S`` in that child (``mode="spawn"``: the same isolation, a full
interpreter start per program, ~10x the CPU; see ``bench/sandbox.py``). The worker hands each
job to its child unparsed, so no run can find an earlier run's program or tests in its memory, and
the expected values of call and stdio tests never leave this process (see `Sandbox._payload`):
the worker reports what it observed and this process decides every verdict (`sandbox._verdict`).
Nothing a program does raises here: a program that breaks the result protocol gets an ``error``
verdict, a failing worker an ``infra_error`` for its runs only, and the worker is replaced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from sandbox._verdict import decide, result_cap
from sandbox.api import Job, SandboxConfig, SandboxMode
from sandbox.limits import Limits, Verdict
from tasks.problem import TestCase

logger = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("_worker.py")
_STARTUP_TIMEOUT_S = 60.0
_JUDGED_HERE = ("call", "stdio")  # test kinds whose expected values never leave this process
_MAX_BATCH = 8  # runs per round trip in run_many
_RESPONSE_MARGIN_S = 30.0  # beyond the wall limit: the worker's own cleanup, a loaded machine
_MAX_FRAME = 64 << 20  # the largest header frame a worker may send


class WorkerDied(RuntimeError):
    """A worker process failed (exited, stopped answering, or broke the protocol)."""


class _Worker:
    """The caller's handle on one worker process."""

    def __init__(self, *, mode: SandboxMode, tmp_mb: int, hide: list[str]) -> None:
        config = {"mode": mode, "tmp_mb": tmp_mb, "hide": hide}
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(WORKER_SCRIPT), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
        hello = self._receive(time.monotonic() + _STARTUP_TIMEOUT_S)
        if not hello.get("ready"):
            self.kill()
            raise WorkerDied(f"worker did not start: {hello}")
        self.capabilities: dict[str, Any] = hello["capabilities"]

    def request(self, payload: dict[str, Any], *, timeout_s: float, raw: bytes = b"") -> dict[str, Any]:
        body = json.dumps(payload).encode()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(struct.pack(">I", len(body)) + body + raw)
            self.proc.stdin.flush()
        except OSError as exc:
            raise WorkerDied(f"cannot write to the worker: {exc}") from exc
        return self._receive(time.monotonic() + timeout_s)

    def batch(
        self, runs: list[dict[str, Any]], raw: bytes, *, timeout_s: float
    ) -> tuple[list[dict[str, Any]], list[bytes], bool]:
        """One batch round trip: (reports, result bytes of each run, worker healthy). Anything
        but the documented answer is a `WorkerDied`."""
        deadline = time.monotonic() + timeout_s
        reply = self.request({"op": "batch", "runs": runs}, timeout_s=timeout_s, raw=raw)
        reports = reply.get("results")
        if not isinstance(reports, list) or len(reports) != len(runs):
            raise WorkerDied("the worker answered a batch with the wrong number of results")
        blobs = []
        for report, run in zip(reports, runs, strict=True):
            size = report.get("result_len") if isinstance(report, dict) else None
            if type(size) is not int or not 0 <= size <= run["result_cap"] + 1:
                raise WorkerDied("the worker sent a malformed report")
            blobs.append(self._read_exact(size, deadline))
        return reports, blobs, reply.get("healthy") is True

    def _receive(self, deadline: float) -> dict[str, Any]:
        header = self._read_exact(4, deadline)
        size = struct.unpack(">I", header)[0]
        if size > _MAX_FRAME:
            raise WorkerDied(f"the worker sent a {size}-byte frame")
        try:
            frame = json.loads(self._read_exact(size, deadline))
        except ValueError as exc:
            raise WorkerDied(f"the worker broke the protocol: {exc}") from exc
        if not isinstance(frame, dict):
            raise WorkerDied("the worker broke the protocol")
        return frame

    def _read_exact(self, size: int, deadline: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = bytearray()
        while len(data) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise WorkerDied("the worker stopped answering")
            chunk = os.read(fd, size - len(data))
            if not chunk:
                raise WorkerDied(f"the worker exited (status {self.proc.poll()})")
            data += chunk
        return bytes(data)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.request({"op": "exit"}, timeout_s=0.0)
        except (WorkerDied, ValueError, OSError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


class Sandbox:
    """Runs programs against tests in isolated processes; thread-safe and asyncio-friendly.

    ``workers`` bounds the concurrency: at most that many programs run at once; further calls wait
    for a free worker. Workers start in ``__init__`` (so `capabilities` and any isolation gap are
    known and logged at start-up) and are restarted after a failure, which the affected run reports
    as ``infra_error``. Use as a context manager or call `close`.

    ``hide``: directories programs must not see (covered by an empty tmpfs in the workers' mount
    namespace, except the Python installation beneath them). Default: the caller's working directory
    and home, where data sets with hidden tests, checkpoints and ``.env`` files tend to live. Add a
    training job's data directory here. ``tmp_mb`` sizes each worker's private /tmp.
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        limits: Limits | None = None,
        mode: SandboxMode = "forkserver",
        tmp_mb: int = 256,
        hide: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.limits = limits or Limits()
        self.mode: SandboxMode = mode
        self._tmp_mb = tmp_mb
        hidden = hide if hide is not None else [os.getcwd(), os.path.expanduser("~")]
        self._hide = [os.path.realpath(p) for p in hidden]
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")
        self._size = workers
        for _ in range(workers):
            self._add_worker(self._start_worker())
        caps = self.capabilities()
        for note in caps.get("notes", []):
            logger.info("sandbox: %s", note)
        for warning in caps.get("warnings", []):
            logger.warning("sandbox isolation gap: %s", warning)
        logger.info(
            "sandbox ready: %d %s workers, netns=%s uid_drop=%s private_tmp=%s",
            workers,
            mode,
            caps.get("netns"),
            caps.get("uid_drop"),
            caps.get("private_tmp"),
        )

    @classmethod
    def open(cls, config: SandboxConfig, *, hide: Sequence[str | os.PathLike[str]] | None = None) -> Sandbox:
        """A pool as ``config`` describes it (``hide``: see the class doc)."""
        return cls(workers=config.workers, limits=config.limits(), mode=config.mode, hide=hide)

    # ---- public API -------------------------------------------------------------------------
    def run(
        self,
        program: str,
        tests: Sequence[TestCase],
        limits: Limits | None = None,
        *,
        entry_point: str | None = None,
    ) -> Verdict:
        """Run ``program`` against ``tests`` (blocking) and return its verdict."""
        limits = limits or self.limits
        return self._run_batch([self._payload(program, tests, limits, entry_point)], limits)[0]

    def _payload(
        self, program: str, tests: Sequence[TestCase], limits: Limits, entry_point: str | None
    ) -> tuple[dict[str, Any], bytes, list[dict[str, Any]]]:
        """The worker's run header, the job bytes it passes unread to the child, and the full
        tests. Call and stdio tests travel WITHOUT their expected values: the child reports what the
        program returned or printed and this process judges it, so no process a program runs in
        (nor its parent) ever holds those values."""
        full = [_test_dict(t) for t in tests]
        sent = [
            {k: v for k, v in t.items() if k != "expected"} if t["kind"] in _JUDGED_HERE else t for t in full
        ]
        job = {
            "program": program,
            "tests": sent,
            "entry_point": entry_point,
            "max_output_bytes": limits.max_output_bytes,
        }
        header = {
            "mode": self.mode,
            "limits": limits.model_dump(),
            "result_cap": result_cap(full, limits.max_output_bytes, limits.max_file_mb),
        }
        return header, json.dumps(job).encode(), full

    def _run_batch(
        self, jobs: list[tuple[dict[str, Any], bytes, list[dict[str, Any]]]], limits: Limits
    ) -> list[Verdict]:
        """Run ``jobs`` (header, job bytes, full tests) one after another on one worker, in one
        round trip. Never raises: a failed worker is an ``infra_error`` for these runs only."""
        started = time.monotonic()
        try:
            return self._run_batch_on_a_worker(jobs, limits, started)
        except Exception as exc:  # a bug of ours: these runs are infra errors, nothing else is lost
            if isinstance(exc, RuntimeError) and self._closed:
                raise
            logger.exception("sandbox batch failed")
            wall = time.monotonic() - started
            return [Verdict.infra_error(f"sandbox error: {exc!r}", wall_s=wall) for _ in jobs]

    def _run_batch_on_a_worker(
        self, jobs: list[tuple[dict[str, Any], bytes, list[dict[str, Any]]]], limits: Limits, started: float
    ) -> list[Verdict]:
        payloads = [{**header, "job_len": len(body)} for header, body, _ in jobs]
        worker = self._take()
        if worker is None:
            return [Verdict.infra_error("no sandbox worker could be started") for _ in payloads]
        healthy = False
        try:
            reports, blobs, healthy = worker.batch(
                payloads,
                b"".join(body for _, body, _ in jobs),
                timeout_s=len(payloads) * limits.wall_s + _RESPONSE_MARGIN_S,
            )
        except WorkerDied as exc:
            logger.error("sandbox worker failed during a run: %s", exc)
            wall = time.monotonic() - started
            return [Verdict.infra_error(f"sandbox worker failed: {exc}", wall_s=wall) for _ in payloads]
        finally:
            if not healthy:
                logger.warning("sandbox worker %d reported a failed cleanup; replacing it", worker.proc.pid)
            self._give_back(worker, healthy=healthy)
        wall = time.monotonic() - started
        limits_dict = limits.model_dump()
        verdicts = []
        for report, blob, (_, _, tests) in zip(reports, blobs, jobs, strict=True):
            try:
                verdicts.append(decide(report, blob, tests, limits_dict, wall_s=wall))
            except Exception as exc:  # never let one run's verdict take the batch down
                logger.exception("sandbox verdict could not be built")
                verdicts.append(Verdict.infra_error(f"verdict could not be built: {exc!r}", wall_s=wall))
        return verdicts

    async def arun(
        self,
        program: str,
        tests: Sequence[TestCase],
        limits: Limits | None = None,
        *,
        entry_point: str | None = None,
    ) -> Verdict:
        """`run` without blocking the event loop. Cancelling the await abandons the result; the
        program itself still runs to its limits in the worker."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, partial(self.run, program, tests, limits, entry_point=entry_point)
        )

    async def run_many(
        self, jobs: Sequence[Job], limits: Limits | None = None, *, entry_point: str | None = None
    ) -> list[Verdict]:
        """Run every ``(program, tests)`` or ``(program, tests, entry_point)`` job, at most
        ``workers`` at a time; verdicts in job order. Long lists go to the workers in small batches
        (one round trip per batch, so a worker never idles waiting for this process)."""
        limits = limits or self.limits
        verdicts: list[Verdict | None] = [None] * len(jobs)
        payloads = []
        for position, job in enumerate(jobs):
            try:
                program, tests = job[0], job[1]
                entry = job[2] if len(job) > 2 else entry_point  # type: ignore[misc]
                payloads.append((position, self._payload(program, tests, limits, entry)))
            except Exception as exc:  # a malformed job fails alone
                logger.error("sandbox job %d is invalid: %s", position, exc)
                verdicts[position] = Verdict.infra_error(f"invalid job: {exc}")
        size = max(1, min(_MAX_BATCH, len(payloads) // (4 * max(1, len(self._all)))))
        loop = asyncio.get_running_loop()
        chunks = [payloads[i : i + size] for i in range(0, len(payloads), size)]
        results = await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, self._run_batch, [p for _, p in chunk], limits)
                for chunk in chunks
            ),
            return_exceptions=True,
        )
        for chunk, result in zip(chunks, results, strict=True):
            for index, (position, _) in enumerate(chunk):
                if isinstance(result, BaseException):
                    verdicts[position] = Verdict.infra_error(f"sandbox error: {result!r}")
                else:
                    verdicts[position] = result[index]
        return [v if v is not None else Verdict.infra_error("no verdict") for v in verdicts]

    def capabilities(self) -> dict[str, Any]:
        """What isolation the workers achieved on this machine (for logs and readiness checks)."""
        with self._lock:
            caps = dict(self._all[0].capabilities) if self._all else {}
        caps["mode"] = self.mode
        caps["workers"] = len(self._all)
        return caps

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._all = self._all, []
        self._executor.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: never leave worker processes behind
        try:
            self.close()
        except Exception:
            pass

    # ---- worker management ------------------------------------------------------------------
    def _start_worker(self) -> _Worker:
        return _Worker(mode=self.mode, tmp_mb=self._tmp_mb, hide=self._hide)

    def _add_worker(self, worker: _Worker) -> None:
        with self._lock:
            self._all.append(worker)
        self._idle.put(worker)

    def _take(self) -> _Worker | None:
        """An idle worker; None when none is left and none can be started (an infra error)."""
        while True:
            if self._closed:
                raise RuntimeError("the sandbox is closed")
            try:
                worker = self._idle.get(timeout=1.0)
            except queue.Empty:
                pass
            else:
                if worker.alive():
                    return worker
                # died while idle (killed, OOM): replace it instead of failing the run with infra_error
                logger.warning("sandbox worker %d died while idle (status %s); restarting it",
                               worker.proc.pid, worker.proc.poll())
                self._give_back(worker, healthy=False)
                continue
            with self._lock:
                missing = len(self._all) < self._size
            if missing:  # a restart failed earlier: try again now
                try:
                    self._add_worker(self._start_worker())
                except (WorkerDied, OSError) as exc:
                    logger.error("no sandbox worker can be started: %s", exc)
                    return None

    def _give_back(self, worker: _Worker, *, healthy: bool) -> None:
        if healthy and worker.alive():
            self._idle.put(worker)
            return
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
            closed = self._closed
        if closed:
            return
        try:
            self._add_worker(self._start_worker())
        except (WorkerDied, OSError) as exc:  # the next run will wait; log loudly
            logger.error("could not restart a sandbox worker: %s", exc)


def _test_dict(test: TestCase | dict[str, Any]) -> dict[str, Any]:
    if isinstance(test, TestCase):
        return test.model_dump()
    return TestCase.model_validate(test).model_dump()
