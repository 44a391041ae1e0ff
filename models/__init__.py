"""Policies, value models, prompt formatting, checkpoints and the bundled default model.

In: an `EngineConfig` / `ValueConfig` (which engine, which weights: a full model folder, a PEFT LoRA
adapter, or None for the embedded SmolLM2-135M-Instruct converted once into ``$RESTRL_CACHE``),
`tasks.Problem`s and search states. Out: a `Policy` (`load_policy`: `VLLMPolicy` on vLLM's
`AsyncLLM` or `HFPolicy` on transformers, chosen from `POLICY_ENGINES`) whose ``sample`` returns
`Sample`s with usage (`VLLMPolicy` also streams `SampleDelta`s token by token: `StreamingPolicy`),
and a `ValueModel` (`load_value_model`: `HFValueModel`) whose ``score``
returns values in [0, 1]; both carry a ``version`` naming their weights. Prompts come from
`models.prompting` only; checkpoints are verified against their ``restrl.json`` manifest
(`verify_checkpoint`) before any weights load. vLLM is imported lazily, only by
`models.vllm_engine`, so this package imports without it.
"""

from models.base import (
    CheckpointError,
    EngineDeadError,
    ModelError,
    Policy,
    Sample,
    SampleDelta,
    StreamingPolicy,
    ValueModel,
)
from models.checkpoints import Manifest, locate_checkpoint, read_manifest, verify_checkpoint, write_manifest
from models.config import EngineConfig, ValueConfig
from models.default import default_model_path, prepare_default_model
from models.hf_engine import HFPolicy
from models.loading import POLICY_ENGINES, load_policy, resolve_weights
from models.value import HFValueModel, load_value_model
from models.vllm_engine import VLLMPolicy

__all__ = [
    "POLICY_ENGINES",
    "CheckpointError",
    "EngineConfig",
    "EngineDeadError",
    "HFPolicy",
    "HFValueModel",
    "Manifest",
    "ModelError",
    "Policy",
    "Sample",
    "SampleDelta",
    "StreamingPolicy",
    "VLLMPolicy",
    "ValueConfig",
    "ValueModel",
    "default_model_path",
    "load_policy",
    "load_value_model",
    "locate_checkpoint",
    "prepare_default_model",
    "read_manifest",
    "resolve_weights",
    "verify_checkpoint",
    "write_manifest",
]
