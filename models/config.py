"""Typed configuration of the policy (`EngineConfig`) and the value model (`ValueConfig`).

Each is declared once, here, with its defaults, bounds and descriptions; the server's settings and
every job config (eval, collect-values, value training, ReST-GRPO) nest them instead of
re-declaring fields. Both are pydantic models whose validation errors say what to change; a plain
string stands for ``{"model": string}`` (``RESTRL_POLICY=/path``, ``policy: /path`` in YAML).
``model=None`` means the embedded default (`models.default`); the loaders resolve it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.hardware import defaults_for
from models.prompting import PromptMode

logger = logging.getLogger(__name__)

EngineName = Literal["vllm", "hf"]
DType = Literal["auto", "bfloat16", "float16", "float32"]
CpuSharing = Literal["auto", "pause", "concurrent"]


def move_renamed_keys(data: Any, renamed: Mapping[str, tuple[str, ...]], *, what: str,
                      name: Callable[[str], str] = str) -> Any:
    """``data`` (the raw input of a config) with the keys of earlier releases moved to their places
    now - ``{"kv_cache_gib": 2}`` -> ``{"policy": {"kv_cache_gib": 2}}``; old keys may be dotted
    too (``sampling.engine``) - each with a warning naming the new key (``name`` spells it). A
    value set at the new place wins."""
    if not isinstance(data, dict):
        return data
    out = copy.deepcopy(data)
    for old, keys in renamed.items():
        *old_parents, old_leaf = old.split(".")
        holder = out
        for part in old_parents:
            holder = holder.get(part) if isinstance(holder.get(part), dict) else None  # type: ignore[assignment]
            if holder is None:
                break
        if holder is None or old_leaf not in holder:
            continue
        value = holder.pop(old_leaf)
        for key in keys:
            node = out
            *parents, leaf = key.split(".")
            for part in parents:
                child = node.get(part)
                if isinstance(child, BaseModel):
                    child = child.model_dump(exclude_unset=True)
                node[part] = child = dict(_model_shorthand(child) or {})
                node = child
            node.setdefault(leaf, value)
        logger.warning("%s: '%s' is a deprecated name: use %s", what, old, " and ".join(name(k) for k in keys))
    return out


def set_key(data: dict[str, Any], key: str, value: Any, renamed: Mapping[str, tuple[str, ...]] | None = None, *,
            what: str = "config") -> None:
    """Set the dotted ``key`` of a config's raw input to ``value`` (a ``--set KEY=VALUE``), replacing
    what is there; a key of an earlier release (``renamed``) sets its new places, with a warning."""
    keys = (renamed or {}).get(key)
    if keys:
        logger.warning("%s: '%s' is a deprecated name: use %s", what, key, " and ".join(keys))
    for target in keys or (key,):
        node = data
        *parents, leaf = target.split(".")
        for part in parents:
            child = _model_shorthand(node.get(part))
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[leaf] = value


def _deep_merge(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in given.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def over_job_defaults(cls: type[BaseModel], data: Any) -> Any:
    """``data`` (the raw input of a job config) with every nested config given as a partial mapping
    merged over the job's own default for it (``EvalConfig.policy`` defaults to ``max_model_len=2048``:
    ``policy: {kv_cache_gib: 2}`` keeps that), instead of replacing it with the class defaults."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in cls.model_fields.items():
        given = _model_shorthand(out.get(name))
        if field.default_factory is None or not isinstance(given, dict):
            continue
        default = field.default_factory()  # type: ignore[call-arg]
        if isinstance(default, BaseModel):
            out[name] = _deep_merge(default.model_dump(exclude_unset=True), given)
    return out


def _model_shorthand(value: Any) -> Any:
    """A bare string (or path) is the ``model`` field: ``RESTRL_POLICY=/path``, ``policy: /path``."""
    return {"model": value} if isinstance(value, str) else value


