"""Fixtures of the playground tests: headless chromium, fresh pages, the double server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playground_support import CHROMIUM, CHROMIUM_FLAGS, PageRecorder, SolveDouble, UvicornThread


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """Headless Debian chromium through Playwright; skips when either is missing.

    Module scope: the sync API keeps an event loop running in the main thread while it is
    open, which breaks every later asyncio test if it outlives this directory's modules.
    """
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not installed at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def solve_double() -> Iterator[tuple[SolveDouble, str]]:
    """The double server on loopback: (its state, its base URL)."""
    double = SolveDouble()
    with UvicornThread(double.build_app()) as server:
        yield double, server.url


@pytest.fixture
def new_page(chromium_browser: Any) -> Iterator[Any]:
    """``new_page(width=1280, height=900)`` -> a `PageRecorder`; contexts close after the test."""
    contexts: list[Any] = []

    def make(*, width: int = 1280, height: int = 900) -> PageRecorder:
        context = chromium_browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        return PageRecorder(page)

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def double(solve_double: tuple[SolveDouble, str]) -> Iterator[tuple[SolveDouble, str]]:
    """The module's double server, reset for this test; its gate is left open afterwards."""
    state, url = solve_double
    state.reset()
    try:
        yield state, url
    finally:
        state.gate.set()
