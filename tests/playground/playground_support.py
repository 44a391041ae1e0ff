"""Helpers of the playground tests: the double server they talk to, the browser settings.

The browser is Debian's `chromium` driven by Playwright (never a downloaded browser); the browser
tests skip with a reason when either is missing. `SolveDouble` is a test double of the server's
``/v1/solve`` route only: it validates requests with the real wire protocol and error handlers
(`server.protocol`, `server.errors`), serves the real playground router, and replays SSE streams
recorded from a live `restrl serve` (``data/*.sse``) so the page can be driven fast and
deterministically. The live end-to-end test (test_playground_live.py) uses the real server.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from server import playground
from server.errors import Unauthorized, install_error_handlers
from server.protocol import SolveRequest

CHROMIUM = os.environ.get("RESTRL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DATA = Path(__file__).parent / "data"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def recorded_events(name: str) -> list[str]:
    """The SSE events of ``data/<name>.sse``, each with its terminating blank line."""
    text = (DATA / f"{name}.sse").read_text()
    return [block + "\n\n" for block in text.split("\n\n") if block.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_same_origin(urls: list[str], base_url: str) -> None:
    """Every URL the page requested is on the page's own origin (data: URLs are inline)."""
    origin = urlsplit(base_url)[:2]
    outside = [u for u in urls if not u.startswith("data:") and urlsplit(u)[:2] != origin]
    assert urls, "the page made no requests at all"
    assert not outside, f"requests left the origin {base_url}: {outside}"


class UvicornThread:
    """An ASGI app served by uvicorn on loopback in a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="playground-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn thread did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class SolveDouble:
    """State of the double ``/v1/solve``: which stream each strategy replays, what it received.

    ``gate`` holds every stream before its final event until a test opens it, so a test can look
    at the page mid-search without any timing assumption.
    """

    def __init__(self) -> None:
        # streams of an earlier test may end after `reset`: they must not count in this one
        self.generation: int = getattr(self, "generation", 0) + 1
        self.streams: dict[str, str] = {"vm_mcts": "vm_mcts", "greedy": "greedy"}
        self.api_key: str | None = None
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.active = 0
        self.max_active = 0
        self.cancelled = 0
        self.gate = threading.Event()
        self.gate.set()
        self.event_delay_s = 0.05
        self.crlf = False  # frame the stream with CRLF line ends and keep-alive comments

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def build_app(self) -> Any:
        app = FastAPI()
        install_error_handlers(app)
        app.include_router(playground.router)
        double = self

        @app.post("/v1/solve")
        async def solve(body: SolveRequest, request: Request) -> Any:
            if double.api_key is not None and request.headers.get("authorization") != f"Bearer {double.api_key}":
                raise Unauthorized()
            double.requests.append(body.model_dump(mode="json"))
            double.headers.append(dict(request.headers))
            events = recorded_events(double.streams[body.strategy])
            if double.crlf:
                events = [": keep-alive\r\n\r\n" + e.replace("\n", "\r\n") for e in events]
            if not body.stream:
                last = events[-1].split("data: ", 1)[1]
                return JSONResponse(json.loads(last))

            async def replay() -> Any:
                generation = double.generation
                double.active += 1
                double.max_active = max(double.max_active, double.active)
                finished = False
                try:
                    for i, event in enumerate(events):
                        if i == len(events) - 1:
                            while not double.gate.is_set():
                                await asyncio.sleep(0.02)
                        half = len(event) // 2  # split events across chunks: the page's parser must join them
                        yield event[:half]
                        await asyncio.sleep(0.005)
                        yield event[half:]
                        await asyncio.sleep(double.event_delay_s)
                    finished = True
                finally:
                    if generation == double.generation:
                        double.active -= 1
                        if not finished:
                            double.cancelled += 1

            return StreamingResponse(replay(), media_type="text/event-stream")

        return app


class PageRecorder:
    """A page plus every URL it requested."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.urls: list[str] = []
        page.on("request", lambda req: self.urls.append(req.url))


def save_screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
