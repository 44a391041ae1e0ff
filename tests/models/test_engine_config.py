"""EngineConfig / ValueConfig validation: errors say what to change."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.config import EngineConfig, ValueConfig


def test_defaults():
    cfg = EngineConfig()
    assert cfg.engine == "vllm" and cfg.model is None and cfg.max_model_len == 4096 and cfg.kv_cache_gib == 1.0
    assert cfg.resolved_dtype("cpu") == "bfloat16"
    assert EngineConfig(engine="hf").resolved_dtype("cpu") == "float32"
    assert EngineConfig(engine="hf", dtype="bfloat16").resolved_dtype("cpu") == "bfloat16"


def test_bf16_on_cuda_for_both_engines():
    for engine in ("vllm", "hf"):
        assert EngineConfig(engine=engine).resolved_dtype("cuda:1", bf16=True) == "bfloat16"
        assert EngineConfig(engine=engine).resolved_dtype("cuda", bf16=False) == "float16"  # a GPU without bf16
        assert EngineConfig(engine=engine, dtype="float32").resolved_dtype("cuda", bf16=True) == "float32"  # set: it wins


def test_batched_tokens_below_model_len_is_a_cuda_setting():
    # valid config (chunked prefill on CUDA); the CPU build refuses it at start (tests/models/test_engine_settings.py)
    assert EngineConfig(max_model_len=4096, max_num_batched_tokens=2048).max_num_batched_tokens == 2048


def test_adapter_needs_lora_on_vllm():
    with pytest.raises(ValidationError, match="enable_lora=True"):
        EngineConfig(adapter="/x", enable_lora=False)
    EngineConfig(engine="hf", adapter="/x", enable_lora=False)


@pytest.mark.parametrize(
    "kwargs", [{"engine": "tgi"}, {"kv_cache_gib": 0}, {"max_lora_rank": 0}, {"unknown": 1}, {"prompt_mode": "chat"}]
)
def test_invalid_values(kwargs):
    with pytest.raises(ValidationError):
        EngineConfig(**kwargs)


def test_value_config_bounds():
    assert ValueConfig().resolved_batch_size() >= 1
    with pytest.raises(ValidationError):
        ValueConfig(batch_size=0)
    with pytest.raises(ValidationError):
        ValueConfig(max_length=8)


def test_value_device_auto_is_the_gpu_when_there_is_one():
    import torch

    assert ValueConfig().device == "auto"
    assert ValueConfig().resolved_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert ValueConfig(device="cpu").resolved_device() == "cpu"
    assert ValueConfig(device="cuda:1").resolved_device() == "cuda:1"
    assert ValueConfig(device="cuda:1").resolved_pack_tokens() == 0  # padded batches on a GPU
