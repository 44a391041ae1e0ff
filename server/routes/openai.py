"""OpenAI-compatible ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models``.

Without a ``search`` object a request is plain sampling through the active policy (``n``,
``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``); chat messages go through the
model's chat template. With ``search`` (the official client sends it via ``extra_body``) the prompt
- or the last user message - is the problem statement, the search runs, and the choices are its
best ``n`` programs (by rank). Streams are ``data:`` chunks ending with ``data: [DONE]``; a search
stream also carries its progress in the chunks' ``search`` field.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any, Literal

from fastapi import APIRouter, Request

from models.base import Sample
from models.prompting import render_chat_prompt
from search.types import SearchProgress, SearchResult
from server import sse
from server.deps import STRATEGY_KEY, ApiKey, ServicesDep
from server.errors import InvalidRequest, to_api_error
from server.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    SearchInfo,
    UsageInfo,
    _OpenAIRequest,
    new_id,
)
from server.registry import ModelPair
from server.routes.solve import ERRORS, _cancel, check_rerank, drain_progress
from server.services import Services, progress_forwarder

router = APIRouter(tags=["openai"], dependencies=[ApiKey])

Kind = Literal["text_completion", "chat.completion"]
DEFAULT_MAX_TOKENS = {"text_completion": 16, "chat.completion": None}  # None: the server's cap (OpenAI: context)


@router.get("/v1/models", response_model=ModelList, summary="The active policy (OpenAI format)")
async def list_models(services: ServicesDep) -> ModelList:
    pair = services.registry.active
    if pair is None:
        return ModelList(data=[])
    return ModelList(data=[ModelCard(id=pair.policy.version, created=int(pair.loaded_at),
                                     value_version=pair.value_version)])


@router.post("/v1/completions", response_model=CompletionResponse, responses=ERRORS,
             summary="OpenAI completions; a `search` object decodes with the search")
async def completions(body: CompletionRequest, request: Request, services: ServicesDep) -> Any:
    prompts = body.prompts()
    if body.search is not None and len(prompts) != 1:
        raise InvalidRequest("with `search`, `prompt` must be one problem statement", field="prompt")
    return await _handle(body, "text_completion", request, services, prompts=prompts,
                         statement=prompts[0] if prompts else "")


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS,
             summary="OpenAI chat completions; a `search` object decodes with the search")
async def chat_completions(body: ChatCompletionRequest, request: Request, services: ServicesDep) -> Any:
    users = [m.content for m in body.messages if m.role == "user"]
    if body.search is not None and not users:
        raise InvalidRequest("with `search`, the messages need a user message (the problem statement)", field="messages")
    if body.max_completion_tokens is not None and body.max_tokens is None:
        body = body.model_copy(update={"max_tokens": body.max_completion_tokens})
    return await _handle(body, "chat.completion", request, services, prompts=None,
                         statement=users[-1] if users else "")


async def _handle(body: _OpenAIRequest, kind: Kind, request: Request, services: Services, *,
                  prompts: list[str] | None, statement: str) -> Any:
    request.scope[STRATEGY_KEY] = body.search.strategy if body.search else "none"
    request_id = new_id("cmpl" if kind == "text_completion" else "chatcmpl")
    max_tokens = body.max_tokens or DEFAULT_MAX_TOKENS[kind] or services.settings.max_new_tokens
    if max_tokens > services.settings.max_new_tokens:
        raise InvalidRequest(f"max_tokens is over this server's limit of {services.settings.max_new_tokens}",
                             field="max_tokens")
    if not prompts and kind == "text_completion":
        raise InvalidRequest("prompt must not be empty", field="prompt")
    if body.search is not None:
        return await _search(body, kind, request, services, request_id, statement)
    stack, pair = await services.hold()
    if prompts is None:  # chat
        messages = [m.model_dump() for m in body.messages]  # type: ignore[attr-defined]
        prompts = [render_chat_prompt(pair.policy.tokenizer, messages)]
    if not body.stream:
        async with stack:
            samples = await _sample_all(services, pair, body, prompts, max_tokens)
        return _response(kind, request_id, pair, _choices(samples), _usage_of(samples), None)
    return sse.SSEResponse(_plain_stream(services, pair, body, kind, request_id, prompts, max_tokens),
                           on_close=stack.aclose)


async def _sample_all(services: Services, pair: ModelPair, body: _OpenAIRequest, prompts: list[str],
                      max_tokens: int) -> list[Sample]:
    groups = await asyncio.gather(*(
        pair.policy.sample(p, n=body.n, max_tokens=max_tokens, stop=body.stop_list(), temperature=body.temperature,
                           top_p=body.top_p, seed=body.seed)
        for p in prompts))
    samples = [s for group in groups for s in group]
    services.metrics.observe_engine(generated=sum(s.tokens for s in samples),
                                    prompt=sum(s.prompt_tokens for s in samples),
                                    cached=sum(s.cached_prompt_tokens for s in samples))
    return samples


def _choices(samples: list[Sample]) -> list[tuple[str, str | None]]:
    return [(s.text, s.finish_reason) for s in samples]


def _usage_of(samples: list[Sample]) -> UsageInfo:
    prompt = sum(s.prompt_tokens for s in samples)
    completion = sum(s.tokens for s in samples)
    cached = sum(s.cached_prompt_tokens for s in samples)
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                     prompt_tokens_details={"cached_tokens": cached})


def _response(kind: Kind, request_id: str, pair: ModelPair, choices: list[tuple[str, str | None]],
              usage: UsageInfo, search: SearchInfo | None) -> CompletionResponse | ChatCompletionResponse:
    model = pair.policy.version
    if kind == "text_completion":
        return CompletionResponse(id=request_id, model=model, usage=usage, search=search, choices=[
            CompletionChoice(index=i, text=text, finish_reason=fin) for i, (text, fin) in enumerate(choices)])  # type: ignore[arg-type]
    return ChatCompletionResponse(id=request_id, model=model, usage=usage, search=search, choices=[
        ChatChoice(index=i, message=ChatMessageOut(content=text), finish_reason=fin)  # type: ignore[arg-type]
        for i, (text, fin) in enumerate(choices)])


# ------------------------------------------------------------------ streaming


def _chunker(kind: Kind, request_id: str, model: str) -> Callable[..., dict[str, Any]]:
    created = int(time.time())
    obj = "text_completion" if kind == "text_completion" else "chat.completion.chunk"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": request_id, "object": obj, "created": created, "model": model, "choices": choices, **extra}

    return chunk


def _choice_chunks(kind: Kind, index: int, text: str, finish: str | None) -> list[dict[str, Any]]:
    if kind == "text_completion":
        return [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]
    return [
        {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None},
        {"index": index, "delta": {"content": text}, "finish_reason": None, "logprobs": None},
        {"index": index, "delta": {}, "finish_reason": finish, "logprobs": None},
    ]


async def _plain_stream(services: Services, pair: ModelPair, body: _OpenAIRequest, kind: Kind, request_id: str,
                        prompts: list[str], max_tokens: int) -> AsyncIterator[str]:
    chunk = _chunker(kind, request_id, pair.policy.version)
    try:
        samples = await _sample_all(services, pair, body, prompts, max_tokens)
    except Exception as exc:
        err = to_api_error(exc)
        yield sse.data({"error": {"type": err.type, "message": err.message}})
        yield sse.DONE
        return
    for i, s in enumerate(samples):
        for c in _choice_chunks(kind, i, s.text, s.finish_reason):
            yield sse.data(chunk([c]))
    if body.stream_options is not None and body.stream_options.include_usage:
        yield sse.data(chunk([], usage=_usage_of(samples).model_dump()))
    yield sse.DONE


# ------------------------------------------------------------------ search decoding


def _search_choices(result: SearchResult, n: int) -> list[tuple[str, str | None]]:
    best = [result.program] if result.program is not None else []
    programs = best + [c.program for c in result.candidates]
    unique = list(dict.fromkeys(programs))[:n]
    return [(p, "stop") for p in unique] or [("", "length")]


def _search_info(result: SearchResult, pair: ModelPair, capped: list[str]) -> SearchInfo:
    return SearchInfo(strategy=result.strategy, value=result.value, stop_reason=result.stop_reason, usage=result.usage,
                      policy_version=result.policy_version or pair.policy.version,
                      value_version=pair.value_version, budget_capped=capped)


def _search_usage(result: SearchResult) -> UsageInfo:
    u = result.usage
    return UsageInfo(prompt_tokens=u.prompt_tokens, completion_tokens=u.policy_tokens,
                     total_tokens=u.prompt_tokens + u.policy_tokens,
                     prompt_tokens_details={"cached_tokens": u.cached_prompt_tokens})


async def _search(body: _OpenAIRequest, kind: Kind, request: Request, services: Services, request_id: str,
                  statement: str) -> Any:
    spec = body.search
    assert spec is not None
    if spec.seed is None and body.seed is not None:
        spec = spec.model_copy(update={"seed": body.seed})
    config, capped = spec.to_config(services.limits)
    config = config.model_copy(update={"top_candidates": max(config.top_candidates, body.n)})
    problem = spec.to_problem(statement, request_id)
    check_rerank(spec.rerank_with_tests, problem, services, "search.")
    services.check_value()  # 400 before queueing when the active pair may not search
    stack, pair = await services.hold()
    if not body.stream:
        async with stack:
            result = await services.run_search(request, pair, problem, config)
        return _response(kind, request_id, pair, _search_choices(result, body.n), _search_usage(result),
                         _search_info(result, pair, capped))

    async def stream() -> AsyncIterator[str]:
        chunk = _chunker(kind, request_id, pair.policy.version)
        async with AsyncExitStack() as cleanup:
            queue: asyncio.Queue[SearchProgress] = asyncio.Queue()
            task = asyncio.create_task(
                services.run_search(request, pair, problem, config, on_progress=progress_forwarder(queue)))
            cleanup.push_async_callback(_cancel, task)
            async for progress in drain_progress(queue, task):
                yield sse.data(chunk([], search={"progress": {"nodes": progress.nodes, "usage": progress.usage.model_dump(),
                                                              "best_value": progress.best_value}}))
            try:
                result = task.result()
            except Exception as exc:
                err = to_api_error(exc)
                yield sse.data({"error": {"type": err.type, "message": err.message}})
                yield sse.DONE
                return
            for i, (text, finish) in enumerate(_search_choices(result, body.n)):
                for c in _choice_chunks(kind, i, text, finish):
                    yield sse.data(chunk([c]))
            extra: dict[str, Any] = {"search": _search_info(result, pair, capped).model_dump()}
            if body.stream_options is not None and body.stream_options.include_usage:
                extra["usage"] = _search_usage(result).model_dump()
            yield sse.data(chunk([], **extra))
            yield sse.DONE

    return sse.SSEResponse(stream(), on_close=stack.aclose)
