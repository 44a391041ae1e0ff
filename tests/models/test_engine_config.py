"""EngineConfig / ValueConfig validation: errors say what to change."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.config import EngineConfig, ValueConfig


def test_defaults():
    cfg = EngineConfig()
    assert cfg.engine == "vllm" and cfg.model is None and cfg.max_model_len == 4096 and cfg.kv_cache_gib == 1.0
    assert cfg.resolved_dtype() == "bfloat16"
    assert EngineConfig(engine="hf").resolved_dtype() == "float32"
    assert EngineConfig(engine="hf", dtype="bfloat16").resolved_dtype() == "bfloat16"


def test_batched_tokens_below_model_len_says_what_to_change():
    with pytest.raises(ValidationError, match="raise it to at least max_model_len"):
        EngineConfig(max_model_len=4096, max_num_batched_tokens=2048)


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
    assert ValueConfig().batch_size >= 1
    with pytest.raises(ValidationError):
        ValueConfig(batch_size=0)
    with pytest.raises(ValidationError):
        ValueConfig(max_length=8)
