"""End to end: the playground in headless chromium against a live `restrl serve` with the real model.

Starts ``restrl serve`` on loopback (the embedded SmolLM2 policy on vLLM's CPU build and the
default value model), waits for ``/ready``, then drives the page like a user: greedy and vm_mcts
side by side on one problem with a small budget, the tree and the final programs appear, a
screenshot goes to ``test-artifacts/``; an invalid budget shows the server's own message. Slow
(the server's start alone takes minutes on 2 shared cores): ``RESTRL_SLOW=1``. Set
``RESTRL_PLAYGROUND_URL`` to run it against a server that is already up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playground_support import ARTIFACTS, assert_same_origin, free_port, save_screenshot

expect = pytest.importorskip("playwright.sync_api", reason="playwright not installed").expect

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 900  # first start converts the default model; 2 shared cores
SOLVE_TIMEOUT_MS = 600_000


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            pytest.fail(f"restrl serve exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(url + "ready", timeout=60).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"restrl serve was not ready within {READY_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    """The base URL of a live server: RESTRL_PLAYGROUND_URL, or a `restrl serve` started here."""
    given = os.environ.get("RESTRL_PLAYGROUND_URL")
    if given:
        url = given.rstrip("/") + "/"
        _wait_ready(url, None, None)
        yield url
        return
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "playground-live-server.log"
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "restrl", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--kv-cache-gib", "1", "--max-concurrent-searches", "2"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_ready(url, proc, log)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_side_by_side_on_the_real_model(live_url: str, new_page: Any) -> None:
    rec = new_page(width=1280, height=900)
    page = rec.page
    page.goto(live_url)
    page.check("#compare")
    page.select_option("#strategy", "vm_mcts")
    page.select_option("#strategy-b", "greedy")
    page.fill("#samples", "3")
    page.fill("#max-tokens", "64")
    page.fill("#seed", "1")
    page.focus("#statement")
    page.keyboard.press("Control+Enter")

    vm, greedy = page.locator('.run[data-strategy="vm_mcts"]'), page.locator('.run[data-strategy="greedy"]')
    expect(vm.locator(".tree li.node").first).to_be_visible(timeout=SOLVE_TIMEOUT_MS)
    for panel in (vm, greedy):
        expect(panel.locator(".final")).to_be_visible(timeout=SOLVE_TIMEOUT_MS)
        expect(panel.locator(".run-status")).to_contain_text("Done")
        program = panel.locator(".final-program").inner_text()
        assert program.strip() and not program.startswith("(no program"), program
        assert int(panel.locator('[data-usage="samples"]').inner_text()) >= 1
        assert int(panel.get_attribute("data-progress-events") or 0) >= 1  # progress streamed before the result
        expect(panel.locator(".final-meta")).to_contain_text("models: smollm2")
    assert vm.locator(".tree li.node").count() >= 2  # the root and at least one line
    save_screenshot(page, "playground-live.png")
    assert_same_origin(rec.urls, live_url)


def test_invalid_budget_shows_the_live_servers_message(live_url: str, new_page: Any) -> None:
    rec = new_page()
    page = rec.page
    page.goto(live_url)
    page.fill("#samples", "-1")
    page.click("#run")
    error = page.locator(".run-error")
    expect(error).to_be_visible()
    body = {"problem": {"statement": page.input_value("#statement")}, "budget": {"samples": -1}, "stream": True}
    answer = httpx.post(live_url + "v1/solve", json=body, timeout=30).json()["error"]
    assert answer["field"] == "budget.samples"
    expect(error).to_contain_text(answer["message"])
    expect(page.locator("#samples")).to_have_attribute("aria-invalid", "true")
    save_screenshot(page, "playground-live-error.png")
    assert_same_origin(rec.urls, live_url)
