"""`HFPolicy`: the transformers policy engine (reference, fallback, and the engine where vLLM is absent).

In: an `EngineConfig` with ``engine="hf"``, a verified model folder, optionally a PEFT LoRA adapter.
Out: a `models.base.Policy` with the same contract as `VLLMPolicy`.

Concurrent `sample` calls are grouped: a single worker task takes every pending request, groups
them by sampling settings and decodes each group as one left-padded batch (up to
``EngineConfig.hf_max_batch`` rows: 64 on a CPU, 256 on a GPU unless set) with a KV cache in a worker thread, so the event loop stays free.
The decoding loop is ours (not ``generate``) so that each request samples from its own
``torch.Generator`` (seeded per request, else the engine's generator seeded with
``EngineConfig.seed``), stop strings end a row as soon as they appear, and cancelling the awaiting
task stops its rows. ``temperature == 0`` is greedy. Weights load in bfloat16 on a CUDA GPU, float32 on
a CPU, unless ``EngineConfig.dtype`` says otherwise. There is no prefix cache
(``cached_prompt_tokens`` is 0).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from models.base import ModelError, Sample, encode_prompt
from models.config import EngineConfig, resolve_device
from models.prompting import PromptMode

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    ids: list[int]
    n: int
    max_tokens: int
    stop: tuple[str, ...]
    temperature: float
    top_p: float
    seed: int | None
    future: asyncio.Future[list[Sample]]
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.max_tokens, self.stop, self.temperature, self.top_p)


class HFPolicy:
    """A `Policy` on transformers. Build with `await HFPolicy.start(...)` (or `models.load_policy`)."""

    engine_name = "hf"

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        config: EngineConfig,
        model_dir: str,
        model_name: str,
        version: str,
        base_model: str,
        prompt_mode: PromptMode,
        adapter_dir: str | None,
    ) -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_dir = model_dir
        self.model_name = model_name
        self.version = version
        self.base_model = base_model
        self.prompt_mode = prompt_mode
        self.adapter_dir = adapter_dir
        self.device = next(model.parameters()).device
        self._max_batch = config.resolved_hf_max_batch(str(self.device))
        self._rng = torch.Generator(device=self.device).manual_seed(config.seed)
        self._pending: list[_Request] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.startup_s = 0.0
        stop_ids = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stop_ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self._eos_ids = {i for i in stop_ids if i is not None}
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

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
    ) -> HFPolicy:
        t0 = time.perf_counter()

        def load() -> tuple[Any, Any]:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = resolve_device(config.hf_device)
            dtype = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[
                config.resolved_dtype(device)
            ]
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
            model = model.to(device)
            if adapter_dir is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter_dir)
            model.eval()
            return model, tokenizer

        model, tokenizer = await asyncio.to_thread(load)
        policy = cls(
            model=model,
            tokenizer=tokenizer,
            config=config,
            model_dir=model_dir,
            model_name=model_name,
            version=adapter_version if adapter_dir is not None and adapter_version else version,
            base_model=base_model,
            prompt_mode=prompt_mode,
            adapter_dir=adapter_dir,
        )
        policy.startup_s = time.perf_counter() - t0
        logger.info("HF policy %s (%s on %s, batches of %d) ready in %.1f s", policy.version, next(model.parameters()).dtype,
                    policy.device, policy._max_batch, policy.startup_s)
        return policy

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
        if self._closed:
            raise ModelError("this policy is closed")
        ids, room = encode_prompt(self.tokenizer, prompt, n=n, max_model_len=self.config.max_model_len)
        greedy = temperature == 0
        request = _Request(
            ids=ids,
            n=1 if greedy else n,
            max_tokens=min(max_tokens, room),
            stop=tuple(stop),
            temperature=temperature,
            top_p=1.0 if greedy else top_p,
            seed=seed,
            future=asyncio.get_running_loop().create_future(),
        )
        self._pending.append(request)
        self._wakeup.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="restrl-hf-policy")
        try:
            samples = await request.future
        except asyncio.CancelledError:
            request.cancelled.set()
            raise
        return samples * n if greedy and n > 1 else samples

    async def _run(self) -> None:
        while not self._closed:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, self._pending = self._pending, []
            groups: dict[tuple[Any, ...], list[_Request]] = {}
            for req in batch:
                if not req.future.done():
                    groups.setdefault(req.key, []).append(req)
            for reqs in groups.values():
                for chunk in self._chunks(reqs):
                    try:
                        results = await asyncio.to_thread(self._decode, chunk)
                    except Exception as exc:  # one failing batch fails its requests only
                        logger.exception("HF decode failed")
                        for req in chunk:
                            if not req.future.done():
                                req.future.set_exception(ModelError(f"HF generation failed: {exc!r}"))
                        continue
                    for req, samples in zip(chunk, results, strict=True):
                        if not req.future.done():
                            req.future.set_result(samples)

    def _chunks(self, reqs: list[_Request]) -> list[list[_Request]]:
        chunks: list[list[_Request]] = []
        rows = 0
        for req in reqs:
            if not chunks or rows + req.n > self._max_batch:
                chunks.append([])
                rows = 0
            chunks[-1].append(req)
            rows += req.n
        return chunks

    def _decode(self, reqs: list[_Request]) -> list[list[Sample]]:
        """Decode one batch of requests sharing sampling settings (runs in a worker thread)."""
        import torch

        first = reqs[0]
        max_tokens, stop, temperature, top_p = first.max_tokens, first.stop, first.temperature, first.top_p
        owners: list[int] = []
        prompts: list[list[int]] = []
        for i, req in enumerate(reqs):
            for _ in range(req.n):
                owners.append(i)
                prompts.append(req.ids)
        generators = [
            torch.Generator(device=self.device).manual_seed(r.seed) if r.seed is not None else self._rng for r in reqs
        ]
        rows_of = [[j for j, o in enumerate(owners) if o == i] for i in range(len(reqs))]
        width = max(len(p) for p in prompts)
        batch = len(prompts)
        input_ids = torch.full((batch, width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for j, p in enumerate(prompts):
            input_ids[j, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[j, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        input_ids, mask, positions = input_ids.to(self.device), mask.to(self.device), positions.to(self.device)
        generated: list[list[int]] = [[] for _ in range(batch)]
        finish: list[str | None] = [None] * batch
        tail = max((len(s) for s in stop), default=0) + 2
        cache = None
        step_ids, step_pos = input_ids, positions
        with torch.inference_mode():
            for _step in range(max_tokens):
                out = self.model(
                    input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=cache, use_cache=True
                )
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float()
                nxt = self._choose(logits, temperature, top_p, generators, rows_of).cpu().tolist()
                for j, tok in enumerate(nxt):
                    if finish[j] is not None:
                        continue
                    if tok in self._eos_ids:
                        finish[j] = "stop"
                        continue
                    generated[j].append(tok)
                    if stop and any(s in self.tokenizer.decode(generated[j][-tail:]) for s in stop):
                        finish[j] = "stop"
                    elif len(generated[j]) >= max_tokens:
                        finish[j] = "length"
                for i, req in enumerate(reqs):
                    if req.cancelled.is_set():
                        for j in rows_of[i]:
                            finish[j] = finish[j] or "abort"
                if all(f is not None for f in finish):
                    break
                step_ids = torch.tensor(nxt, dtype=torch.long, device=self.device).unsqueeze(1)
                step_pos = step_pos[:, -1:] + 1
                mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=self.device)], dim=1)
        results: list[list[Sample]] = []
        for i, req in enumerate(reqs):
            samples = []
            for j in rows_of[i]:
                text = self.tokenizer.decode(generated[j], skip_special_tokens=True)
                hits = [text.find(s) for s in stop if s in text]
                if hits:
                    text = text[: min(hits)]
                samples.append(
                    Sample(
                        text=text,
                        tokens=len(generated[j]) + (1 if finish[j] == "stop" and not hits else 0),
                        finish_reason=finish[j] or "length",  # type: ignore[arg-type]
                        prompt_tokens=len(req.ids),
                    )
                )
            results.append(samples)
        return results

    @staticmethod
    def _choose(logits: Any, temperature: float, top_p: float, generators: list[Any], rows_of: list[list[int]]) -> Any:
        import torch

        if temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        chosen = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
        for gen, rows in zip(generators, rows_of, strict=True):  # sampled where the logits are
            chosen[rows] = torch.multinomial(probs[rows], 1, generator=gen).squeeze(1)
        return chosen

    async def ping(self) -> dict[str, Any]:
        if self._closed:
            raise ModelError("this policy is closed")
        return {"engine": "hf", "version": self.version, "pending_requests": len(self._pending)}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        for req in self._pending:
            if not req.future.done():
                req.future.set_exception(ModelError("policy closed"))
        self._pending = []
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
