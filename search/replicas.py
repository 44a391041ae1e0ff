"""Data-parallel jobs: one engine per GPU group, problems sharded across them, results merged.

In: an `EngineConfig` (``data_parallel_size``, and the tensor x pipeline GPUs of one engine), a
`ValueConfig`, a `SandboxConfig`, and the GPU count. Out: `open_replicas` yields one `Stack` per
engine (each with its own value model on its group's first GPU, all sharing one sandbox); `shard`
deals problem indices round-robin (problem ``i`` to engine ``i mod N``: a rerun puts each problem
on the same engine) and `run_sharded` runs each shard on its engine and returns the results in the
problems' order. ``restrl eval`` and ``collect-values`` run on it; with one engine (a CPU, one GPU,
or ``data_parallel_size=1``) it is exactly `open_stack`.

Each engine of a group sees only its GPUs (``EngineConfig.gpus``: vLLM's processes start with that
``CUDA_VISIBLE_DEVICES``; the hf engine runs on the group's first GPU). vLLM's own data parallelism
(``data_parallel_size`` of its engine args) is not used: it needs its multi-process front end,
while one engine per group keeps the same code path as the CPU build.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import TypeVar

from models.config import EngineConfig, ValueConfig
from sandbox import SandboxConfig
from search.stack import Stack, open_stack

T = TypeVar("T")
W = TypeVar("W")
R = TypeVar("R")


def replica_count(engine: EngineConfig, gpu_count: int) -> int:
    """Engines a job starts: ``data_parallel_size``, else as many groups of tensor x pipeline GPUs
    as ``gpu_count`` holds (1 without a GPU)."""
    per = engine.gpus_per_engine()
    if engine.data_parallel_size is not None:
        if gpu_count and engine.data_parallel_size * per > gpu_count:
            raise ValueError(f"policy.data_parallel_size={engine.data_parallel_size} engines x {per} GPUs each needs"
                             f" {engine.data_parallel_size * per} GPUs, {gpu_count} are visible: lower data_parallel_size")
        return engine.data_parallel_size
    return max(1, gpu_count // per) if gpu_count else 1


def replica_configs(engine: EngineConfig, value: ValueConfig, count: int, *, gpu_count: int) -> list[tuple[EngineConfig, ValueConfig]]:
    """The (policy, value) configs of ``count`` engines: on GPUs, engine ``i`` gets GPUs
    ``[i*g, (i+1)*g)`` (g = tensor x pipeline) and its value model, where its device is ``auto``,
    that group's first GPU; on a CPU, ``count`` copies."""
    if count == 1:
        return [(engine, value)]
    if not gpu_count:
        return [(engine, value)] * count
    per = engine.gpus_per_engine()
    out = []
    for i in range(count):
        group = list(range(i * per, (i + 1) * per))
        placed = engine.model_copy(update={"gpus": ",".join(map(str, group)), "hf_device": f"cuda:{group[0]}"})
        out.append((placed, value.model_copy(update={"device": f"cuda:{group[0]}"}) if value.device == "auto" else value))
    return out


def shard(count: int, shards: int) -> list[list[int]]:
    """Indices ``0..count-1`` dealt round-robin into ``shards`` lists (some may be empty)."""
    return [list(range(s, count, shards)) for s in range(shards)]


async def run_sharded(items: Sequence[T], workers: Sequence[W], fn: Callable[[W, int, T], Awaitable[R]]) -> list[R]:
    """``fn(worker, index, item)`` for every item, item ``i`` on worker ``i mod len(workers)``, all
    shards at once; the results in the items' order. The first failure propagates."""
    results: list[R | None] = [None] * len(items)

    async def one(worker: W, index: int) -> None:
        results[index] = await fn(worker, index, items[index])

    deal = zip(workers, shard(len(items), len(workers)), strict=True)
    await asyncio.gather(*(one(worker, index) for worker, indices in deal for index in indices))
    return results  # type: ignore[return-value]


@asynccontextmanager
async def open_replicas(engine: EngineConfig, value: ValueConfig | None = None, sandbox: SandboxConfig | None = None, *,
                        gpu_count: int | None = None,
                        sandbox_hide: Sequence[str | os.PathLike[str]] | None = None) -> AsyncIterator[list[Stack]]:
    """One `Stack` per engine (`replica_count`; ``gpu_count``: the visible GPUs, probed when None),
    the first opening the sandbox that all share; everything closed when the block exits."""
    if gpu_count is None:
        from models.hardware import probe_hardware

        gpu_count = len(probe_hardware().gpus)
    count = replica_count(engine, gpu_count)
    configs = replica_configs(engine, value or ValueConfig(), count, gpu_count=gpu_count)
    async with AsyncExitStack() as stack:
        stacks: list[Stack] = []
        for i, (e, v) in enumerate(configs):
            opened = await stack.enter_async_context(
                open_stack(e, v if value is not None else None, sandbox if i == 0 else None, sandbox_hide=sandbox_hide))
            stacks.append(opened if i == 0 else replace(opened, sandbox=stacks[0].sandbox))
        yield stacks
