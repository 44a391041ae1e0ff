"""Where the value model runs beside a vLLM engine on CUDA, and whether a second engine fits.

vLLM on a GPU reserves ``gpu_memory_utilization`` of every GPU it runs on (weights, activations,
then the KV cache fills the rest of that fraction). A value model on one of those GPUs needs memory
outside the fraction, and a full-checkpoint hot swap starts a second engine that asks for the same
fraction again beside the running one. Left alone, either ends in a CUDA out-of-memory error of
the serving engine. Here:

* `plan_value_placement` (pure: devices with free/total memory and sizes in, a `ValuePlacement`
  out): an explicit ``ValueConfig.device`` wins; with ``auto`` the value model goes to a visible GPU
  the engine does not use when one has room, else onto the engine's first GPU, and vLLM's fraction
  is lowered so that the value model's need fits beside it. Too little room for both raises
  `InsufficientMemory` naming the settings to change.
* `second_engine_room` (pure): why a second engine cannot start beside the running one (None
  when it can); `models.load_policy` refuses such a full-weight swap before loading anything, and
  the server answers it with 400 (`server.errors.SwapFailed`) while the running pair serves on.
* `value_memory_bytes`: the value model's need, ``ValueConfig.gpu_memory_gib`` or an estimate from
  its files (weights in the dtype it loads in, one padded batch's activations, its prefix cache).
* `place_models`: the two configs adjusted for this machine (`models.hardware.probe_hardware`);
  a no-op without CUDA or with the hf engine (which reserves nothing up front).

Nothing here runs a model; only `probe_hardware` touches CUDA.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.base import ModelError
from models.config import EngineConfig, ValueConfig
from models.hardware import GPU, GiB, Hardware, probe_hardware

logger = logging.getLogger(__name__)

MARGIN_BYTES = 768 << 20  # a process's CUDA context and allocator slack beside the value model's own tensors
MIN_ENGINE_FRACTION = 0.2  # below this vLLM has no room for a useful KV cache: refuse instead
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


class InsufficientMemory(ModelError):
    """The models asked for do not fit in the GPU memory there is (nothing was loaded)."""


@dataclass(frozen=True)
class ValuePlacement:
    device: str  # the value model's torch device
    gpu_memory_utilization: float  # vLLM's fraction with the value model accounted for
    note: str  # what the operator reads in the log ("" when nothing changed)


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _index(device: str) -> int | None:
    """The CUDA index of a torch device string ("cuda" -> 0), None for a non-CUDA device."""
    if not device.startswith("cuda"):
        return None
    return int(device.split(":", 1)[1]) if ":" in device else 0


def plan_value_placement(gpus: Sequence[GPU], *, engine_gpus: Sequence[int], fraction: float, value_bytes: int,
                         value_device: str = "auto") -> ValuePlacement:
    """Where a value model of ``value_bytes`` runs beside a vLLM engine on ``engine_gpus`` at
    ``fraction`` (the memory numbers are those before either loads), and the fraction to start
    vLLM with (see the module doc)."""
    by_index = {g.index: g for g in gpus}
    if not gpus:
        return ValuePlacement("cpu" if value_device == "auto" else value_device, fraction, "")
    need = value_bytes + MARGIN_BYTES
    if value_device == "auto":
        spare = [g for g in gpus if g.index not in engine_gpus and g.free_bytes >= need]
        if spare:
            best = max(spare, key=lambda g: g.free_bytes)
            return ValuePlacement(f"cuda:{best.index}", fraction,
                                  f"value model on cuda:{best.index}, a GPU the policy engine does not use ({_gib(best.free_bytes)} free)")
        device = f"cuda:{engine_gpus[0]}"
    else:
        device = value_device
    index = _index(device)
    if index is None or index not in engine_gpus:
        if index is not None and index in by_index and by_index[index].free_bytes < need:
            raise InsufficientMemory(f"the value model needs about {_gib(need)} on {device}, which has {_gib(by_index[index].free_bytes)}"
                                     " free: set RESTRL_VALUE__DEVICE to another device (cpu works) or a smaller value model")
        return ValuePlacement(device, fraction, "")
    gpu = by_index.get(index)
    if gpu is None:
        raise InsufficientMemory(f"value device {device}: no such GPU (visible: {sorted(by_index)})")
    room = math.floor((gpu.free_bytes - need) / gpu.total_bytes * 100) / 100
    if room < MIN_ENGINE_FRACTION:
        raise InsufficientMemory(
            f"the value model needs about {_gib(need)} on {device} beside the vLLM engine, leaving it"
            f" gpu_memory_utilization={max(room, 0):.2f} of {_gib(gpu.total_bytes)} ({_gib(gpu.free_bytes)} free):"
            " set RESTRL_VALUE__DEVICE to a GPU the engine does not use (or cpu), or use a smaller value model")
    if room >= fraction:
        return ValuePlacement(device, fraction, f"value model on {device} beside the vLLM engine (room for both at"
                                                f" gpu_memory_utilization={fraction:.2f})")
    return ValuePlacement(device, room, f"value model on {device} beside the vLLM engine: gpu_memory_utilization lowered"
                                        f" from {fraction:.2f} to {room:.2f} to leave it about {_gib(need)}")


def second_engine_room(gpus: Sequence[GPU], *, engine_gpus: Sequence[int], fraction: float) -> str | None:
    """Why a second vLLM engine at ``fraction`` of each of ``engine_gpus`` cannot start now (the
    running one holds its share already: ``gpus`` are the free bytes now), or None when it fits."""
    by_index = {g.index: g for g in gpus}
    for index in engine_gpus:
        gpu = by_index.get(index)
        if gpu is None:
            return f"cuda:{index} is not visible"
        if gpu.free_bytes < fraction * gpu.total_bytes:
            return (f"a full-weight swap starts a second vLLM engine beside the running one; it needs"
                    f" gpu_memory_utilization={fraction:.2f} x {_gib(gpu.total_bytes)} = {_gib(fraction * gpu.total_bytes)} on cuda:{index},"
                    f" which has {_gib(gpu.free_bytes)} free. Swap in a LoRA adapter (served on the running engine), restart"
                    " the server on the new checkpoint (RESTRL_POLICY), or run it with RESTRL_POLICY__GPU_MEMORY_UTILIZATION"
                    " below 0.5 so that two engines fit")
    return None


def estimate_value_bytes(*, weight_bytes: int, stored_bytes_per_param: int, bytes_per_param: int, hidden: int,
                         intermediate: int, batch: int, max_length: int, prefix_cache_mb: int) -> int:
    """A value model's GPU memory: its weights in the dtype it loads in, the activations of one
    padded batch through one layer (inference keeps one layer's at a time), and its prefix cache."""
    weights = weight_bytes * bytes_per_param // max(stored_bytes_per_param, 1)
    activations = batch * max_length * (4 * hidden + 2 * intermediate) * bytes_per_param * 2
    return int(weights + activations + prefix_cache_mb * (1 << 20))


def _weights_and_config(folder: Path) -> tuple[int, dict[str, object]]:
    weights = sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in folder.glob(pattern))
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    return weights, config


