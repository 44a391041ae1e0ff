"""The part of vLLM's API that `models.vllm_engine` uses, and its record for the CUDA pin.

`USED` names every vLLM symbol our code touches and the parameters, fields or members it uses of
each (the engine arguments come from `models.vllm_engine.engine_kwargs` on both devices, so a new
argument there is checked without editing this list). `describe()` reads what an installed vLLM
offers for those symbols. ``python -m tests.models.vllm_api --record`` writes that description to
``tests/models/vllm_api_<version>.json``: the record of the CUDA pin (``restrl[gpu]``) that
`tests/models/test_vllm_api.py` checks our use against on machines without it. Re-record on a
host with the CUDA build whenever the pin moves.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# symbol -> (what is compared: params | fields | members, the names our code uses)
_USED_FIXED: dict[str, tuple[str, list[str]]] = {
    "vllm.v1.engine.async_llm.AsyncLLM.from_engine_args": ("params", ["engine_args"]),
    "vllm.v1.engine.async_llm.AsyncLLM.generate": ("params", ["prompt", "sampling_params", "request_id", "lora_request"]),
    "vllm.v1.engine.async_llm.AsyncLLM.abort": ("params", ["request_id"]),
    "vllm.v1.engine.async_llm.AsyncLLM.pause_generation": ("params", ["mode", "clear_cache"]),
    "vllm.v1.engine.async_llm.AsyncLLM.resume_generation": ("params", []),
    "vllm.v1.engine.async_llm.AsyncLLM.check_health": ("params", []),
    "vllm.v1.engine.async_llm.AsyncLLM.reset_prefix_cache": ("params", []),
    "vllm.v1.engine.async_llm.AsyncLLM.get_tokenizer": ("params", []),
    "vllm.v1.engine.async_llm.AsyncLLM.get_num_unfinished_requests": ("params", []),
    "vllm.v1.engine.async_llm.AsyncLLM.shutdown": ("params", []),
    "vllm.v1.engine.async_llm.AsyncLLM.collective_rpc": ("params", ["method", "args"]),
    # inside the worker (`LinearWeightsExtension`, the engine's worker_extension_cls)
    "vllm.v1.worker.gpu_model_runner.GPUModelRunner.get_model": ("params", []),
    "vllm.model_executor.layers.linear.LinearMethodBase.process_weights_after_loading": ("params", ["layer"]),
    "vllm.v1.engine.async_llm.AsyncLLM": ("members", ["errored", "from_engine_args"]),
    "vllm.sampling_params.SamplingParams": ("fields", ["n", "max_tokens", "stop", "temperature", "top_p", "seed", "output_kind"]),
    "vllm.sampling_params.RequestOutputKind": ("members", ["DELTA", "FINAL_ONLY"]),
    "vllm.lora.request.LoRARequest": ("fields", ["lora_name", "lora_int_id", "lora_path"]),
    "vllm.inputs.TokensPrompt": ("fields", ["prompt_token_ids"]),
    "vllm.outputs.RequestOutput": ("fields", ["outputs", "finished", "num_cached_tokens"]),
    "vllm.outputs.CompletionOutput": ("fields", ["index", "text", "token_ids", "finish_reason"]),
    "vllm.v1.engine.exceptions.EngineDeadError": ("members", []),
}
ENGINE_ARGS = "vllm.engine.arg_utils.AsyncEngineArgs"


def used() -> dict[str, tuple[str, list[str]]]:
    """`_USED_FIXED` plus the engine arguments `engine_kwargs` passes on either build, every
    optional field set."""
    from models.config import EngineConfig
    from models.vllm_engine import engine_kwargs

    every = EngineConfig(enable_chunked_prefill=True, max_num_batched_tokens=4096, max_num_seqs=8)
    keys: set[str] = set()
    for on_gpu in (False, True):
        keys |= engine_kwargs(every, model_dir="/m", on_gpu=on_gpu, bf16=True)[0].keys()
    return {**_USED_FIXED, ENGINE_ARGS: ("fields", sorted(keys))}


def _resolve(path: str) -> Any:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def _names(obj: Any, kind: str) -> list[str]:
    if kind == "params":
        return [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
    if kind == "members":
        return sorted(n for n in dir(obj) if not n.startswith("__"))
    if dataclasses.is_dataclass(obj):
        return [f.name for f in dataclasses.fields(obj)]
    if hasattr(obj, "__struct_fields__"):  # msgspec
        return list(obj.__struct_fields__)
    annotated = list(getattr(obj, "__annotations__", {}))
    init = [p for p in inspect.signature(obj.__init__).parameters if p not in ("self", "args", "kwargs")]
    return sorted(set(annotated) | set(init))


def describe() -> dict[str, Any]:
    """What the installed vLLM offers for every symbol of `used` (its version included)."""
    import vllm

    return {"vllm_version": vllm.__version__,
            "symbols": {path: {"kind": kind, "names": _names(_resolve(path), kind)} for path, (kind, _) in sorted(used().items())}}


def record_path(version: str) -> Path:
    return HERE / f"vllm_api_{version}.json"


def main(argv: list[str]) -> int:
    if argv != ["--record"]:
        print("usage: python -m tests.models.vllm_api --record   (writes tests/models/vllm_api_<version>.json)")
        return 2
    described = describe()
    path = record_path(described["vllm_version"])
    kept = json.loads(path.read_text()) if path.exists() else {}  # the wheel's requirements and provenance stay
    path.write_text(json.dumps({**kept, **described}, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
