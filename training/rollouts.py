"""GRPO rollouts from the serving engine with the trainer's current weights, and the step's timings.

In: the prompts of one generation batch (rendered text; TRL's sampler repeats each G times), the
trainer (its step, its PEFT model, its generation settings). Out: TRL's ``rollout_func`` result:
the prompts' token ids (the trainer's tokenizer, as TRL's own generation tokenizes them) and one
completion's token ids per prompt, sampled by the engine (`models.base.RolloutPolicy`, the vLLM
engine we serve with). A stop token (EOS or a token holding the closing code fence) ends a
completion and is kept in it, exactly as in TRL's transformers generation, so the rewards, the
masks and the loss see the same kind of completion either way.

Weight sync, before the first generation of every optimizer step, one of two ways
(``grpo.weight_sync``):

* ``adapter``: the trainer's LoRA weights (the PEFT model's trainable adapter, a few hundred KB) are
  saved to a new folder ``RUN/rollout_adapters/step-N`` and loaded as a new adapter version (a new
  ``LoRARequest`` id) of the engine, which keeps the base weights it started with.
* ``merged``: the merged weights ``W + scale * B @ A`` of every LoRA layer (base weights included:
  the adapter of an earlier iteration too) are written to one safetensors file and copied into the
  engine's own linear layers in its worker (`models.vllm_engine.LinearWeightsExtension`), which then
  samples without a LoRA request. On vLLM's CPU build (no punica kernels) sampling 8 sequences with a
  LoRA request ran 2.2x slower than with plain weights (2026-12-06), so ``auto`` merges there; on
  CUDA it keeps adapters, and merging there is not exercised yet.

Neither way reloads the whole model in place, so the CPU build's packed copy of a tied ``lm_head``
(ENVIRONMENT.md: in-place reloads of tied models give wrong output) never goes stale, and no tensor
crosses ``collective_rpc``. Full fine-tuning (``grpo.lora: null``) has no adapter to hand over: it
generates with the trainer (``policy.engine: hf``).

Departures from TRL's own vLLM modes: TRL's colocate mode merges the adapter into the base weights
and pushes every tensor with ``load_weights`` (wrong for tied embeddings on the CPU build, see
above); its server mode needs a second process and NCCL. No importance-sampling correction is
applied: the rollout's logprobs are not returned, so the update treats the samples as on-policy
(the engine samples in its own dtype, bfloat16 by default, from the same weights; the test
`tests/training/test_rollouts.py` checks that greedy samples after an update equal transformers +
PEFT's).

`StepTimer` splits each optimizer step's wall time into generation, rewards, weight sync and the
rest (forward/backward passes and the optimizer): phases nest, a phase's time excludes the phases
inside it. The job writes the figures to ``metrics.jsonl`` (``time/*_s``) and logs one line per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal, TypeVar

from models.base import RolloutPolicy, SharedEnginePolicy
from models.config import EngineConfig

WeightSync = Literal["auto", "adapter", "merged"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PHASES = ("generation", "rewards", "weight_sync")  # reported per step; the rest is forward/backward + optimizer


class StepTimer:
    """Wall seconds per phase of each optimizer step. ``phase`` blocks nest: time spent in an inner
    phase is charged to it, not to the outer one (weight sync inside generation)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stack: list[list[Any]] = []  # [name, start, seconds of inner phases]
        self._current: dict[str, float] = defaultdict(float)
        self._step_start: float | None = None
        self._done: list[dict[str, float]] = []  # finished steps not yet reported
        self.last: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        with self._lock:
            self._stack.append([name, start, 0.0])
        try:
            yield
        finally:
            with self._lock:
                _, began, inner = self._stack.pop()
                spent = time.perf_counter() - began
                self._current[name] += spent - inner
                if self._stack:
                    self._stack[-1][2] += spent

    def begin_step(self) -> None:
        self._step_start = time.perf_counter()
        self._current.clear()

    def end_step(self) -> dict[str, float]:
        """The finished step's figures: ``step_s``, one ``<phase>_s`` per phase and ``forward_backward_s``."""
        total = time.perf_counter() - self._step_start if self._step_start is not None else 0.0
        row = {"step_s": total}
        for name in PHASES:
            row[f"{name}_s"] = self._current.get(name, 0.0)
        row["forward_backward_s"] = max(0.0, total - sum(row[f"{name}_s"] for name in PHASES))
        self._step_start = None
        self._current.clear()
        self._done.append(row)
        self.last = row
        return row

    def pop_mean(self) -> dict[str, float]:
        """Mean of the steps finished since the last call, keyed ``time/<figure>`` (empty if none)."""
        done, self._done = self._done, []
        if not done:
            return {}
        return {f"time/{key}": sum(r[key] for r in done) / len(done) for key in done[0]}


