"""OpenAI-style streaming (``stream: true``) of ``/v1/completions`` and ``/v1/chat/completions``.

`Chunker` writes the ``data:`` chunks of both formats (``text_completion`` and
``chat.completion.chunk``; with ``stream_options.include_usage`` every chunk carries
``"usage": null`` and a last chunk with empty ``choices`` carries the usage, as OpenAI does).
`plain_stream` streams plain sampling token by token: the prompts' `models.base.StreamingPolicy`
streams run at once (`merge`) and every delta is sent as the engine produces it (a policy without
``stream``, e.g. ``engine=hf``, sends each completion whole when it is done), then the usage chunk,
then ``data: [DONE]``. When the client goes away the stream is cancelled, which closes the engine
streams and so aborts their engine requests. `Usage` counts tokens the same way for the streamed
and the plain JSON answers.

`search_events` is the one way a search is streamed, by ``/v1/solve`` (SSE ``progress`` and
``result`` events) and by the OpenAI routes (progress chunks, then the programs through the same
`Chunker`): the search runs as a task, its progress comes out as it is made, then its result (or
its error); closing the stream cancels the search and its engine requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Literal, TypeVar

from fastapi import Request

from models.base import Policy, Sample, SampleDelta, StreamingPolicy
from search.types import SearchConfig, SearchProgress, SearchResult
from server import sse
from server.errors import to_api_error
from server.metrics import Metrics
from server.protocol import UsageInfo
from server.registry import ModelPair
from server.services import Services, progress_forwarder
from tasks import Problem

Kind = Literal["text_completion", "chat.completion"]
T = TypeVar("T")


class Chunker:
    """The chunks of one streamed response."""

    def __init__(self, kind: Kind, request_id: str, model: str, *, include_usage: bool) -> None:
        self.kind = kind
        self.request_id = request_id
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time())
        self.object = "text_completion" if kind == "text_completion" else "chat.completion.chunk"

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body: dict[str, Any] = {"id": self.request_id, "object": self.object, "created": self.created,
                                "model": self.model, "choices": choices}
        if self.include_usage:
            body["usage"] = None  # OpenAI: null on every chunk but the last
        body.update(extra)
        return sse.data(body)

    def piece(self, index: int, text: str, finish: str | None) -> dict[str, Any]:
        """One choice of a chunk: ``text`` new for completion ``index``."""
        if self.kind == "text_completion":
            return {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
        return {"index": index, "delta": {"content": text} if text else {}, "finish_reason": finish, "logprobs": None}

    def opening(self, index: int) -> dict[str, Any] | None:
        """Chat only: the choice that opens completion ``index`` (its role)."""
        if self.kind == "text_completion":
            return None
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}

    def whole(self, index: int, text: str, finish: str | None) -> list[str]:
        """The chunks of a completion sent in one piece (search results)."""
        opening = self.opening(index)
        chunks = [self.chunk([opening])] if opening is not None else []
        if self.kind == "text_completion":
            return [*chunks, self.chunk([self.piece(index, text, finish)])]
        return [*chunks, self.chunk([self.piece(index, text, None)]), self.chunk([self.piece(index, "", finish)])]

    def error(self, exc: BaseException) -> str:
        err = to_api_error(exc)
        return sse.data({"error": {"type": err.type, "message": err.message}})


class Usage:
    """Tokens of one plain request: each prompt counted once (however many completions it has)."""

    def __init__(self) -> None:
        self.prompt: dict[int, int] = {}
        self.cached: dict[int, int] = {}
        self.completion = 0

    def add(self, prompt_index: int, item: Sample | SampleDelta) -> None:
        self.prompt[prompt_index] = item.prompt_tokens
        self.cached[prompt_index] = max(self.cached.get(prompt_index, 0), item.cached_prompt_tokens)
        self.completion += item.tokens

    def info(self) -> UsageInfo:
        prompt = sum(self.prompt.values())
        return UsageInfo(prompt_tokens=prompt, completion_tokens=self.completion, total_tokens=prompt + self.completion,
                         prompt_tokens_details={"cached_tokens": sum(self.cached.values())})

    def observe(self, metrics: Metrics) -> None:
        metrics.observe_engine(generated=self.completion, prompt=sum(self.prompt.values()), cached=sum(self.cached.values()))


async def deltas(policy: Policy, prompt: str, **sampling: Any) -> AsyncGenerator[SampleDelta, None]:
    """The completions of ``prompt`` as deltas: token by token from a `StreamingPolicy`, else each
    completion in one delta once the policy has sampled them all."""
    if isinstance(policy, StreamingPolicy):
        async with contextlib.aclosing(policy.stream(prompt, **sampling)) as stream:
            async for delta in stream:
                yield delta
        return
    for index, s in enumerate(await policy.sample(prompt, **sampling)):
        yield SampleDelta(index=index, text=s.text, tokens=s.tokens, finish_reason=s.finish_reason,
                          prompt_tokens=s.prompt_tokens, cached_prompt_tokens=s.cached_prompt_tokens)


async def merge(iterators: Sequence[AsyncIterator[T]]) -> AsyncGenerator[tuple[int, T], None]:
    """The items of several async iterators as they come, with the index of their iterator. The
    first error ends the merge; closing it (or cancelling its consumer) cancels and closes every
    iterator, which aborts their engine requests."""
    pending: dict[asyncio.Future[T], int] = {}
    try:
        pending = {asyncio.ensure_future(anext(it)): i for i, it in enumerate(iterators)}
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    item = future.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(iterators[i]))] = i
                yield i, item
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for it in iterators:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()


async def plain_stream(policy: Policy, prompts: Sequence[str], chunker: Chunker, metrics: Metrics, *, n: int,
                       **sampling: Any) -> AsyncIterator[str]:
    """The SSE body of a streamed plain completion: choice ``prompt_index * n + index`` for each
    completion of each prompt, deltas as the engine produces them, the usage chunk if asked, [DONE].
    An engine error mid-stream is sent as an ``error`` chunk (then [DONE])."""
    usage = Usage()
    opened: set[int] = set()
    try:
        streams = [deltas(policy, prompt, n=n, **sampling) for prompt in prompts]
        async with contextlib.aclosing(merge(streams)) as merged:
            async for prompt_index, delta in merged:
                usage.add(prompt_index, delta)
                index = prompt_index * n + delta.index
                if index not in opened:
                    opened.add(index)
                    opening = chunker.opening(index)
                    if opening is not None:
                        yield chunker.chunk([opening])
                if delta.text or delta.finish_reason is not None:
                    yield chunker.chunk([chunker.piece(index, delta.text, delta.finish_reason)])
    except Exception as exc:
        yield chunker.error(exc)
        yield sse.DONE
        return
    finally:
        usage.observe(metrics)  # what the engine generated, also when the client left mid-stream
    if chunker.include_usage:
        yield chunker.chunk([], usage=usage.info().model_dump())
    yield sse.DONE


async def search_events(services: Services, request: Request, pair: ModelPair, problem: Problem,
                        config: SearchConfig) -> AsyncIterator[SearchProgress | SearchResult | Exception]:
    """One search on ``pair`` as a stream: its progress as it is made, then its result, or the
    error it failed with. Closing the stream cancels the search (and its engine requests)."""
    async with contextlib.AsyncExitStack() as cleanup:
        queue: asyncio.Queue[SearchProgress] = asyncio.Queue()
        task = asyncio.create_task(services.run_search(request, pair, problem, config, on_progress=progress_forwarder(queue)))
        cleanup.push_async_callback(_cancel, task)
        async for progress in _drain(queue, task):
            yield progress
        try:
            result = task.result()
        except Exception as exc:
            yield exc
            return
        yield result


async def _drain(queue: asyncio.Queue[SearchProgress], task: asyncio.Task[SearchResult]) -> AsyncIterator[SearchProgress]:
    """Progress items until ``task`` finishes (then the ones still queued)."""
    while not task.done():
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the stream is closed here (client gone): never leave the getter pending
            got = getter.done()
            if not got:
                getter.cancel()
        if got:
            yield getter.result()
    while not queue.empty():
        yield queue.get_nowait()


async def _cancel(task: asyncio.Task[SearchResult]) -> None:
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
