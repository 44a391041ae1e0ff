"""Memory placement (`models.placement`): the value model beside a vLLM engine on CUDA, and the
refusal of a full-weight swap that cannot fit. The planner is pure: given GPUs and sizes here."""

from __future__ import annotations

import pytest

from models.config import EngineConfig, ValueConfig
from models.hardware import GPU, GiB, Hardware
from models.placement import (
    MARGIN_BYTES,
    InsufficientMemory,
    check_second_engine,
    check_value_fits,
    estimate_value_bytes,
    place_models,
    plan_value_placement,
    second_engine_room,
)

H200 = 141 * GiB


def gpus(*free_gib: float, total: int = H200) -> tuple[GPU, ...]:
    return tuple(GPU(index=i, free_bytes=int(f * GiB), total_bytes=total) for i, f in enumerate(free_gib))


def test_no_gpu_changes_nothing():
    plan = plan_value_placement((), engine_gpus=[0], fraction=0.85, value_bytes=GiB)
    assert (plan.device, plan.gpu_memory_utilization) == ("cpu", 0.85)


def test_a_free_gpu_takes_the_value_model():
    plan = plan_value_placement(gpus(140, 140, 100), engine_gpus=[0], fraction=0.85, value_bytes=4 * GiB)
    assert (plan.device, plan.gpu_memory_utilization) == ("cuda:1", 0.85)  # the most free of the unused GPUs
    assert "does not use" in plan.note


def test_beside_the_engine_the_fraction_is_lowered_by_the_need():
    plan = plan_value_placement(gpus(140), engine_gpus=[0], fraction=0.85, value_bytes=30 * GiB)
    expected = int((140 * GiB - 30 * GiB - MARGIN_BYTES) / H200 * 100) / 100
    assert plan.device == "cuda:0" and plan.gpu_memory_utilization == expected < 0.85
    assert "lowered from 0.85" in plan.note
    # every GPU under tensor parallelism: nothing spare, the first engine GPU shares
    plan = plan_value_placement(gpus(140, 140), engine_gpus=[0, 1], fraction=0.85, value_bytes=30 * GiB)
    assert plan.device == "cuda:0" and plan.gpu_memory_utilization < 0.85


def test_small_value_model_fits_under_the_fraction_as_it_is():
    plan = plan_value_placement(gpus(140), engine_gpus=[0], fraction=0.85, value_bytes=GiB)
    assert (plan.device, plan.gpu_memory_utilization) == ("cuda:0", 0.85)


def test_an_explicit_value_device_wins():
    # on a free GPU the planner would pick another one; the operator's choice holds, with the accounting
    plan = plan_value_placement(gpus(140, 140), engine_gpus=[0], fraction=0.85, value_bytes=30 * GiB, value_device="cuda:0")
    assert plan.device == "cuda:0" and plan.gpu_memory_utilization < 0.85
    plan = plan_value_placement(gpus(140), engine_gpus=[0], fraction=0.85, value_bytes=30 * GiB, value_device="cpu")
    assert (plan.device, plan.gpu_memory_utilization) == ("cpu", 0.85)
    plan = plan_value_placement(gpus(140, 140), engine_gpus=[0], fraction=0.85, value_bytes=30 * GiB, value_device="cuda")
    assert plan.device == "cuda" and plan.gpu_memory_utilization < 0.85  # "cuda" is cuda:0


def test_no_room_for_both_is_refused_naming_the_setting():
    with pytest.raises(InsufficientMemory, match="RESTRL_VALUE__DEVICE"):
        plan_value_placement(gpus(24, total=24 * GiB), engine_gpus=[0], fraction=0.9, value_bytes=20 * GiB)
    with pytest.raises(InsufficientMemory, match="cuda:1, which has"):
        plan_value_placement(gpus(140, 2), engine_gpus=[0], fraction=0.9, value_bytes=20 * GiB, value_device="cuda:1")


def test_second_engine_room():
    # the running engine holds 0.85 of the GPU: a second at 0.85 cannot start
    reason = second_engine_room(gpus(141 * 0.15), engine_gpus=[0], fraction=0.85)
    assert reason is not None and "LoRA adapter" in reason and "cuda:0" in reason
    assert second_engine_room(gpus(100), engine_gpus=[0], fraction=0.45) is None
    assert second_engine_room(gpus(100, 10), engine_gpus=[0, 1], fraction=0.45) is not None  # every TP GPU counts


