"""Bounded load generator (issue 9 item 1): a fixed number of clients for a fixed duration against a
real `restrl serve` on loopback, mixing ``greedy``, ``best_of_n`` and ``vm_mcts`` with small budgets.

Each client loops until the duration ends: it posts one ``/v1/solve`` (every third one as an SSE
stream), records the status and latency, and on a 429 waits the server's ``Retry-After`` (capped at
``retry_cap_s``) before its next request. When the duration ends no new request starts; the ones in
flight get ``grace_s`` to finish, then they are cancelled (counted as ``abandoned``, not as errors).
An *unexpected* error is anything but a well-formed 200 (a ``result`` event for streams) or a 429
carrying ``Retry-After``: other statuses, malformed bodies, transport errors, SSE ``error`` events.

`ServeProcess` starts ``restrl serve --port 0`` as a subprocess (the default model on vLLM's CPU
build), waits for ``/ready``, and reads the server's and its children's RSS and open file
descriptors (the EngineCore process, the sandbox workers) with psutil. The reliability tests and
``bench.reliability`` use both.

    python -m bench.load [--clients 32] [--duration 60] [--runs 2] [--url URL --api-key KEY]

Without ``--url`` it starts its own server. Prints a table per run; writes bench/results/load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "load.json"

PROBLEMS = (
    {"statement": "Return the sum of a and b.", "starter_code": "def add(a, b):\n", "entry_point": "add"},
    {"statement": "Return the string s reversed.", "starter_code": "def reverse(s):\n", "entry_point": "reverse"},
    {"statement": "Return the largest element of the non-empty list xs.", "starter_code": "def largest(xs):\n",
     "entry_point": "largest"},
)
# small budgets: one request is seconds of work on an idle 2-core machine
MIX: dict[str, dict[str, Any]] = {
    "greedy": {"strategy": "greedy", "budget": {"samples": 1, "deadline_s": 20}, "max_tokens": 32},
    "best_of_n": {"strategy": "best_of_n", "budget": {"samples": 2, "deadline_s": 20}, "k": 2, "max_tokens": 32},
    "vm_mcts": {"strategy": "vm_mcts", "budget": {"samples": 2, "deadline_s": 20}, "k": 2, "max_tokens": 32},
}
# what a test server is started with (small caps and engine; the admission limits are the defaults)
SERVER_ENV = {"RESTRL_KV_CACHE_GIB": "0.5", "RESTRL_MAX_MODEL_LEN": "2048"}
SERVER_ARGS = ("--max-new-tokens", "64", "--max-samples", "8", "--max-deadline-s", "30", "--max-lora-rank", "8",
               "--drain-timeout-s", "10", "--ready-cache-s", "0")


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 3)


# ---------------------------------------------------------------------- the server process


@dataclass
class ServeProcess:
    """A running ``restrl serve`` subprocess; `start` waits until ``/ready`` answers 200."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    admin_token: str
    api_key: str

    @classmethod
    def start(cls, log_path: Path, *, args: tuple[str, ...] = SERVER_ARGS, env: dict[str, str] | None = None,
              timeout_s: float = 900.0, wait_ready: bool = True) -> ServeProcess:
        admin, key = f"adm-{secrets.token_hex(12)}", f"key-{secrets.token_hex(12)}"
        full_env = {**os.environ, **SERVER_ENV, "RESTRL_ADMIN_TOKEN": admin, "RESTRL_API_KEYS": key,
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "restrl", "serve", "--port", "0", *args], cwd=ROOT,
                                    env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        served = cls(proc=proc, url="", log_path=log_path, admin_token=admin, api_key=key)
        try:
            deadline = time.monotonic() + timeout_s
            while not served.url:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"restrl serve did not start (exit {proc.poll()}):\n{served.log()[-3000:]}")
                match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", served.log())
                served.url = match.group(1) if match else ""
                time.sleep(0.3)
            if wait_ready:
                served.wait_ready(deadline)
        except BaseException:
            served.stop()
            raise
        return served

    def wait_ready(self, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"restrl serve exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            try:
                r = httpx.get(f"{self.url}/ready", timeout=300)
                if r.status_code == 200:
                    return
                last = r.text
                if "load failed" in last:
                    break
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(1.0)
        raise RuntimeError(f"restrl serve never became ready: {last}\n{self.log()[-3000:]}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self) -> list[Any]:
        import psutil

        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def engine_core_pids(self) -> list[int]:
        return [c.pid for c in self.children() if _cmdline(c).startswith("VLLM::EngineCore") or c.name() == "VLLM::EngineCore"]

    def sandbox_worker_pids(self) -> list[int]:
        return [c.pid for c in self.children() if "sandbox/_worker.py" in _cmdline(c)]

    def resources(self) -> dict[str, Any]:
        """RSS (MiB) and open fds of the server process and of its EngineCore child."""
        import psutil

        out: dict[str, Any] = {}
        try:
            main = psutil.Process(self.proc.pid)
            out["server_rss_mib"] = round(main.memory_info().rss / 2**20, 1)
            out["server_fds"] = main.num_fds()
        except psutil.Error:
            pass
        for pid in self.engine_core_pids()[:1]:
            try:
                core = psutil.Process(pid)
                out["engine_rss_mib"] = round(core.memory_info().rss / 2**20, 1)
                out["engine_fds"] = core.num_fds()
            except psutil.Error:
                pass
        return out

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL of the whole process group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything of the group still alive (EngineCore, workers)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)
        return self.proc.returncode


def _cmdline(proc: Any) -> str:
    try:
        return " ".join(proc.cmdline())
    except Exception:  # psutil.Error: gone or a zombie
        return ""


def gauge(metrics_text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", metrics_text, re.MULTILINE)
    return float(match.group(1)) if match else None


async def wait_idle(client: httpx.AsyncClient, timeout_s: float = 60.0) -> float | None:
    """Poll ``/metrics`` until ``restrl:active_searches`` and ``restrl:queue_depth`` are 0; the last value."""
    deadline = time.monotonic() + timeout_s
    active: float | None = None
    while time.monotonic() < deadline:
        text = (await client.get("/metrics")).text
        active, queued = gauge(text, "restrl:active_searches"), gauge(text, "restrl:queue_depth")
        if active == 0 and queued == 0:
            return 0.0
        await asyncio.sleep(0.5)
    return active


# ---------------------------------------------------------------------- the load


@dataclass
class LoadReport:
    clients: int
    duration_s: float
    wall_s: float = 0.0
    requests: int = 0  # finished requests (any outcome) + abandoned
    ok: int = 0
    overloaded: int = 0  # 429 with Retry-After
    unexpected: int = 0
    abandoned: int = 0  # still in flight at the end of the grace period: cancelled by the client
    by_strategy: dict[str, dict[str, int]] = field(default_factory=dict)
    stop_reasons: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    policy_tokens: int = 0
    latency_ok_s: dict[str, float | None] = field(default_factory=dict)
    latency_429_s: dict[str, float | None] = field(default_factory=dict)
    retry_after_s: dict[str, float | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # the first unexpected errors, for the report
    active_searches_after: float | None = None


def _check_ok(body: dict[str, Any]) -> str | None:
    for key in ("usage", "stop_reason", "policy_version", "candidates"):
        if key not in body:
            return f"200 without {key!r}"
    return None


def _last_event(text: str) -> tuple[str, Any]:
    name, data = "message", None
    for block in text.strip().split("\n\n"):
        name, data = "message", None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
    return name, data


@dataclass
class _Tally:
    """What the clients of one load run saw, request by request."""

    report: LoadReport
    ok_lat: list[float] = field(default_factory=list)
    busy_lat: list[float] = field(default_factory=list)
    retry: list[float] = field(default_factory=list)

    def unexpected(self, counts: dict[str, int], message: str) -> None:
        counts["unexpected"] += 1
        self.report.unexpected += 1
        if len(self.report.errors) < 20:
            self.report.errors.append(message[:300])

    def answer(self, strategy: str, stream: bool, r: httpx.Response, latency: float) -> float | None:
        """Count one answer; the Retry-After seconds of a well-formed 429 (else None)."""
        report = self.report
        report.requests += 1
        counts = report.by_strategy.setdefault(strategy, {"ok": 0, "overloaded": 0, "unexpected": 0})
        if r.status_code == 429 and r.headers.get("retry-after", "").isdigit():
            report.overloaded += 1
            counts["overloaded"] += 1
            self.busy_lat.append(latency)
            self.retry.append(float(r.headers["retry-after"]))
            return self.retry[-1]
        problem: str | None = None
        result: Any = None
        if r.status_code != 200:
            problem = f"HTTP {r.status_code}: {r.text[:200]}"
        elif stream:
            name, result = _last_event(r.text)
            problem = None if name == "result" else f"stream ended with {name}: {str(result)[:200]}"
        else:
            result = r.json()
        problem = problem or _check_ok(result)
        if problem is not None:
            self.unexpected(counts, f"{strategy}{' (stream)' if stream else ''}: {problem}")
            return None
        report.ok += 1
        counts["ok"] += 1
        self.ok_lat.append(latency)
        report.stop_reasons[result["stop_reason"]] = report.stop_reasons.get(result["stop_reason"], 0) + 1
        report.samples += result["usage"]["samples"]
        report.policy_tokens += result["usage"]["policy_tokens"]
        return None

    def finish(self) -> None:
        report = self.report
        report.latency_ok_s = {f"p{q}": percentile(self.ok_lat, q / 100) for q in (50, 90, 99)} | {"max": percentile(self.ok_lat, 1.0)}
        report.latency_429_s = {f"p{q}": percentile(self.busy_lat, q / 100) for q in (50, 99)}
        report.retry_after_s = {"min": min(self.retry, default=None), "max": max(self.retry, default=None)}


async def run_load(url: str, *, clients: int, duration_s: float, api_key: str | None = None,
                   grace_s: float | None = None, retry_cap_s: float = 5.0, mix: tuple[str, ...] = tuple(MIX),
                   request_timeout_s: float = 180.0) -> LoadReport:
    """``clients`` concurrent clients for ``duration_s``; returns when every client has stopped."""
    tally = _Tally(LoadReport(clients=clients, duration_s=duration_s))
    report = tally.report
    grace_s = duration_s if grace_s is None else grace_s
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    start = time.monotonic()
    stop_at = start + duration_s

    async def client_loop(index: int, client: httpx.AsyncClient) -> None:
        i = index
        while time.monotonic() < stop_at:
            strategy = mix[i % len(mix)]
            stream = i % 3 == 2
            body = {"problem": PROBLEMS[i % len(PROBLEMS)], **MIX[strategy], "stream": stream}
            i += clients
            t0 = time.monotonic()
            try:
                r = await client.post("/v1/solve", json=body, headers=headers)
            except httpx.HTTPError as exc:
                report.requests += 1
                tally.unexpected(report.by_strategy.setdefault(strategy, {"ok": 0, "overloaded": 0, "unexpected": 0}),
                                 f"{strategy}: transport error {exc!r}")
                continue
            wait = tally.answer(strategy, stream, r, time.monotonic() - t0)
            if wait is not None:
                await asyncio.sleep(max(0.0, min(wait, retry_cap_s, stop_at - time.monotonic())))

    timeout = httpx.Timeout(request_timeout_s, connect=10.0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        tasks = [asyncio.create_task(client_loop(i, client)) for i in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=duration_s + grace_s)
        for task in pending:
            task.cancel()
        report.abandoned = len(pending)
        report.requests += len(pending)
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                tally.unexpected({"unexpected": 0}, f"client crashed: {task.exception()!r}")
        report.wall_s = round(time.monotonic() - start, 2)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        report.active_searches_after = await wait_idle(client)
    tally.finish()
    return report


def print_report(report: LoadReport, title: str) -> None:
    ok = report.latency_ok_s
    print(f"\n{title}: {report.clients} clients x {report.duration_s:.0f} s (wall {report.wall_s:.0f} s)")
    print(f"{'requests':>9} {'200':>6} {'429':>6} {'unexpected':>11} {'abandoned':>10} {'p50 s':>7} {'p90 s':>7} "
          f"{'p99 s':>7} {'active after':>13}")
    print(f"{report.requests:>9} {report.ok:>6} {report.overloaded:>6} {report.unexpected:>11} {report.abandoned:>10} "
          f"{_fmt(ok['p50']):>7} {_fmt(ok['p90']):>7} {_fmt(ok['p99']):>7} {_fmt(report.active_searches_after):>13}")
    for strategy, counts in sorted(report.by_strategy.items()):
        print(f"  {strategy:<10} ok {counts['ok']:>4}  429 {counts['overloaded']:>4}  unexpected {counts['unexpected']:>3}")
    print(f"  stop reasons: {report.stop_reasons}; samples {report.samples}, policy tokens {report.policy_tokens}")
    for error in report.errors[:5]:
        print(f"  ERROR {error}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def growth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 1) for k in after if k in before}


async def load_runs(served: ServeProcess, *, clients: int, duration_s: float, runs: int) -> dict[str, Any]:
    """``runs`` consecutive load runs; resources of the server and EngineCore before and after each."""
    out: dict[str, Any] = {"runs": [], "resources": [served.resources()]}
    for n in range(runs):
        report = await run_load(served.url, clients=clients, duration_s=duration_s, api_key=served.api_key)
        await asyncio.sleep(2.0)  # let the server settle (closed connections, freed buffers)
        out["runs"].append(asdict(report))
        out["resources"].append(served.resources())
        print_report(report, f"run {n + 1}")
    res = out["resources"]
    out["growth_run1_to_run2"] = growth(res[1], res[-1]) if len(res) > 2 else {}
    print(f"\nresources (before, after each run): {res}\ngrowth between the ends of run 1 and the last run: "
          f"{out['growth_run1_to_run2']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--url", default=None, help="a running server (default: start one)")
    parser.add_argument("--api-key", default=os.environ.get("RESTRL_API_KEY"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.time()
    if args.url:
        report = asyncio.run(run_load(args.url, clients=args.clients, duration_s=args.duration, api_key=args.api_key))
        print_report(report, "load")
        result: dict[str, Any] = {"runs": [asdict(report)]}
    else:
        served = ServeProcess.start(Path("/tmp") / f"restrl-load-{os.getpid()}.log")
        try:
            result = asyncio.run(load_runs(served, clients=args.clients, duration_s=args.duration, runs=args.runs))
        finally:
            served.stop()
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()}
    result["command"] = " ".join(["python -m bench.load", *sys.argv[1:]])
    result["started"] = started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
