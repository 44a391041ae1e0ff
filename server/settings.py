"""Every server setting, read from the environment (prefix ``RESTRL_``) in this one module.

The models and the sandbox are the configs every job shares, nested here, not re-declared:
``policy`` is a `models.EngineConfig`, ``value`` a `models.ValueConfig`, ``sandbox`` a
`sandbox.SandboxConfig`. Their fields are ``RESTRL_POLICY__KV_CACHE_GIB``, ``RESTRL_VALUE__DTYPE``,
``RESTRL_SANDBOX__WORKERS``, ... (``--policy.kv-cache-gib`` on `restrl serve`); ``RESTRL_POLICY`` and
``RESTRL_VALUE`` alone name the checkpoint (a folder, a LoRA adapter, or a hub id). The flat names
of earlier releases (``RESTRL_KV_CACHE_GIB``, ``RESTRL_VALUE_DTYPE``, ...) are still read, each with a
warning naming its new variable (`RENAMED`). `restrl serve` flags override the environment
(``Settings(**flags)``: init arguments win). A list setting (``RESTRL_API_KEYS``) is comma-separated.
Secrets are `SecretStr` and never logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from models.config import EngineConfig, ValueConfig, move_renamed_keys
from models.hardware import Hardware, probe_hardware, scaled_defaults
from sandbox.api import SandboxConfig

logger = logging.getLogger(__name__)

PREFIX = "RESTRL_"
NESTED = ("policy", "value", "sandbox")  # the shared configs, by their field here
# flat names of earlier releases -> their field now (RESTRL_<OLD> and `--<old>` still work, with a warning)
RENAMED: dict[str, tuple[str, ...]] = {
    "engine": ("policy.engine",),
    "max_model_len": ("policy.max_model_len",),
    "kv_cache_gib": ("policy.kv_cache_gib",),
    "gpu_memory_utilization": ("policy.gpu_memory_utilization",),
    "tensor_parallel_size": ("policy.tensor_parallel_size",),
    "dtype": ("policy.dtype",),
    "max_lora_rank": ("policy.max_lora_rank",),
    "seed": ("policy.seed", "value.seed"),
    "sandbox_workers": ("sandbox.workers",),
    "value_batch_max": ("value.batch_max",),
    "value_batch_wait_ms": ("value.batch_wait_ms",),
    "value_dtype": ("value.dtype",),
    "value_device": ("value.device",),
    "value_threads": ("value.threads",),
    "value_cpu_sharing": ("value.cpu_sharing",),
    "value_pack_tokens": ("value.pack_tokens",),
}


def env_name(key: str) -> str:
    """The variable of a (dotted) settings key: ``policy.kv_cache_gib`` -> ``RESTRL_POLICY__KV_CACHE_GIB``."""
    return PREFIX + key.replace(".", "__").upper()


class _Env(EnvSettingsSource):
    """The environment, where ``RESTRL_POLICY`` / ``RESTRL_VALUE`` may be a bare checkpoint path
    (the ``model`` of the nested config) besides JSON, and nested fields merge with it."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            if field_name in ("policy", "value"):
                return {"model": value}
            raise


class _RenamedEnv(PydanticBaseSettingsSource):
    """The flat variables of earlier releases (`RENAMED`), handed to `Settings` under their old
    names, where `move_renamed_keys` moves them and warns."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {old: os.environ[PREFIX + old.upper()] for old in RENAMED if PREFIX + old.upper() in os.environ}


class Settings(BaseSettings):
    """The server's configuration (docs/api.md lists every variable)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_nested_delimiter="__", extra="ignore", frozen=True)

    # models and sandbox: the configs every job shares
    policy: EngineConfig = Field(default_factory=EngineConfig, description="the policy (RESTRL_POLICY: its checkpoint)")
    value: ValueConfig = Field(default_factory=ValueConfig, description="the value model (RESTRL_VALUE: its checkpoint)")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="the sandbox of public-test re-ranking")
    checkpoint_root: str | None = Field(
        default=None, description="folder the admin API loads checkpoints from: relative paths resolve against it and no path"
        " may lead outside it; None = absolute paths only")
    # network
    host: str = Field(default="127.0.0.1", description="bind address")
    port: int = Field(default=8000, ge=0, le=65535, description="bind port (0 = any free port)")
    # auth
    admin_token: SecretStr | None = Field(default=None, description="bearer token for /admin/*; unset = admin API disabled")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, description="comma-separated API keys for the public /v1 routes; empty = open")
    # admission and limits
    max_concurrent_searches: int | None = Field(
        default=None, ge=1, le=1024, description="searches (and plain completions) running at once; None = chosen from the"
        " hardware: 4 on a CPU, 32 on a CUDA GPU (16 below 40 GiB), logged at start (models.hardware)")
    max_queued: int | None = Field(default=None, ge=0, le=100_000,
                                   description="requests waiting for a slot; beyond it 429; None = 16 on a CPU, 4 x max_concurrent_searches on a GPU")
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

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Env(settings_cls), _RenamedEnv(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return move_renamed_keys(data, RENAMED, what="restrl serve", name=lambda key: f"{env_name(key)} ({key})")

    def admission_limits(self, hw: Hardware | None = None) -> tuple[int, int, str]:
        """(max_concurrent_searches, max_queued, how they were chosen): the settings' values, or
        where one is None the default scaled to ``hw`` (probed when None: `models.hardware`)."""
        if self.max_concurrent_searches is not None and self.max_queued is not None:
            return self.max_concurrent_searches, self.max_queued, "set"
        scaled = scaled_defaults(hw or probe_hardware())
        return (self.max_concurrent_searches or scaled.max_concurrent_searches,
                scaled.max_queued if self.max_queued is None else self.max_queued, scaled.reason)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def setting_rows() -> Iterator[tuple[str, FieldInfo]]:
    """Every leaf setting as (dotted key, field): ``policy.kv_cache_gib``, ..., ``port``."""
    for name, field in Settings.model_fields.items():
        nested = field.annotation if name in NESTED else None
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            for sub, sub_field in nested.model_fields.items():
                yield f"{name}.{sub}", sub_field
        else:
            yield name, field


def _shown(key: str) -> tuple[str, str]:
    """(variable, flag) of a settings key; the checkpoints are RESTRL_POLICY / --policy."""
    key = {"policy.model": "policy", "value.model": "value"}.get(key, key)
    flag = "(env only)" if key in ("admin_token", "api_keys") else f"`--{key.replace('_', '-')}`"
    return f"`{env_name(key)}`", flag


def settings_table() -> str:
    """The documented table of every setting, then the flat names of earlier releases (README and
    docs/api.md hold it as it prints: ``python -c "from server.settings import settings_table as t; print(t())"``)."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for key, field in setting_rows():
        default = field.get_default(call_default_factory=True)
        shown = "(none)" if default == [] else default
        rows.append(f"| {' | '.join(_shown(key))} | `{shown}` | {field.description} |")
    renamed = ["| earlier name (still read, with a warning) | now |", "|---|---|"]
    renamed += [f"| `{env_name(old)}`, `--{old.replace('_', '-')}` | "
                + ", ".join(f"`{env_name(k)}`, `--{k.replace('_', '-')}`" for k in keys) + " |" for old, keys in RENAMED.items()]
    return "\n".join(rows) + "\n\n" + "\n".join(renamed) + "\n"