def value_memory_bytes(cfg: ValueConfig, device: str = "cuda") -> int:
    """The GPU memory the value model ``cfg`` names needs (``gpu_memory_gib`` when set, else
    `estimate_value_bytes` from its files; an adapter counts its base's weights)."""
    if cfg.gpu_memory_gib is not None:
        return int(cfg.gpu_memory_gib * GiB)
    from models.checkpoints import read_manifest
    from models.value import resolve_value_base, shipped_value_dir

    source = Path(cfg.model).expanduser() if cfg.model is not None else shipped_value_dir(cfg)
    folder = source
    if source is None or (source / "adapter_config.json").exists():
        base = cfg.base
        if base is None and source is not None and (source / "restrl.json").exists():
            base = read_manifest(source).base
        folder = resolve_value_base(base)
    assert folder is not None
    weights, config = _weights_and_config(folder)
    if source is not None and source != folder:
        weights += _weights_and_config(source)[0]
    stored = _DTYPE_BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), 4)
    return estimate_value_bytes(
        weight_bytes=weights, stored_bytes_per_param=stored, bytes_per_param=_DTYPE_BYTES[cfg.resolved_dtype()],
        hidden=int(config.get("hidden_size", 1024)),  # type: ignore[call-overload]
        intermediate=int(config.get("intermediate_size", 4096)),  # type: ignore[call-overload]
        batch=cfg.resolved_batch_size(device), max_length=cfg.max_length, prefix_cache_mb=cfg.prefix_cache_mb)


def place_models(engine: EngineConfig, value: ValueConfig, hw: Hardware | None = None) -> tuple[EngineConfig, ValueConfig, str]:
    """``engine`` and ``value`` adjusted for the memory of this machine's GPUs (``hw``: probed when
    None): the value model's device resolved and vLLM's fraction lowered for it where they share a
    GPU (`plan_value_placement`). Unchanged without CUDA or for the hf engine."""
    if engine.engine != "vllm" or (hw is None and engine.device() != "cuda"):
        return engine, value, ""
    hw = hw or probe_hardware()
    if not hw.gpus:
        return engine, value, ""
    if value.device != "auto" and _index(value.device) is None:
        return engine, value, ""  # an explicit CPU (or other) device: nothing shares the GPU
    plan = plan_value_placement(hw.gpus, engine_gpus=engine.gpu_indices(), fraction=engine.gpu_memory_utilization,
                                value_bytes=value_memory_bytes(value), value_device=value.device)
    if plan.note:
        logger.info("placement: %s", plan.note)
    engine_out = engine if plan.gpu_memory_utilization == engine.gpu_memory_utilization else engine.model_copy(
        update={"gpu_memory_utilization": plan.gpu_memory_utilization})
    return engine_out, value.model_copy(update={"device": plan.device}), plan.note


def check_second_engine(engine: EngineConfig, hw: Hardware | None = None) -> None:
    """Raise `InsufficientMemory` when a second vLLM engine of ``engine`` cannot start beside the
    running one on this machine's GPUs (a no-op without CUDA: the CPU build's KV cache is sized in
    GiB, ``kv_cache_gib``)."""
    if engine.engine != "vllm" or (hw is None and engine.device() != "cuda"):
        return
    hw = hw or probe_hardware()
    if not hw.gpus:
        return
    reason = second_engine_room(hw.gpus, engine_gpus=engine.gpu_indices(), fraction=engine.gpu_memory_utilization)
    if reason is not None:
        raise InsufficientMemory(reason)


def check_value_fits(value: ValueConfig, hw: Hardware | None = None) -> None:
    """Raise `InsufficientMemory` when the value model ``value`` cannot load on its CUDA device now
    (a value swap loads the new model beside the serving one); a no-op on a CPU device."""
    index = _index(value.resolved_device())
    if index is None:
        return
    hw = hw or probe_hardware()
    gpu = next((g for g in hw.gpus if g.index == index), None)
    need = value_memory_bytes(value) + MARGIN_BYTES
    if gpu is not None and gpu.free_bytes < need:
        raise InsufficientMemory(f"the value model needs about {_gib(need)} on cuda:{index}, which has {_gib(gpu.free_bytes)}"
                                 " free beside the serving models: free memory first (restart on the new value model) or load it"
                                 " on another device (RESTRL_VALUE__DEVICE)")
