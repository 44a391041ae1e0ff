"""Data-parallel jobs (`search.replicas`): engines per GPU group, problems dealt round-robin,
results merged in order; and two real CPU engines (transformers, a tiny random model) opened
through `open_replicas` the way ``restrl eval`` and ``collect-values`` open them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from models.config import EngineConfig, ValueConfig
from search.replicas import open_replicas, replica_configs, replica_count, run_sharded, shard
from tests.tiny_models import save_random_causal_lm


def test_shard_deals_round_robin_and_covers_every_index_once():
    assert shard(7, 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard(2, 4) == [[0], [1], [], []]
    for n, k in [(0, 1), (1, 1), (10, 3), (64, 8)]:
        dealt = sorted(i for part in shard(n, k) for i in part)
        assert dealt == list(range(n))


def test_replica_count():
    assert replica_count(EngineConfig(), 0) == 1  # a CPU: one engine
    assert replica_count(EngineConfig(), 8) == 8  # one per GPU
    assert replica_count(EngineConfig(tensor_parallel_size=2), 8) == 4
    assert replica_count(EngineConfig(tensor_parallel_size=4, pipeline_parallel_size=2), 8) == 1
    assert replica_count(EngineConfig(tensor_parallel_size=2), 1) == 1
    assert replica_count(EngineConfig(data_parallel_size=2), 8) == 2
    assert replica_count(EngineConfig(data_parallel_size=2), 0) == 2  # two CPU engines (how this is tested here)
    with pytest.raises(ValueError, match="lower data_parallel_size"):
        replica_count(EngineConfig(data_parallel_size=3, tensor_parallel_size=2), 4)


def test_replica_configs_give_each_engine_its_gpus_and_its_value_model_the_first():
    configs = replica_configs(EngineConfig(tensor_parallel_size=2), ValueConfig(), 2, gpu_count=4)
    assert [(e.gpus, e.gpu_indices(), v.device) for e, v in configs] == [("0,1", [0, 1], "cuda:0"), ("2,3", [2, 3], "cuda:2")]
    assert configs[1][0].hf_device == "cuda:2"
    pinned = replica_configs(EngineConfig(), ValueConfig(device="cpu"), 2, gpu_count=2)
    assert [v.device for _, v in pinned] == ["cpu", "cpu"]  # an explicit value device wins
    engine, value = EngineConfig(), ValueConfig()
    assert replica_configs(engine, value, 1, gpu_count=8) == [(engine, value)]  # one engine: unchanged
    assert all(e.gpus is None for e, _ in replica_configs(engine, value, 2, gpu_count=0))  # CPU copies


async def test_run_sharded_merges_in_order_with_every_worker_busy():
    seen: dict[str, list[int]] = {"a": [], "b": []}

    async def fn(worker: str, index: int, item: int) -> int:
        seen[worker].append(index)
        await asyncio.sleep(0.001 * (7 - index))  # finish out of order
        return item * 10

    assert await run_sharded(list(range(7)), ["a", "b"], fn) == [i * 10 for i in range(7)]
    assert seen == {"a": [0, 2, 4, 6], "b": [1, 3, 5]}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """A 2-layer Llama with seeded random weights and SmolLM2's tokenizer (a few MB)."""
    return save_random_causal_lm(tmp_path_factory.mktemp("models") / "tiny-llama", default_model_dir, "llama",
                                 hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=2048)


async def test_two_cpu_engines_share_the_problems_of_a_job(tiny_llama: Path):
    from search import Budget, SearchConfig, run_search
    from tests.search.doubles import HashValue, make_problem

    engine = EngineConfig(engine="hf", model=str(tiny_llama), max_model_len=1024, data_parallel_size=2, hf_device="cpu")
    problems = [make_problem(f"p{i}") for i in range(4)]
    served: dict[int, list[str]] = {}
    async with open_replicas(engine, None, None) as stacks:
        assert len(stacks) == 2 and stacks[0].policy is not stacks[1].policy

        async def one(stack, index, problem):
            served.setdefault(id(stack.policy), []).append(problem.id)
            cfg = SearchConfig(strategy="best_of_n", budget=Budget(samples=2), max_tokens=8, seed=index)
            return (problem.id, await run_search(problem, stack.policy, HashValue(), cfg))

        results = await run_sharded(problems, stacks, one)
    assert [pid for pid, _ in results] == ["p0", "p1", "p2", "p3"]
    assert sorted(map(sorted, served.values())) == [["p0", "p2"], ["p1", "p3"]]
    assert all(r.usage.samples == 2 for _, r in results)