def test_estimate_counts_weights_in_the_loaded_dtype_activations_and_cache():
    base = dict(weight_bytes=4 * GiB, stored_bytes_per_param=4, hidden=1536, intermediate=8960, batch=64, max_length=1024,
                prefix_cache_mb=256)
    bf16 = estimate_value_bytes(bytes_per_param=2, **base)
    fp32 = estimate_value_bytes(bytes_per_param=4, **base)
    assert 2 * GiB < bf16 < fp32
    assert bf16 - 2 * GiB == 64 * 1024 * (4 * 1536 + 2 * 8960) * 2 * 2 + 256 * (1 << 20)


def test_place_models_only_for_vllm_on_a_gpu():
    hw = Hardware(gpus=gpus(140))
    value = ValueConfig(gpu_memory_gib=30)
    engine, placed, note = place_models(EngineConfig(), value, hw)
    assert placed.device == "cuda:0" and engine.gpu_memory_utilization < 0.85 and note
    assert place_models(EngineConfig(engine="hf"), value, hw)[0].gpu_memory_utilization == 0.85  # hf reserves nothing
    assert place_models(EngineConfig(), value, Hardware())[1].device == "auto"  # no GPU: untouched
    assert place_models(EngineConfig(), ValueConfig(gpu_memory_gib=30, device="cpu"), hw)[1].device == "cpu"


def test_check_second_engine_and_value_fit():
    check_second_engine(EngineConfig(), Hardware(gpus=gpus(130)))  # 0.85 x 141 GiB fits in 130 free
    with pytest.raises(InsufficientMemory):
        check_second_engine(EngineConfig(), Hardware(gpus=gpus(20)))
    check_second_engine(EngineConfig(engine="hf"), Hardware(gpus=gpus(1)))  # not a vLLM reservation
    check_value_fits(ValueConfig(device="cpu", gpu_memory_gib=100), Hardware(gpus=gpus(1)))
    with pytest.raises(InsufficientMemory, match="cuda:0"):
        check_value_fits(ValueConfig(device="cuda:0", gpu_memory_gib=8), Hardware(gpus=gpus(4)))


async def test_a_full_weight_swap_that_cannot_fit_is_refused_before_loading(monkeypatch, default_model_dir):
    """`load_policy` beside a running policy on a (simulated) full GPU raises before any engine starts."""
    import models.loading as loading
    import models.placement as placement
    from models.base import ModelError

    started = []

    class Engine:
        @classmethod
        async def start(cls, *args, **kwargs):
            started.append(args)
            raise AssertionError("an engine was started")

    monkeypatch.setattr(EngineConfig, "device", lambda self: "cuda")
    monkeypatch.setattr(placement, "probe_hardware", lambda: Hardware(gpus=gpus(10)))
    monkeypatch.setitem(loading.POLICY_ENGINES, "vllm", Engine)
    with pytest.raises(ModelError, match="second vLLM engine"):
        await loading.load_policy(EngineConfig(model=str(default_model_dir)), reuse=object())  # type: ignore[arg-type]
    assert started == []


async def test_the_server_answers_such_a_swap_with_400_and_keeps_serving(monkeypatch):
    """The registry turns the refusal into a `SwapFailed` (400) and the old pair stays active."""
    from models.placement import InsufficientMemory
    from server.errors import SwapFailed
    from server.metrics import Metrics
    from server.registry import ModelRegistry
    from tests.search.doubles import HashValue, ScriptedPolicy

    class Loader:
        async def load_policy(self, source, *, reuse=None):
            if source == "/big":
                raise InsufficientMemory("a full-weight swap starts a second vLLM engine beside the running one; ...")
            return ScriptedPolicy()

        async def load_value(self, source, *, policy):
            return HashValue()

        def match(self, policy, value):
            from search.stack import value_match

            return value_match(policy.base_model, value, any_policy=True)

    registry = ModelRegistry(Loader(), Metrics(), batcher_factory=lambda v: v)
    pair = await registry.load_initial(None, None)
    with pytest.raises(SwapFailed, match="second vLLM engine") as info:
        await registry.swap(policy="/big")
    assert info.value.status == 400 and registry.active is pair
