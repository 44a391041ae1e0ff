"""Server-Sent Events: the ``text/event-stream`` framing and a response that releases what the
request held (admission slot, model pair) when the stream ends, however it ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"


def _json(data: Any) -> str:
    if isinstance(data, BaseModel):
        return data.model_dump_json()
    return json.dumps(data, separators=(",", ":"))


def event(name: str, data: Any) -> str:
    """A named event (``/v1/solve``: progress, result, error)."""
    return f"event: {name}\ndata: {_json(data)}\n\n"


def data(payload: Any) -> str:
    """An unnamed ``data:`` line (the OpenAI streaming format)."""
    return f"data: {_json(payload)}\n\n"


class SSEResponse(StreamingResponse):
    def __init__(self, content: AsyncIterator[str], *, on_close: Callable[[], Awaitable[Any]] | None = None):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()  # runs the generator's finally (cancels its search) if it never finished
            if self._on_close is not None:
                await self._on_close()
