"""Resolve an `EngineConfig` into verified weights and start (or reuse) a policy engine.

In: an `EngineConfig` (``model=None`` = the embedded default). Out: a `Policy` from the
`POLICY_ENGINES` registry, with a ``version`` naming its weights
(``smollm2-135m-instruct@1a2b3c4d+my-adapter@5e6f7a8b``) and its measured ``prompt_mode``.
With ``reuse`` a running `VLLMPolicy` on the same base and engine settings, only the adapter
differing, the new policy is a view sharing that engine: the adapter hot-swap route.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from models.base import CheckpointError, Policy
from models.checkpoints import inspect_directory, verify_checkpoint
from models.config import EngineConfig
from models.default import DEFAULT_MODEL_NAME, prepare_default_model
from models.hf_engine import HFPolicy
from models.prompting import DEFAULT_MODE_BY_MODEL, PromptMode, default_mode
from models.vllm_engine import VLLMPolicy

logger = logging.getLogger(__name__)

POLICY_ENGINES: dict[str, type[VLLMPolicy] | type[HFPolicy]] = {"vllm": VLLMPolicy, "hf": HFPolicy}


@dataclass(frozen=True)
class ResolvedWeights:
    model_dir: str
    model_name: str
    version: str  # base@hash[+adapter@hash]
    base_version: str
    prompt_mode: PromptMode
    adapter_dir: str | None


def resolve_weights(cfg: EngineConfig) -> ResolvedWeights:
    """Find, verify and name the weights ``cfg`` asks for (converting the default model if needed)."""
    if cfg.model is None:
        model_dir = prepare_default_model()
        manifest = verify_checkpoint(model_dir, kind="policy", check_hashes=False)
        name, digest = DEFAULT_MODEL_NAME, manifest.digest()[:8]
        family = manifest.base
    else:
        model_dir = Path(cfg.model).expanduser().resolve()
        manifest_or_none, digest = inspect_directory(model_dir, kind="policy")
        if manifest_or_none is not None and manifest_or_none.format != "full":
            raise CheckpointError(
                f"{model_dir}: a '{manifest_or_none.format}' checkpoint is not a base model; pass it as adapter="
                f" and its base ({manifest_or_none.base}) as model="
            )
        name = model_dir.name.lower()
        family = manifest_or_none.base if manifest_or_none else name
    base_version = f"{name}@{digest}"
    version = base_version
    adapter_dir = None
    if cfg.adapter is not None:
        adapter_path = Path(cfg.adapter).expanduser().resolve()
        if not (adapter_path / "adapter_config.json").exists():
            raise CheckpointError(f"{adapter_path / 'adapter_config.json'}: missing (not a PEFT LoRA adapter folder)")
        adapter_manifest, adapter_digest = inspect_directory(adapter_path, kind="policy")
        if adapter_manifest is not None and adapter_manifest.format != "lora":
            raise CheckpointError(f"{adapter_path}/restrl.json: field 'format' is '{adapter_manifest.format}', an adapter needs 'lora'")
        adapter_dir = str(adapter_path)
        version = f"{base_version}+{adapter_path.name.lower()}@{adapter_digest}"
    mode = cfg.prompt_mode or _measured_mode(family, name)
    return ResolvedWeights(
        model_dir=str(model_dir),
        model_name=name,
        version=version,
        base_version=base_version,
        prompt_mode=mode,
        adapter_dir=adapter_dir,
    )


def _measured_mode(*names: str) -> PromptMode:
    """The measured prompt mode of the first name that is a model we measured (else the fallback)."""
    for candidate in names:
        key = candidate.rstrip("/").split("/")[-1].lower()
        if any(known in key for known in DEFAULT_MODE_BY_MODEL):
            return default_mode(candidate)
    return default_mode(names[-1])


def _same_engine(reuse: object, cfg: EngineConfig, weights: ResolvedWeights) -> bool:
    if not isinstance(reuse, VLLMPolicy) or cfg.engine != "vllm" or reuse.model_dir != weights.model_dir:
        return False
    ignore = {"adapter", "prompt_mode"}
    return reuse.config.model_dump(exclude=ignore) == cfg.model_dump(exclude=ignore)


async def load_policy(cfg: EngineConfig, *, reuse: Policy | None = None) -> Policy:
    """Start the policy ``cfg`` describes; with ``reuse`` a compatible running vLLM policy (same
    base weights and engine settings), return a view sharing its engine instead of a new engine.
    Closing the view leaves the shared engine running for its other holders."""
    weights = resolve_weights(cfg)
    if reuse is not None and _same_engine(reuse, cfg, weights):
        assert isinstance(reuse, VLLMPolicy)
        logger.info("policy %s: adapter swap on the running engine of %s", weights.version, reuse.version)
        return reuse.with_adapter(weights.adapter_dir, version=weights.version, prompt_mode=weights.prompt_mode)
    engine_cls = POLICY_ENGINES[cfg.engine]
    return await engine_cls.start(
        cfg,
        model_dir=weights.model_dir,
        model_name=weights.model_name,
        version=weights.version if weights.adapter_dir is None else weights.base_version,
        prompt_mode=weights.prompt_mode,
        adapter_dir=weights.adapter_dir,
        adapter_version=weights.version,
    )
