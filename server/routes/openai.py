"""OpenAI-compatible ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models``.

Without a ``search`` object a request is plain sampling through the active policy (``n``,
``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``; a ``max_tokens`` above the server's
cap answers 422); chat messages go through the model's chat template. With ``search`` (the official
client sends it via ``extra_body``) the prompt - or the last user message - is the problem statement,
the search runs, and the choices are its best ``n`` distinct candidates (by rank): each choice's text
is the generated code, what a user pastes; ``search.programs`` holds the programs the sandbox runs
(the code with the problem's starter code around it). The top-level ``temperature``, ``top_p``,
``seed`` and ``max_tokens`` a client sets apply to the search where its ``search`` object leaves them
unset (`server.protocol._OpenAIRequest.search_spec`); as there, ``max_tokens`` above the server's cap
is reduced and named in ``search.budget_capped``; ``stop`` with ``search`` answers 400. Streams are
``data:`` chunks ending with ``data: [DONE]`` (`server.streaming`): plain sampling streams token by
token; a search stream (`server.streaming.search_events`, as /v1/solve's) carries its progress in
the chunks' ``search`` field, then the choices. OpenAI fields that would change the answer and are
not implemented (`server.protocol.UNSUPPORTED_FIELDS`: ``logprobs``, ``echo``, ``best_of``,
``tools``, ...) answer 400 naming the field. A client that disconnects cancels the work and its
engine requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from models.base import Sample
from models.prompting import render_chat_prompt
from search.types import SearchProgress, SearchResult
from server import sse
from server.deps import STRATEGY_KEY, ApiKey, ServicesDep
from server.errors import InvalidField, InvalidRequest
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
from server.routes.solve import ERRORS, check_rerank
from server.services import Services, request_state
from server.streaming import Chunker, Kind, Usage, plain_stream, search_events

router = APIRouter(tags=["openai"], dependencies=[ApiKey])

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
    return await _handle(body, "chat.completion", request, services, prompts=None,
                         statement=users[-1] if users else "")


async def _handle(body: _OpenAIRequest, kind: Kind, request: Request, services: Services, *,
                  prompts: list[str] | None, statement: str) -> Any:
    request.scope[STRATEGY_KEY] = body.search.strategy if body.search else "none"
    unsupported = body.unsupported_field()
    if unsupported is not None:
        raise InvalidRequest(f"{unsupported} is not supported by this server (the answer would not be what it asks for):"
                             " leave it out or send its default", field=unsupported)
    request_id = new_id("cmpl" if kind == "text_completion" else "chatcmpl")
    if not prompts and kind == "text_completion":
        raise InvalidRequest("prompt must not be empty", field="prompt")
    if body.search is not None:
        if body.stop_list():
            raise InvalidRequest("stop does not apply to a search (its policy requests stop at the tree's step"
                                 " boundaries): leave it out", field="stop")
        return await _search(body, kind, request, services, request_id, statement)
    field, requested = "max_tokens", body.max_tokens
    if requested is None and isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        field, requested = "max_completion_tokens", body.max_completion_tokens
    max_tokens = requested or DEFAULT_MAX_TOKENS[kind] or services.settings.max_new_tokens
    if max_tokens > services.settings.max_new_tokens:  # no budget_capped to report a cut in: refused
        raise InvalidField(f"{field} is over this server's limit of {services.settings.max_new_tokens}", field=field)
    # plain sampling has no deadline of its own: it waits for a slot at most max_deadline_s
    stack, pair = await services.hold(request, deadline_s=services.settings.max_deadline_s)
    try:
        if prompts is None:  # chat
            messages = [m.model_dump() for m in body.messages]  # type: ignore[attr-defined]
            prompts = [render_chat_prompt(pair.policy.tokenizer, messages)]
        sampling = {"max_tokens": max_tokens, "stop": body.stop_list(), "temperature": body.temperature,
                    "top_p": body.top_p, "seed": body.seed}
        if body.stream:
            chunker = Chunker(kind, request_id, pair.policy.version,
                              include_usage=body.stream_options is not None and body.stream_options.include_usage)
            return sse.SSEResponse(plain_stream(pair.policy, prompts, chunker, services.metrics, n=body.n, **sampling),
                                   on_close=stack.aclose)
    except BaseException:
        await stack.aclose()
        raise
    async with stack:
        samples, usage = await services.supervise(request, _sample_all(services, pair, prompts, n=body.n, **sampling),
                                                  what="completion")
    return _response(kind, request_id, pair, [(s.text, s.finish_reason) for s in samples], usage.info(), None)


async def _sample_all(services: Services, pair: ModelPair, prompts: list[str], *, n: int,
                      **sampling: Any) -> tuple[list[Sample], Usage]:
    groups = await asyncio.gather(*(pair.policy.sample(p, n=n, **sampling) for p in prompts))
    usage = Usage()
    for prompt_index, group in enumerate(groups):
        for s in group:
            usage.add(prompt_index, s)
    usage.observe(services.metrics)
    return [s for group in groups for s in group], usage


def _response(kind: Kind, request_id: str, pair: ModelPair, choices: list[tuple[str, str | None]],
              usage: UsageInfo, search: SearchInfo | None) -> CompletionResponse | ChatCompletionResponse:
    model = pair.policy.version
    if kind == "text_completion":
        return CompletionResponse(id=request_id, model=model, usage=usage, search=search, choices=[
            CompletionChoice(index=i, text=text, finish_reason=fin) for i, (text, fin) in enumerate(choices)])  # type: ignore[arg-type]
    return ChatCompletionResponse(id=request_id, model=model, usage=usage, search=search, choices=[
        ChatChoice(index=i, message=ChatMessageOut(content=text), finish_reason=fin)  # type: ignore[arg-type]
        for i, (text, fin) in enumerate(choices)])


# ------------------------------------------------------------------ search decoding


def _search_choices(result: SearchResult, n: int) -> list[tuple[str, str]]:
    """(generated code, executable program) of the best ``n`` distinct candidates, by rank."""
    ranked = [(result.code, result.program)] if result.code is not None and result.program is not None else []
    ranked += [(c.code, c.program) for c in result.candidates]
    return list(dict.fromkeys(ranked))[:n]


def _choices(picked: list[tuple[str, str]]) -> list[tuple[str, str | None]]:
    return [(code, "stop") for code, _ in picked] or [("", "length")]


def _search_info(result: SearchResult, pair: ModelPair, capped: list[str], queued_s: float,
                 picked: list[tuple[str, str]]) -> SearchInfo:
    return SearchInfo(strategy=result.strategy, value=result.value, stop_reason=result.stop_reason, usage=result.usage,
                      policy_version=result.policy_version or pair.policy.version, value_version=pair.value_version,
                      budget_capped=capped, queued_s=round(queued_s, 3), programs=[program for _, program in picked])


def _search_usage(result: SearchResult) -> UsageInfo:
    u = result.usage
    return UsageInfo(prompt_tokens=u.prompt_tokens, completion_tokens=u.policy_tokens,
                     total_tokens=u.prompt_tokens + u.policy_tokens,
                     prompt_tokens_details={"cached_tokens": u.cached_prompt_tokens})


async def _search(body: _OpenAIRequest, kind: Kind, request: Request, services: Services, request_id: str,
                  statement: str) -> Any:
    spec = body.search_spec()
    config, capped = spec.to_config(services.limits)
    config = config.model_copy(update={"top_candidates": max(config.top_candidates, body.n)})
    problem = spec.to_problem(statement, request_id)
    check_rerank(spec.rerank_with_tests, problem, services, "search.")
    services.check_value()  # 400 before queueing when the active pair may not search
    stack, pair = await services.hold(request, deadline_s=config.budget.deadline_s)
    queued_s = request_state(request.scope).queued_s
    if not body.stream:
        async with stack:
            result = await services.run_search(request, pair, problem, config)
        picked = _search_choices(result, body.n)
        return _response(kind, request_id, pair, _choices(picked), _search_usage(result),
                         _search_info(result, pair, capped, queued_s, picked))

    async def stream() -> AsyncIterator[str]:
        chunker = Chunker(kind, request_id, pair.policy.version,
                          include_usage=body.stream_options is not None and body.stream_options.include_usage)
        async for item in search_events(services, request, pair, problem, config):
            if isinstance(item, SearchProgress):
                yield chunker.chunk([], search={"progress": {"nodes": item.nodes, "usage": item.usage.model_dump(),
                                                             "best_value": item.best_value}})
            elif isinstance(item, SearchResult):
                picked = _search_choices(item, body.n)
                for i, (text, finish) in enumerate(_choices(picked)):
                    for chunk in chunker.whole(i, text, finish):
                        yield chunk
                extra: dict[str, Any] = {"search": _search_info(item, pair, capped, queued_s, picked).model_dump()}
                if chunker.include_usage:
                    extra["usage"] = _search_usage(item).model_dump()
                yield chunker.chunk([], **extra)
            else:
                yield chunker.error(item)
        yield sse.DONE

    return sse.SSEResponse(stream(), on_close=stack.aclose)
