"""Typed, validated configuration of the policy-training jobs (ReST-GRPO and its baselines).

Defaults follow RESTRL_SPEC.md section 1 except where a field says otherwise: ``max_new_tokens``
defaults to 512 (the spec's 1024 is for GPUs; the CPU experiment sets 128), and LoRA replaces full
fine-tuning by default (``lora: null`` selects full fine-tuning). Every error message says which
field to change and how. A config file is YAML or JSON (`load_config`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.config import EngineConfig, move_renamed_keys, over_job_defaults, set_key
from sandbox.api import SandboxConfig

Algorithm = Literal["rest_grpo", "grpo", "dapo", "rest_dpo"]
LossType = Literal["grpo", "dapo", "dr_grpo", "bnpo"]
Rollouts = Literal["auto", "engine", "trainer"]
DPOLossType = Literal["sigmoid", "ipo", "hinge"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the training problems come from: a JSONL file of `tasks.Problem` rows (e.g. the gym's
    train split written by `restrl tasks gym`, or any loader's output)."""

    train_file: Path = Field(description="JSONL file, one Problem per line, each with at least one test")
    limit: int | None = Field(default=None, ge=1, description="use only the first N problems (after shuffling)")
    shuffle_seed: int | None = Field(default=None, description="shuffle problems with this seed before `limit`")


class SamplingConfig(_Strict):
    """Step 1 (ReST-GRPO and DAPO screening): N programs per problem from the serving engine
    (``policy``: the model, its adapter and the engine's settings)."""

    n: int = Field(default=5, ge=2, description="samples per problem (N); >= 2 or no std exists")
    temperature: float = Field(default=0.7, gt=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=512, ge=8, description="spec: 1024 (GPU); 512 default on CPU")


class FilterConfig(_Strict):
    """Step 3: keep a problem only if its N rewards are diverse."""

    sigma_0: float = Field(default=0.05, ge=0.0, le=0.5, description="drop a problem if population std < sigma_0")


class PartialStateConfig(_Strict):
    """Step 4: partial-solution prompts from the best program's line prefixes."""

    r_0: float = Field(default=0.9, ge=0.0, le=1.0, description="the best program needs reward >= r_0")
    alpha: float = Field(default=0.95, gt=0.0, le=1.0, description="prefix i drawn with weight alpha**(i-1)")
    fraction: float = Field(default=0.5, gt=0.0, le=1.0, description="draw k = ceil(fraction * L) prefixes")
    exclude_full_solution: bool = Field(
        default=True, description="ours: never draw p_L (it yields zero-variance groups); reference: false"
    )
    replacement: bool = Field(default=False, description="ours: draw without replacement; reference: true")
    max_prompt_tokens: int = Field(
        default=768, ge=32, description="longer partial-state prompts lose prefix lines (never statement lines)"
    )


class LoraSettings(_Strict):
    r: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = Field(default=("q_proj", "k_proj", "v_proj", "o_proj"), min_length=1)


PACKED_PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # one vLLM layer each (Llama, Qwen2)


