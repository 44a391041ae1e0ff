"""Every server setting, read from the environment (prefix ``RESTRL_``) in this one module.

`restrl serve` flags override the environment (``Settings(**flags)``: init arguments win). A list
setting (``RESTRL_API_KEYS``) is comma-separated. Secrets are `SecretStr` and never logged.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """The server's configuration (docs/api.md lists every field with its variable)."""

    model_config = SettingsConfigDict(env_prefix="RESTRL_", extra="ignore", frozen=True)

    # models
    policy: str | None = Field(default=None, description="policy checkpoint folder (full weights or LoRA adapter with restrl.json); None = the embedded default model")
    value: str | None = Field(default=None, description="value checkpoint folder; None = the default value model")
    checkpoint_root: str | None = Field(
        default=None, description="folder the admin API loads checkpoints from: relative paths resolve against it and no path"
        " may lead outside it; None = absolute paths only")
    engine: Literal["vllm", "hf"] = Field(default="vllm", description="policy engine: vLLM (CPU or CUDA build) or transformers")
    max_model_len: int | None = Field(default=None, ge=128, description="engine context length; None = the engine's default")
    kv_cache_gib: float | None = Field(default=None, gt=0, description="vLLM CPU KV-cache size in GiB; None = the engine's default")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1, description="vLLM CUDA memory fraction")
    tensor_parallel_size: int = Field(default=1, ge=1, description="vLLM tensor parallel size (GPUs)")
    dtype: str | None = Field(default=None, description="weights dtype (auto, bfloat16, float32, ...); None = the engine's default")
    max_lora_rank: int | None = Field(default=None, ge=1, description="largest LoRA rank an adapter may have; None = the engine's default")
    seed: int = Field(default=0, description="engine-level seed")
    # network
    host: str = Field(default="127.0.0.1", description="bind address")
    port: int = Field(default=8000, ge=0, le=65535, description="bind port (0 = any free port)")
    # auth
    admin_token: SecretStr | None = Field(default=None, description="bearer token for /admin/*; unset = admin API disabled")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, description="comma-separated API keys for the public /v1 routes; empty = open")
    # admission and limits
    max_concurrent_searches: int = Field(default=4, ge=1, le=1024, description="searches (and plain completions) running at once")
    max_queued: int = Field(default=16, ge=0, le=100_000, description="requests waiting for a slot; beyond it 429")
    max_samples: int = Field(default=100, ge=1, description="cap on a request's budget.samples")
    max_tokens_budget: int = Field(default=200_000, ge=1, description="cap on a request's budget.tokens (policy tokens of one search)")
    max_deadline_s: float = Field(default=300.0, gt=0, description="cap on a request's budget.deadline_s (wall time from arrival, queueing"
                                  " included); applied when the request sets none; a plain completion waits for a slot at most its queue_wait_share")
    queue_wait_share: float = Field(
        default=0.5, gt=0, le=1, description="share of a request's deadline it may spend waiting for a slot; if none frees by"
        " then, 429 with Retry-After (nothing ran), so that a search that starts has the rest of its deadline")
    max_new_tokens: int = Field(default=1024, ge=1, description="cap on max_tokens per policy request")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="request body size cap (413 beyond)")
    # lifecycle
    drain_timeout_s: float = Field(default=30.0, ge=0, description="graceful shutdown: how long in-flight requests may finish")
    ready_timeout_s: float = Field(default=60.0, gt=0, description="/ready: time allowed for the probe expansion + value call")
    ready_cache_s: float = Field(default=5.0, ge=0, description="/ready: how long a probe result is reused")
    # services
    sandbox_workers: int = Field(default=2, ge=1, le=256, description="sandbox worker processes (public-test re-ranking)")
    value_batch_max: int = Field(default=32, ge=1, description="value batcher: most states per forward pass")
    value_batch_wait_ms: float = Field(default=2.0, ge=0, description="value batcher: how long a batch waits to fill")
    value_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="value model weights: auto = bfloat16 where the hardware has it (CUDA, AVX512-BF16/AMX CPUs), else float32"
    )
    value_device: str = Field(default="auto", description="value model torch device (cpu, cuda, cuda:1, ...); auto = cuda when a GPU is visible, else cpu")
    value_threads: int = Field(default=0, ge=0, le=4096, description="value model CPU threads; 0 = all the CPUs when value batches pause the engine, else half")
    value_cpu_sharing: Literal["auto", "pause", "concurrent"] = Field(
        default="auto",
        description="how the value model shares CPU cores with the policy engine: pause = each value batch pauses the (vLLM) engine and uses"
        " all cores; concurrent = both run at once; auto = pause when both compute on the CPU (vLLM CPU build, value device cpu)",
    )
    value_pack_tokens: int | None = Field(
        default=None, ge=0, le=65536,
        description="value model on a CPU: states packed as a prefix tree, up to this many tokens per pass; 0 = padded batches; None = 384 on a CPU, 0 on a GPU",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
