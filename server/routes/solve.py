"""``POST /v1/solve``: a problem in, the search's program out (JSON, or SSE with progress).

``budget.deadline_s`` is wall time from the request's arrival: waiting for a search slot counts
(`server.services`), the response says how long it waited (``queued_s``), and a request whose
deadline passes in the queue answers 429 without running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from search.types import SearchConfig, SearchProgress, SearchResult
from server import sse
from server.deps import STRATEGY_KEY, ApiKey, ServicesDep
from server.errors import InvalidRequest, openapi_responses, to_api_error
from server.protocol import ProgressEvent, SolveRequest, SolveResponse, new_id
from server.registry import ModelPair
from server.services import Services, request_state
from server.streaming import search_events
from tasks import Problem

router = APIRouter(tags=["solve"], dependencies=[ApiKey])

ERRORS: dict[int | str, dict[str, Any]] = openapi_responses(400, 401, 413, 422, 429, 500, 503, 504)


def check_rerank(body_rerank: bool, problem: Problem, services: Services, field_prefix: str) -> None:
    if not body_rerank:
        return
    if services.sandbox is None:
        raise InvalidRequest("rerank_with_tests is unavailable: this server has no sandbox", field="rerank_with_tests")
    if not problem.public_tests:
        raise InvalidRequest("rerank_with_tests needs public tests", field=f"{field_prefix}public_tests")


def to_solve_response(request_id: str, result: SearchResult, pair: ModelPair, capped: list[str],
                      queued_s: float) -> SolveResponse:
    return SolveResponse(
        id=request_id, strategy=result.strategy, program=result.program, code=result.code, value=result.value,
        candidates=result.candidates, usage=result.usage, stop_reason=result.stop_reason, nodes=result.nodes,
        max_depth=result.max_depth, reranked=result.reranked,
        policy_version=result.policy_version or pair.policy.version,
        value_version=pair.value_version, budget_capped=capped, queued_s=round(queued_s, 3),
        tree=result.trace,
    )


@router.post("/v1/solve", response_model=SolveResponse, response_model_exclude_none=False, responses=ERRORS,
             summary="Solve a coding problem with a search strategy (SSE progress when stream=true)")
async def solve(body: SolveRequest, request: Request, services: ServicesDep) -> SolveResponse | sse.SSEResponse:
    request.scope[STRATEGY_KEY] = body.strategy
    request_id = new_id("solve")
    config, capped = body.to_config(services.limits, record_trace=body.return_tree)
    problem = body.problem.to_problem(request_id)
    check_rerank(body.rerank_with_tests, problem, services, "problem.")
    services.check_value()  # 400 before queueing when the active pair may not search
    stack, pair = await services.hold(request, deadline_s=config.budget.deadline_s)  # the deadline counts the wait
    if not body.stream:
        async with stack:
            result = await services.run_search(request, pair, problem, config)
        return to_solve_response(request_id, result, pair, capped, request_state(request.scope).queued_s)
    return sse.SSEResponse(_stream(services, request, pair, problem, config, request_id, capped), on_close=stack.aclose)


async def _stream(services: Services, request: Request, pair: ModelPair, problem: Problem, config: SearchConfig,
                  request_id: str, capped: list[str]) -> AsyncIterator[str]:
    """progress events while the search runs, then one result (or error) event."""
    async for item in search_events(services, request, pair, problem, config):
        if isinstance(item, SearchProgress):
            yield sse.event("progress", ProgressEvent(id=request_id, nodes=item.nodes, usage=item.usage, best_code=item.best_code,
                                                      best_value=item.best_value, new_nodes=item.new_nodes))
        elif isinstance(item, SearchResult):
            yield sse.event("result", to_solve_response(request_id, item, pair, capped, request_state(request.scope).queued_s))
        else:
            err = to_api_error(item)
            yield sse.event("error", {"error": {"type": err.type, "message": err.message}})