def split_packed_groups(targets: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The first packed group (`PACKED_PROJECTIONS`) that ``targets`` name only part of; () if none."""
    for group in PACKED_PROJECTIONS:
        if 0 < sum(p in targets for p in group) < len(group):
            return group
    return ()


class GRPOUpdateConfig(_Strict):
    """Step 5: the GRPO update with TRL's GRPOTrainer on the curated prompt set. ``rest_dpo`` reads
    the settings every update shares from here too (max_steps, learning_rate, lora, save/logging,
    use_cpu, bf16, torch_threads), so that the arms of a comparison differ only in the algorithm."""

    num_generations: int = Field(default=8, ge=2, description="G: completions per prompt (group size)")
    per_device_batch_size: int = Field(
        default=8, ge=1, description="completions per device per micro-step; (this x processes x grad-accum) % G == 0"
    )
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_steps: int = Field(default=20, ge=1, description="optimizer steps of this iteration (equal across baselines)")
    learning_rate: float = Field(default=1e-5, gt=0.0, description="spec: 1e-7 for 7B full fine-tuning; LoRA needs more")
    beta: float = Field(default=0.04, ge=0.0, description="KL coefficient (0 skips the reference model)")
    epsilon: float = Field(default=0.2, gt=0.0, lt=1.0, description="clip range (lower)")
    epsilon_high: float | None = Field(default=None, gt=0.0, description="clip-higher (DAPO: 0.28); null = epsilon")
    loss_type: LossType = Field(default="dapo", description="token-level normalisation (TRL's 'dapo' = spec)")
    temperature: float = Field(default=0.7, gt=0.0, le=2.0)
    max_completion_length: int = Field(default=512, ge=8)
    rollouts: Rollouts = Field(
        default="auto",
        description="who generates the G completions of each step: engine = the policy's vLLM engine (`policy`), the"
        " trainer's current LoRA weights handed over as a new adapter version every step (training.rollouts); trainer ="
        " TRL's transformers generation inside the trainer (full fine-tuning, or no vLLM); auto = engine when"
        " policy.engine is vllm, vLLM is installed and the update is LoRA, else trainer",
    )
    weight_sync: Literal["auto", "adapter", "merged"] = Field(
        default="auto",
        description="how engine rollouts get the trainer's weights each step (training.rollouts): adapter = a new LoRA"
        " adapter version; merged = the merged weights of the LoRA layers copied into the engine's own layers (sampling"
        " without LoRA: 2.2x faster on vLLM's CPU build); auto = merged on a CPU engine when the LoRA targets cover"
        " whole packed groups (q/k/v, gate/up), else adapter",
    )
    lora: LoraSettings | None = Field(default_factory=LoraSettings, description="null = full fine-tuning")
    save_steps: int = Field(default=1, ge=1, description="checkpoint (resumable state) every N steps")
    save_total_limit: int | None = Field(
        default=2, ge=1, description="keep the newest N trainer checkpoints; null keeps every step (equal-step comparisons)"
    )
    logging_steps: int = Field(default=1, ge=1)
    use_cpu: bool | None = Field(default=None, description="null = CPU unless CUDA is available")
    bf16: bool | None = Field(default=None, description="bf16 training; null = on where it trains on a CUDA GPU with bf16, off on a CPU")
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch CPU threads; null = torch's default. On a shared, oversubscribed CPU set 1: measured"
        " 2026-11-26 at load 24 on 2 cores, generating 8x32 tokens took 22.8 s with 1 thread vs 359 s with 2",
    )


class DAPOConfig(_Strict):
    """Dynamic sampling of the DAPO baseline: screen prompts with G samples from the engine, drop
    zero-std groups and refill from the pool until ``max_steps`` worth of prompts are kept."""

    screen_rounds: int = Field(default=1, ge=1, description="screening passes over the pool")


class DPOUpdateConfig(_Strict):
    """The ReST-DPO baseline (``algorithm: rest_dpo``): from the N programs sampled per problem
    (``sampling``), preference pairs of a higher-reward (passing, where one passes) and a
    lower-reward program of the same problem, trained with TRL's DPOTrainer. Steps, learning rate,
    LoRA and checkpointing come from ``grpo`` (shared by every algorithm)."""

    beta: float = Field(default=0.1, gt=0.0, description="DPO's beta (strength of the implicit KL to the reference)")
    loss_type: DPOLossType = Field(default="sigmoid", description="sigmoid = the DPO paper's loss")
    pairs_per_problem: int = Field(
        default=1, ge=1, description="pairs per problem: the best with the worst, then the 2nd best with the 2nd worst, ..."
        " (only pairs whose rewards differ)",
    )
    per_device_batch_size: int = Field(default=4, ge=1, description="pairs per device per micro-step")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=1024, ge=32, description="prompt + completion tokens of a pair's sequences (truncated beyond)")


# keys of earlier releases -> their place now (still read, with a warning)
RENAMED: dict[str, tuple[str, ...]] = {
    "policy.base_model": ("policy.model",),
    "sampling.engine": ("policy.engine",),
    "sampling.engine_seed": ("policy.seed",),
    "sampling.kv_cache_gib": ("policy.kv_cache_gib",),
}


def _policy() -> EngineConfig:
    return EngineConfig(kv_cache_gib=2.0)


class RestGRPOConfig(_Strict):
    """One training iteration (`restrl train policy --config FILE`)."""

    renamed_keys: ClassVar[dict[str, tuple[str, ...]]] = RENAMED  # keys of earlier releases -> their place now
    algorithm: Algorithm = Field(default="rest_grpo", description="rest_grpo | grpo (vanilla) | dapo | rest_dpo")
    output_dir: Path = Field(description="run directory: samples, curated set, trainer state, metrics, final/")
    seed: int = Field(default=0, description="seeds partial-state draws, shuffling and the trainer")
    data: DataConfig
    policy: EngineConfig = Field(
        default_factory=_policy,
        description="the model being trained (model: its base - a folder or hub id, null = the embedded default; adapter:"
        " the LoRA adapter to start from, the previous iteration's final/, both the sampler and the initial trainable"
        " weights, so iterations chain) and the sampling engine's settings",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    partial_states: PartialStateConfig = Field(default_factory=PartialStateConfig)
    grpo: GRPOUpdateConfig = Field(default_factory=GRPOUpdateConfig)
    dapo: DAPOConfig = Field(default_factory=DAPOConfig)
    dpo: DPOUpdateConfig = Field(default_factory=DPOUpdateConfig)
    sandbox: SandboxConfig = Field(default_factory=lambda: SandboxConfig(timeout_s=5.0))
    distributed_timeout_s: float = Field(
        default=6 * 3600.0, ge=60,
        description="multi-process runs (`accelerate launch`, torchrun): how long a collective may wait. The main"
        " process samples, scores and curates alone while the others wait at a barrier, which takes longer than the"
        " default NCCL timeout (10 min) on a real problem set; this bounds the process group's and the trainer's"
        " (ddp_timeout) waits instead. One process: not used",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        data = move_renamed_keys(data, RENAMED, what="restrl train policy")
        if isinstance(data, dict) and isinstance(data.get("policy"), dict) and data["policy"].get("prompt_mode") == "auto":
            data["policy"] = {k: v for k, v in data["policy"].items() if k != "prompt_mode"}  # auto = the measured default
        return over_job_defaults(cls, data)

    @model_validator(mode="after")
    def _consistent(self) -> RestGRPOConfig:
        g = self.grpo
        effective = g.per_device_batch_size * g.gradient_accumulation_steps
        if effective % g.num_generations:
            raise ValueError(
                f"grpo.per_device_batch_size x grpo.gradient_accumulation_steps = {effective} completions per step"
                f" must be divisible by grpo.num_generations = {g.num_generations}: set per_device_batch_size to a"
                f" multiple of {g.num_generations} (e.g. {g.num_generations * max(1, effective // g.num_generations)})"
            )
        if g.epsilon_high is not None and g.epsilon_high < g.epsilon:
            raise ValueError(f"grpo.epsilon_high ({g.epsilon_high}) must be >= grpo.epsilon ({g.epsilon}) or null")
        if self.algorithm == "dapo" and g.epsilon_high is None:
            raise ValueError("algorithm 'dapo' is clip-higher: set grpo.epsilon_high (DAPO uses 0.28)")
        if g.max_completion_length < 8:
            raise ValueError("grpo.max_completion_length must be >= 8")
        if g.rollouts == "engine":
            if self.policy.engine != "vllm":
                raise ValueError(f"grpo.rollouts 'engine' needs policy.engine 'vllm' (it is {self.policy.engine!r}): set"
                                 " policy.engine to vllm or grpo.rollouts to trainer")
            if g.lora is None and self.policy.adapter is None:
                raise ValueError("grpo.rollouts 'engine' hands the trainer's LoRA adapter to the engine each step; full"
                                 " fine-tuning (grpo.lora: null) has none: set grpo.rollouts to trainer or give grpo.lora")
        if g.weight_sync == "merged" and g.lora is not None and (split := split_packed_groups(g.lora.target_modules)):
            raise ValueError(
                f"grpo.weight_sync 'merged' copies whole layers into the engine, which packs {' + '.join(split)} into one:"
                f" grpo.lora.target_modules must name all of them or none (or set grpo.weight_sync to adapter)")
        if g.rollouts != "trainer" and self.policy.engine == "vllm" and g.lora is not None and g.lora.r > self.policy.max_lora_rank:
            raise ValueError(f"grpo.lora.r={g.lora.r} exceeds policy.max_lora_rank={self.policy.max_lora_rank}, the largest"
                             f" adapter the rollout engine takes: raise policy.max_lora_rank to at least {g.lora.r}")
        if g.rollouts != "trainer" and self.policy.engine == "vllm":
            rollout_len = self.partial_states.max_prompt_tokens + g.max_completion_length
            if self.policy.max_model_len < rollout_len:
                raise ValueError(
                    f"policy.max_model_len={self.policy.max_model_len} is below partial_states.max_prompt_tokens +"
                    f" grpo.max_completion_length = {rollout_len} (the rollout engine's sequences): raise"
                    f" policy.max_model_len to at least {rollout_len}"
                )
        needed = self.partial_states.max_prompt_tokens + self.sampling.max_new_tokens
        if self.policy.max_model_len < needed:
            raise ValueError(
                f"policy.max_model_len={self.policy.max_model_len} is below partial_states.max_prompt_tokens +"
                f" sampling.max_new_tokens = {needed}: raise policy.max_model_len to at least {needed}"
            )
        return self

    @property
    def prompts_per_step(self) -> int:
        """Distinct prompts per optimizer step on one process."""
        return self.grpo.per_device_batch_size * self.grpo.gradient_accumulation_steps // self.grpo.num_generations

    def partial_state_count(self, lines: int) -> int:
        """k = ceil(fraction * L)."""
        return math.ceil(self.partial_states.fraction * lines)


class ConfigError(ValueError):
    """A config file is missing, unparsable or invalid; the message says which field and what to do."""


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: both mean a malformed file
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> RestGRPOConfig:
    """Read a YAML/JSON config file into a validated `RestGRPOConfig`. Relative paths inside it are
    taken relative to the current directory. ``overrides`` (dotted keys) replace fields."""
    raw = _read_mapping(Path(path))
    for dotted, value in (overrides or {}).items():
        set_key(raw, dotted, value, RENAMED, what=f"--set {dotted}")
    try:
        return RestGRPOConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(config)"
            lines.append(f"  {field}: {err['msg']}")
        raise ConfigError(f"{path}: invalid config:\n" + "\n".join(lines)) from None
