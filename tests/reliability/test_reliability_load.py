"""Bounded load against the real server (`bench.load`): only well-formed 200s and 429s with
Retry-After, nothing left running afterwards; the full 32 x 60 s x 2 run with the resource check
is `slow` (and is the bench: `python -m bench.reliability`)."""

from __future__ import annotations

import httpx
import pytest

from bench.load import ServeProcess, gauge, load_runs, run_load

# RSS / fd tolerance between the ends of two consecutive load runs (the first run warms caches up)
RSS_TOLERANCE_MIB = 64.0
FD_TOLERANCE = 8


async def test_short_load_has_no_unexpected_errors(served: ServeProcess) -> None:
    report = await run_load(served.url, clients=8, duration_s=10, api_key=served.api_key, grace_s=90)
    assert report.unexpected == 0, report.errors
    assert report.requests >= 8 and report.ok + report.overloaded + report.abandoned == report.requests
    assert report.ok >= 1
    assert report.abandoned == 0
    assert report.active_searches_after == 0
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        text = (await client.get("/metrics")).text
    assert gauge(text, "restrl:queue_depth") == 0


@pytest.mark.slow
async def test_full_load_two_runs_no_growth(served: ServeProcess) -> None:
    result = await load_runs(served, clients=32, duration_s=60, runs=2)
    for run in result["runs"]:
        assert run["unexpected"] == 0, run["errors"]
        assert run["active_searches_after"] == 0
        assert run["overloaded"] > 0  # 32 clients exceed 4 running + 16 queued: admission said 429
    growth = result["growth_run1_to_run2"]
    assert growth["server_rss_mib"] <= RSS_TOLERANCE_MIB and growth["engine_rss_mib"] <= RSS_TOLERANCE_MIB, growth
    assert growth["server_fds"] <= FD_TOLERANCE and growth["engine_fds"] <= FD_TOLERANCE, growth