class EngineConfig(BaseModel):
    """The policy: which weights, which engine, the engine's resources, placement and parallelism."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None,
        description="the policy: a model folder (transformers checkpoint, with or without restrl.json), a LoRA adapter"
        " folder (applied on the base its restrl.json or adapter_config.json names), or a Hugging Face Hub id (resolved"
        " from the local hub cache, downloaded where the hub is reachable); None = the embedded default SmolLM2-135M-Instruct",
    )
    adapter: str | None = Field(default=None, description="PEFT LoRA adapter folder applied on top of `model`")
    engine: EngineName = Field(default="vllm", description="vllm (AsyncLLM, continuous batching, prefix cache) or hf (transformers)")
    dtype: DType | None = Field(
        default=None,
        description="weights dtype; None = bfloat16 on a CUDA GPU for both engines (float16 on a GPU without bf16), and on"
        " a CPU bfloat16 for vllm (measured fastest on these CPUs), float32 for hf",
    )
    max_model_len: int = Field(default=4096, ge=256, le=131072, description="prompt + generation tokens per sequence")
    kv_cache_gib: float = Field(default=1.0, gt=0, le=1024, description="vLLM KV cache size in GiB (sets VLLM_CPU_KVCACHE_SPACE on CPU)")
    enable_lora: bool = Field(default=True, description="vLLM: allow LoRA adapters per request (the adapter hot-swap route)")
    max_lora_rank: int = Field(default=16, ge=1, le=512, description="vLLM: the largest adapter rank accepted")
    max_loras: int = Field(default=2, ge=1, le=64, description="vLLM: adapters resident at once")
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096,
                                     description="vLLM: sequences batched per step; None = 256 on the CPU build, vLLM's own default on CUDA")
    max_num_batched_tokens: int | None = Field(
        default=None,
        ge=256,
        description="vLLM: tokens per scheduler step; None = max_model_len on the CPU build (where it must be >= max_model_len"
        " while chunked prefill is off), vLLM's own default on CUDA",
    )
    enable_chunked_prefill: bool | None = Field(
        default=None,
        description="vLLM: prefill long prompts in chunks; None = off on the CPU build (per-request seeds crash the CPU engine"
        " on chunked prompts, ENVIRONMENT.md), vLLM's own default (on) on CUDA",
    )
    seed: int = Field(default=0, ge=0, description="engine-level seed (reproducible sampling for unseeded requests)")
    prompt_mode: PromptMode | None = Field(default=None, description="None = the measured default for the model (models.prompting.default_mode)")
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1, description="vLLM on CUDA: fraction of GPU memory to use")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="vLLM on CUDA: GPUs per pipeline stage (tensor parallelism)")
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64, description="vLLM on CUDA: pipeline stages (GPUs = tensor x pipeline)")
    hf_max_batch: int | None = Field(default=None, ge=1, le=4096,
                                     description="hf: sequences generated per forward batch; None = chosen from the hardware"
                                     " (64 on a CPU, 256 on a CUDA GPU: `models.hardware.scaled_defaults`)")
    hf_device: str = Field(default="auto", description="hf: torch device (cpu, cuda, cuda:1, ...); auto = cuda when a GPU is visible")
    gpus: str | None = Field(
        default=None, pattern=r"^\d+(,\d+)*$",
        description="CUDA devices of this engine, e.g. '2,3' (vllm: the CUDA_VISIBLE_DEVICES of its processes; hf: the first"
        " is its device); None = the first tensor x pipeline visible GPUs. Jobs with data_parallel_size > 1 set it per engine",
    )
    data_parallel_size: int | None = Field(
        default=None, ge=1, le=64,
        description="restrl eval / collect-values: engines started, one per group of tensor x pipeline GPUs, problems sharded"
        " across them and results merged; None = as many groups as the visible GPUs hold (1 on a CPU). The server runs one"
        " engine and says so if this is set above 1",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _model_shorthand(data)

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.adapter is not None and self.engine == "vllm" and not self.enable_lora:
            raise ValueError("an adapter needs enable_lora=True with engine='vllm' (or merge the adapter into a full checkpoint)")
        return self

    def resolved_hf_max_batch(self, device: str | None = None) -> int:
        """hf: sequences per forward batch on ``device`` (default: where this engine computes)."""
        if self.hf_max_batch is not None:
            return self.hf_max_batch
        return defaults_for(device or self.device()).hf_max_batch

    def gpus_per_engine(self) -> int:
        """GPUs one engine of this config uses (tensor x pipeline parallelism)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def gpu_indices(self) -> list[int]:
        """The CUDA device indices this engine runs on (``gpus``, else the first tensor x pipeline)."""
        if self.gpus is not None:
            return [int(i) for i in self.gpus.split(",")]
        return list(range(self.gpus_per_engine()))

    def device(self) -> str:
        """Where this engine computes: "cuda" where a GPU is visible (vllm: its CUDA build), else "cpu";
        the hf engine follows ``hf_device``."""
        if self.engine == "hf":
            return resolve_device(self.hf_device)
        return resolve_device("auto")

    def resolved_dtype(self, device: str | None = None, *, bf16: bool | None = None) -> str:
        """The dtype ``dtype`` means on ``device`` (default: where this engine computes; ``bf16``:
        whether that device computes bfloat16 natively, default `native_bf16`): None = bfloat16 on
        a CUDA GPU for both engines (float16 where the GPU has no bf16), on a CPU bfloat16 for vllm
        and float32 for hf."""
        if self.dtype is not None:
            return self.dtype
        device = device or self.device()
        if device.startswith("cuda"):
            return "bfloat16" if (native_bf16(device) if bf16 is None else bf16) else "float16"
        return "bfloat16" if self.engine == "vllm" else "float32"


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_device(device: str) -> str:
    """``device`` with "auto" resolved: cuda when torch sees a GPU, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def native_bf16(device: str) -> bool:
    """True where bfloat16 matrix products run in hardware: a CUDA device that supports bf16, or a
    CPU with AVX512-BF16 or AMX-BF16 (elsewhere torch emulates bf16 on CPUs, slower than float32)."""
    if device.startswith("cuda"):
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def use_bf16(setting: bool | None, device: str, *, native: bool | None = None) -> bool:
    """Whether a training job computes in bfloat16: ``setting`` when given, else on a CUDA device
    that has bf16 (``native``; default `native_bf16`), never by default on a CPU."""
    if setting is not None:
        return setting
    return device.startswith("cuda") and (native_bf16(device) if native is None else native)


DEFAULT_PACK_TOKENS = 384  # tokens per packed value pass on a CPU (`ValueConfig.pack_tokens`)


class ValueConfig(BaseModel):
    """The value model: which weights, how it runs, and how it is served beside the policy (the
    shared batcher and the CPU-sharing rule)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None,
        description="value checkpoint folder (full sequence-classification model, or a LoRA adapter + score head);"
        " None = the value model shipped for the embedded default policy (models/default/value/) when the policy has"
        " that base, else none (see any_policy)",
    )
    use_shipped: bool = Field(
        default=True,
        description="with model None: the shipped adapter when present; False = an untrained head on the default base (what training starts from)",
    )
    base: str | None = Field(
        default=None,
        description="base model (folder or hub id) of a value adapter; None = the one its manifest names. Value training:"
        " the backbone to train on; None = the base of the policy whose rollouts it learns from (a smaller one is allowed)",
    )
    any_policy: bool = Field(
        default=False,
        description="guide the policy with this value model even when it was trained on another policy's rollouts (or,"
        " with model None, with the shipped SmolLM2 value model for a policy of another base); off = such a pairing is"
        " refused: the server answers searches with 400 (plain completions still work), jobs stop with an error",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="weights dtype; auto = bfloat16 where the device computes it natively (a CUDA GPU with bf16, a CPU with"
        " AVX512-BF16 or AMX), else float32. float32 scores do not depend on the batch a state is scored in; bfloat16 ones"
        " move by up to ~0.03 with it, at the same held-out accuracy (`python -m bench.value --agreement`)",
    )
    batch_size: int | None = Field(default=None, ge=1, le=4096,
                                   description="states per forward pass (padded batches, pack_tokens=0); None = 16 on a CPU, 64 on"
                                   " a CUDA GPU (`models.hardware.scaled_defaults`)")
    pack_tokens: int | None = Field(
        default=None,
        ge=0,
        le=65536,
        description="a batch's states of one problem run as a prefix tree (each shared token once, no padding, an"
        " ancestor mask) in passes of up to this many tokens instead of right-padded batches; 0 = padded; None = 384 on"
        " a CPU (1.5x cheaper than padded sharing there, `python -m bench.value`), 0 on a GPU (unmeasured; masked"
        " batches ran 2.6-6x slower on an H100)",
    )
    max_length: int = Field(default=1024, ge=64, le=131072, description="tokens per state; the state is cut from the left, the problem kept")
    seed: int = Field(default=0, ge=0, description="seed of an untrained head's initialisation")
    prefix_cache_mb: int = Field(
        default=256, ge=0, le=1 << 20,
        description="memory for cached keys/values of problem heads (shared by all states of a problem); 0 = keep nothing between"
        " calls (padded scoring then computes every input in full; packed scoring still shares tokens within a call)",
    )
    device: str = Field(default="auto", description="torch device (cpu, cuda, cuda:1, ...); auto = cuda when a GPU is visible, else cpu")
    threads: int = Field(
        default=0, ge=0, le=4096,
        description="on a CPU device: torch threads of a scoring call; 0 = all the CPUs this process may use where value"
        " batches pause the engine (cpu_sharing), else half of them, at least 1 - the engine runs beside it on the rest",
    )

    cpu_sharing: CpuSharing = Field(
        default="auto",
        description="how the value model shares CPU cores with the policy engine: pause = each value batch pauses the (vLLM)"
        " engine and uses all cores; concurrent = both run at once; auto = pause when both compute on the CPU (vLLM CPU"
        " build, value device cpu)",
    )
    batch_max: int | None = Field(default=None, ge=1, le=4096,
                                  description="value batcher: most states per scoring call, all searches together; None = 32 on a"
                                  " CPU, 256 on a CUDA GPU (`models.hardware.scaled_defaults`)")
    gpu_memory_gib: float | None = Field(
        default=None, gt=0, le=4096,
        description="GPU memory the value model needs beside the policy engine (weights, activations of a batch, prefix cache);"
        " None = estimated from its files and settings (`models.placement.value_memory_bytes`). On the GPU of a vLLM engine,"
        " vLLM's gpu_memory_utilization is lowered by it",
    )
    batch_wait_ms: float = Field(default=2.0, ge=0, le=1000, description="value batcher: how long a batch waits to fill")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _model_shorthand(data)

    def resolved_device(self) -> str:
        """The torch device ``device`` means here."""
        return resolve_device(self.device)

    def resolved_dtype(self) -> Literal["float32", "bfloat16"]:
        """The dtype ``dtype`` means on ``device`` (see `native_bf16`)."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if native_bf16(self.resolved_device()) else "float32"

    def resolved_batch_size(self, device: str | None = None) -> int:
        """States per forward pass on ``device`` (default: the configured one)."""
        if self.batch_size is not None:
            return self.batch_size
        return defaults_for(device or self.resolved_device()).value_batch_size

    def resolved_batch_max(self, device: str | None = None) -> int:
        """The batcher's most states per scoring call on ``device`` (default: the configured one)."""
        if self.batch_max is not None:
            return self.batch_max
        return defaults_for(device or self.resolved_device()).value_batch_max

    def resolved_pack_tokens(self, device: str | None = None) -> int:
        """The packing ``pack_tokens`` means on ``device`` (default: the configured one): 0 = padded batches."""
        if self.pack_tokens is not None:
            return self.pack_tokens
        return 0 if (device or self.resolved_device()).startswith("cuda") else DEFAULT_PACK_TOKENS