def step_timer_callback(timer: StepTimer) -> Any:
    """A `transformers.TrainerCallback` that brackets each optimizer step with the timer and logs
    the step's split in one line."""
    from transformers import TrainerCallback

    class StepTiming(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            timer.begin_step()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            row = timer.end_step()
            logger.info(
                "step %d: %.1f s (generation %.1f, rewards %.1f, weight sync %.2f, forward/backward %.1f)",
                state.global_step, row["step_s"], row["generation_s"], row["rewards_s"], row["weight_sync_s"],
                row["forward_backward_s"],
            )

    return StepTiming()


class _LoopThread:
    """An asyncio event loop in a daemon thread: the engine's home while the synchronous trainer runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="restrl-rollouts", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


class EngineRollouts:
    """TRL ``rollout_func``: completions from the engine with the trainer's current LoRA weights.

    `start` launches the engine on the base weights (``engine``'s model, no adapter) and resolves
    ``weight_sync`` (auto: ``merged`` on a CPU engine, else ``adapter``; `sync_mode`); `close` shuts it
    down and removes the adapter folders. ``keep`` adapter folders stay on disk (the engine reads a
    folder when it first uses it)."""

    def __init__(
        self, engine: EngineConfig, *, adapter_root: Path, timer: StepTimer | None = None, keep: int = 2,
        weight_sync: WeightSync = "adapter",
    ) -> None:
        if engine.engine != "vllm":
            raise ValueError(f"engine rollouts need the vllm engine (policy.engine is {engine.engine!r})")
        self.engine_config = engine.model_copy(update={"adapter": None})
        self.adapter_root = adapter_root
        self.timer = timer or StepTimer()
        self.keep = keep
        self.weight_sync = weight_sync
        self.sync_mode: Literal["adapter", "merged"] | None = None  # resolved by `start`
        self._loop: _LoopThread | None = None
        self._base: RolloutPolicy | None = None
        self._view: RolloutPolicy | None = None
        self._synced_step: int | None = None
        self._folders: list[Path] = []
        self.syncs = 0

    @property
    def policy(self) -> RolloutPolicy:
        """The view sampling with the last synced weights (the base before the first sync)."""
        view = self._view or self._base
        if view is None:
            raise RuntimeError("EngineRollouts.start() was not called")
        return view

    def start(self) -> EngineRollouts:
        from models.loading import load_policy

        if self._loop is not None:
            return self
        self._loop = _LoopThread()
        try:
            policy = self._loop.run(load_policy(self.engine_config))
        except BaseException:
            self._loop.stop()
            self._loop = None
            raise
        if not isinstance(policy, RolloutPolicy):
            raise TypeError(f"{type(policy).__name__} cannot serve rollouts (no sample_tokens / with_adapter)")
        self._base = policy
        if self.weight_sync == "auto":
            self.sync_mode = "merged" if getattr(policy, "on_cpu", False) else "adapter"
        else:
            self.sync_mode = self.weight_sync
        if self.adapter_root.exists():
            shutil.rmtree(self.adapter_root)  # folders of an earlier process: never reused by this engine
        self.adapter_root.mkdir(parents=True)
        return self

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            base, self._base, self._view = self._base, None, None
            if isinstance(base, SharedEnginePolicy):
                loop.run(base.shutdown())  # the engine, for every view of it
            elif base is not None:
                loop.run(base.close())
        finally:
            loop.stop()
            shutil.rmtree(self.adapter_root, ignore_errors=True)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            raise RuntimeError("EngineRollouts.start() was not called")
        return self._loop.run(coro)

    def sync(self, model: Any, step: int) -> None:
        """Hand the PEFT ``model``'s current weights to the engine (step ``step``): a new adapter
        version, or its merged linear weights (`sync_mode`)."""
        from peft import PeftModel

        if not isinstance(model, PeftModel):
            raise TypeError("engine rollouts need a PEFT (LoRA) model: with full fine-tuning set policy.engine to hf")
        assert self._base is not None
        with self.timer.phase("weight_sync"):
            if self.sync_mode == "merged":
                self._sync_merged(model, step)
            else:
                self._sync_adapter(model, step)
            self._synced_step = step
            self.syncs += 1

    def _sync_merged(self, model: Any, step: int) -> None:
        from safetensors.torch import save_file

        assert self._base is not None
        path = self.adapter_root / f"step-{step}-{self.syncs}.safetensors"
        save_file(merged_lora_weights(model), str(path))
        try:
            self._run(self._base.load_linear_weights(str(path)))
        finally:
            path.unlink(missing_ok=True)

    def _sync_adapter(self, model: Any, step: int) -> None:
        assert self._base is not None
        folder = self.adapter_root / f"step-{step}-{self.syncs}"
        model.save_pretrained(str(folder), safe_serialization=True)
        view = self._base.with_adapter(str(folder), version=f"rollouts@step{step}")
        self._run(view.load_adapter())
        old, self._view = self._view, view
        if old is not None:
            self._run(old.close())
        self._folders.append(folder)
        while len(self._folders) > self.keep:
            shutil.rmtree(self._folders.pop(0), ignore_errors=True)

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], *, temperature: float, top_p: float, max_tokens: int,
        stop_token_ids: Sequence[int],
    ) -> list[list[int]]:
        """One completion per entry of ``prompt_ids``: identical prompts become one request of n
        samples (TRL repeats each prompt G times), all requests in flight at once."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, ids in enumerate(prompt_ids):
            groups.setdefault(tuple(ids), []).append(i)
        policy = self.policy

        async def all_groups() -> list[list[list[int]]]:
            return list(await asyncio.gather(*(
                policy.sample_tokens(list(ids), n=len(slots), max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                     stop_token_ids=stop_token_ids)
                for ids, slots in groups.items()
            )))

        out: list[list[int]] = [[] for _ in prompt_ids]
        for slots, completions in zip(groups.values(), self._run(all_groups()), strict=True):
            for slot, completion in zip(slots, completions, strict=True):
                out[slot] = completion
        return out

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        """TRL's ``rollout_func(prompts, trainer)``."""
        step = int(trainer.state.global_step)
        if self._synced_step != step:
            self.sync(trainer.accelerator.unwrap_model(trainer.model), step)
        tokenizer = trainer.processing_class
        prompt_ids = tokenizer(text=list(prompts))["input_ids"]
        completion_ids = self.generate(
            prompt_ids,
            temperature=float(trainer.temperature),
            top_p=float(trainer.top_p if trainer.top_p is not None else 1.0),
            max_tokens=int(trainer.max_completion_length),
            stop_token_ids=list(trainer.eos_token_ids),
        )
        return {"prompt_ids": [list(p) for p in prompt_ids], "completion_ids": completion_ids, "logprobs": None}


def merged_lora_weights(model: Any) -> dict[str, Any]:
    """The merged weight ``W + scale * B @ A`` of every LoRA layer of the PEFT ``model``'s active
    adapter, float32, keyed by the base model's module name (``model.layers.0.self_attn.q_proj``).
    Refused for what a merge of these layers would not carry (DoRA, ``modules_to_save``)."""
    import torch
    from peft.tuners.lora import LoraLayer

    adapter = model.active_adapter
    if getattr(model.peft_config[adapter], "modules_to_save", None):
        raise ValueError("merged weight sync hands over LoRA layers only: this adapter also trains modules_to_save"
                         " (set grpo.weight_sync to adapter)")
    out: dict[str, Any] = {}
    with torch.no_grad():
        for name, layer in model.base_model.model.named_modules():
            if not isinstance(layer, LoraLayer) or adapter not in layer.lora_A:
                continue
            module: Any = layer  # a LoRA linear (get_delta_weight is defined per layer type)
            if module.use_dora.get(adapter, False):
                raise ValueError(f"{name}: DoRA layers do not merge into a plain weight here (set grpo.weight_sync to adapter)")
            base = module.get_base_layer().weight
            out[name] = (base.float() + module.get_delta_weight(adapter).float()).contiguous()
    if not out:
        raise ValueError(f"the PEFT model has no LoRA layer of adapter {adapter!r} to hand over")
    return out
