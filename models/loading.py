"""Resolve an `EngineConfig` into verified weights and start (or reuse) a policy engine.

In: an `EngineConfig` whose ``model`` is None (the embedded default), a model folder, a LoRA adapter
folder (applied on the base its manifest or ``adapter_config.json`` names) or a Hugging Face Hub id
(`models.checkpoints.model_folder`). Out: a `Policy` from the `POLICY_ENGINES` registry, with a
``version`` naming its weights (``smollm2-135m-instruct@1a2b3c4d+my-adapter@5e6f7a8b``), its
``base_model`` (what a value model's training policy is matched against) and its measured
``prompt_mode``. Every folder is verified (hashed) once per load. With ``reuse`` a running
`VLLMPolicy` on the same base and engine settings, only the adapter differing, the new policy is a
view sharing that engine: the adapter hot-swap route; any other load beside a running policy is
first checked to fit in GPU memory (`models.placement.check_second_engine`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from models.base import CheckpointError, Policy
from models.checkpoints import Manifest, inspect_directory, model_folder, verify_checkpoint
from models.config import EngineConfig
from models.default import DEFAULT_MODEL_NAME, canonical_base, is_default_base, prepare_default_model
from models.hf_engine import HFPolicy
from models.placement import check_second_engine
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
    base_model: str  # what the weights derive from: a manifest's base, else the folder or hub id
    base_source: str  # how to name the base to load it again: its folder, or its hub id
    prompt_mode: PromptMode
    adapter_dir: str | None


@dataclass(frozen=True)
class _Base:
    model_dir: Path
    name: str
    digest: str
    base_model: str
    source: str


def _default_base() -> _Base:
    model_dir = prepare_default_model()
    manifest = verify_checkpoint(model_dir, kind="policy", check_hashes=False)
    return _Base(model_dir, DEFAULT_MODEL_NAME, manifest.digest()[:8], canonical_base(manifest.base), str(model_dir))


def _full_base(source: str, folder: Path) -> _Base:
    manifest, digest = inspect_directory(folder, kind="policy")
    if manifest is not None and manifest.format != "full":
        raise CheckpointError(f"{folder}/restrl.json: field 'format' is '{manifest.format}' but the folder holds a full model")
    local = Path(source).expanduser().exists()
    origin = str(folder) if local else source  # a hub id names the model on every machine; its cache path does not
    return _Base(folder, (folder.name if local else source.rstrip("/").split("/")[-1]).lower(), digest,
                 canonical_base(manifest.base) if manifest is not None else origin, origin)


def adapter_base(adapter: Path, manifest: Manifest | None) -> str | None:
    """The base an adapter folder names: its manifest's ``base``, else PEFT's ``base_model_name_or_path``."""
    if manifest is not None:
        return manifest.base
    try:
        return json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path") or None
    except (OSError, ValueError):
        return None


def _adapter(path_text: str) -> tuple[Path, Manifest | None, str]:
    path = Path(path_text).expanduser().resolve()
    if not (path / "adapter_config.json").exists():
        raise CheckpointError(f"{path / 'adapter_config.json'}: missing (not a PEFT LoRA adapter folder)")
    manifest, digest = inspect_directory(path, kind="policy")
    if manifest is not None and manifest.format != "lora":
        raise CheckpointError(f"{path}/restrl.json: field 'format' is '{manifest.format}', an adapter needs 'lora'")
    return path, manifest, digest


def resolve_weights(cfg: EngineConfig) -> ResolvedWeights:
    """Find, verify (hash once) and name the weights ``cfg`` asks for (converting the default model
    if needed). ``model`` may be an adapter folder: it is then applied on the base it names."""
    adapter_text, model = cfg.adapter, cfg.model
    adapter = None
    if model is not None and (Path(model).expanduser() / "adapter_config.json").exists():
        if adapter_text is not None:
            raise CheckpointError(f"{model}: a LoRA adapter is not a base model; pass its base as model= (adapter= is {adapter_text})")
        adapter = _adapter(model)
        model = adapter_base(*adapter[:2])
        if model is None:
            raise CheckpointError(f"{adapter[0]}: a LoRA adapter naming no base (restrl.json 'base' or adapter_config.json"
                                  " 'base_model_name_or_path'); pass its base as model= and the adapter as adapter=")
    elif adapter_text is not None:
        adapter = _adapter(adapter_text)
    base = _default_base() if is_default_base(model) else _full_base(str(model), model_folder(str(model)))
    base_version = f"{base.name}@{base.digest}"
    version = base_version if adapter is None else f"{base_version}+{adapter[0].name.lower()}@{adapter[2]}"
    return ResolvedWeights(
        model_dir=str(base.model_dir),
        model_name=base.name,
        version=version,
        base_version=base_version,
        base_model=base.base_model,
        base_source=base.source,
        prompt_mode=cfg.prompt_mode or _measured_mode(base.base_model, base.name),
        adapter_dir=str(adapter[0]) if adapter is not None else None,
    )


def _measured_mode(*names: str) -> PromptMode:
    """The measured prompt mode of the first name that is a model we measured (else the fallback)."""
    for candidate in names:
        key = candidate.rstrip("/").split("/")[-1].lower()
        if any(known in key for known in DEFAULT_MODE_BY_MODEL):
            return default_mode(candidate)
    return default_mode(names[-1])


def _same_engine(reuse: Policy, cfg: EngineConfig, weights: ResolvedWeights) -> bool:
    if not isinstance(reuse, VLLMPolicy) or cfg.engine != "vllm" or reuse.model_dir != weights.model_dir:
        return False
    ignore = {"model", "adapter", "prompt_mode"}  # the resolved folder decides the base
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
    if reuse is not None:
        # a new engine beside the running one: refused up front where it cannot fit (never an OOM of the serving engine)
        check_second_engine(cfg)
    engine_cls = POLICY_ENGINES[cfg.engine]
    return await engine_cls.start(
        cfg,
        model_dir=weights.model_dir,
        model_name=weights.model_name,
        version=weights.version if weights.adapter_dir is None else weights.base_version,
        base_model=weights.base_model,
        prompt_mode=weights.prompt_mode,
        adapter_dir=weights.adapter_dir,
        adapter_version=weights.version,
    )
