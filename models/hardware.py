"""What this machine offers, and the defaults that scale with it.

In: nothing (`probe_hardware` reads ``torch.cuda`` where CUDA exists, else only the CPU count).
Out: a `Hardware` description (GPUs with their free and total memory, CPUs) and the
`ScaledDefaults` chosen from it. Everything but `probe_hardware` is a pure function of a
`Hardware`, so the choices are tested with given numbers on a machine without a GPU.

The defaults (each setting that is None means "chosen here"; a set value always wins):

| setting | CPU | CUDA GPU | why |
|---|---|---|---|
| ``max_concurrent_searches`` (server) | 4 | 32 (16 below 40 GiB) | a VM-MCTS search keeps ~10 sequences in flight; vLLM batches hundreds per step on a GPU, 2 CPU cores saturate at a few |
| ``max_queued`` (server) | 16 | 4 x concurrency | the same few seconds of queue |
| ``value.batch_max`` | 32 | 256 | value scoring on an H100: 1,260 states/s at batch 256 (SmolLM2 shape) |
| ``value.batch_size`` | 16 | 64 | one padded forward pass |
| ``policy.hf_max_batch`` | 64 | 256 | transformers ``generate`` throughput keeps growing to batch 256 on a GPU |
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

logger = logging.getLogger(__name__)

GiB = 1 << 30


@dataclass(frozen=True)
class GPU:
    """One visible CUDA device (``index`` as torch numbers it) and its memory now."""

    index: int
    free_bytes: int
    total_bytes: int
    name: str = ""
    bf16: bool = True


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPU, ...] = ()
    cpus: int = 1

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"

    def describe(self) -> str:
        if not self.gpus:
            return f"{self.cpus} CPU cores, no GPU"
        names = sorted({g.name or "GPU" for g in self.gpus})
        return f"{len(self.gpus)} CUDA GPU(s) ({', '.join(names)}, {min(g.total_bytes for g in self.gpus) / GiB:.0f} GiB)"


def probe_hardware() -> Hardware:
    """The GPUs torch sees (with ``torch.cuda.mem_get_info``) and the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import torch
    except ImportError:  # pragma: no cover
        return Hardware(cpus=cpus)
    if not torch.cuda.is_available():
        return Hardware(cpus=cpus)
    gpus = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(GPU(index=i, free_bytes=int(free), total_bytes=int(total), name=torch.cuda.get_device_name(i),
                        bf16=bool(torch.cuda.is_bf16_supported())))
    return Hardware(gpus=tuple(gpus), cpus=cpus)


@dataclass(frozen=True)
class ScaledDefaults:
    """The defaults chosen for a `Hardware` (see the module doc)."""

    max_concurrent_searches: int
    max_queued: int
    value_batch_max: int
    value_batch_size: int
    hf_max_batch: int
    reason: str


CPU_DEFAULTS = ScaledDefaults(4, 16, 32, 16, 64, reason="sized for a few CPU cores")
GPU_DEFAULTS = ScaledDefaults(32, 128, 256, 64, 256, reason="sized for a GPU")


def defaults_for(device: str) -> ScaledDefaults:
    """The defaults of a device kind ("cpu", "cuda", "cuda:1", ...) regardless of its memory."""
    return GPU_DEFAULTS if device.startswith("cuda") else CPU_DEFAULTS


def scaled_defaults(hw: Hardware) -> ScaledDefaults:
    """The serving concurrency and batch sizes for ``hw`` (see the module doc)."""
    if not hw.gpus:
        return replace(CPU_DEFAULTS, reason=f"{hw.describe()}: {CPU_DEFAULTS.reason}")
    concurrency = 16 if min(g.total_bytes for g in hw.gpus) < 40 * GiB else GPU_DEFAULTS.max_concurrent_searches
    return replace(GPU_DEFAULTS, max_concurrent_searches=concurrency, max_queued=4 * concurrency,
                   reason=f"{hw.describe()}: {GPU_DEFAULTS.reason}")
