"""GPU throughput check: transformers generation and our value-model scoring on random-init models.

Run on a CUDA machine (the lent H100): ``python -m bench.gpu_check --out gpu.json``; on a CPU
with ``--tiny`` it runs the same code on toy shapes (a smoke test). Needs torch + transformers;
our value-model path (`models.value.HFValueModel`) is used when `models` imports (it needs
pydantic), else the same computation inline. No weights are downloaded: the models are randomly
initialised with the shapes of SmolLM2-135M (LlamaConfig) and Qwen2.5-1.5B (Qwen2Config), so
tokens/s and states/s are meaningful while the text is not.

Measured per shape: ``generate`` tokens/s at batch 64 and 256 x 128 new tokens (bf16, greedy,
``min_new_tokens`` forcing the full length), our `HFPolicy` decode loop at batch 64, and value
scoring states/s at batch 64 x 512 tokens, and on search-shaped states (a cached head, expansions
of rollouts of different lengths) in padded rows vs as a prefix tree (decides the CUDA default of
`ValueConfig.pack_tokens`).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import platform
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        kind="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    ),
    "qwen2.5-1.5b": dict(
        kind="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    ),
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=512)


def make_config(name: str, tiny: bool) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    spec = dict(SHAPES[name])
    kind = spec.pop("kind")
    if tiny:
        spec.update(TINY)
    cls = LlamaConfig if kind == "llama" else Qwen2Config
    return cls(**spec, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_generate(model: Any, *, batch: int, prompt_len: int, new_tokens: int, device: str) -> float:
    import torch

    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, prompt_len), device=device, generator=torch.Generator(device=device).manual_seed(0))
    mask = torch.ones_like(ids)
    kwargs = dict(do_sample=False, pad_token_id=2, eos_token_id=2)
    with torch.inference_mode():
        model.generate(input_ids=ids[:, :8], attention_mask=mask[:, :8], max_new_tokens=4, min_new_tokens=4, **kwargs)
        sync(device)
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        sync(device)
    dt = time.perf_counter() - t0
    produced = (out.shape[1] - prompt_len) * batch
    return produced / dt


class _IdTokenizer:
    """Enough of a tokenizer for `HFPolicy` on random ids: prompts are space-separated ids."""

    eos_token_id = 2
    pad_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


def bench_policy_loop(model: Any, *, batch: int, prompt_len: int, new_tokens: int, device: str) -> float | None:
    """Our `HFPolicy` decoding loop (grouped requests, per-request generators), sampling at T=0.7."""
    try:
        from models.config import EngineConfig
        from models.hf_engine import HFPolicy
    except ImportError as exc:
        print(f"  (HFPolicy loop skipped: {exc})", file=sys.stderr)
        return None
    import random

    rng = random.Random(0)
    policy = HFPolicy(
        model=model,
        tokenizer=_IdTokenizer(),
        config=EngineConfig(engine="hf", hf_max_batch=batch, max_model_len=max(256, prompt_len + new_tokens + 8)),
        model_dir="random",
        model_name="random",
        version="random",
        base_model="random",
        prompt_mode="rewrite",
        adapter_dir=None,
    )
    policy._eos_ids = set()  # random weights: force the full length, as generate's min_new_tokens does

    async def run(requests: int, n: int, tokens: int) -> int:
        prompts = [" ".join(str(rng.randrange(3, model.config.vocab_size)) for _ in range(prompt_len)) for _ in range(requests)]
        outs = await asyncio.gather(*[policy.sample(p, n=n, max_tokens=tokens, temperature=0.7, seed=i) for i, p in enumerate(prompts)])
        return sum(s.tokens for o in outs for s in o)

    async def timed() -> float:
        await run(2, 2, 4)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        produced = await run(batch // 4, 4, new_tokens)
        sync(device)
        await policy.close()
        return produced / (time.perf_counter() - t0)

    return asyncio.run(timed())


def bench_value(cfg: Any, *, batch: int, length: int, rounds: int, device: str) -> tuple[float, float, str, dict[str, float]]:
    import torch
    from transformers import AutoModelForSequenceClassification

    cfg = copy.deepcopy(cfg)
    cfg.num_labels = 1
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.bfloat16)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    encoded = [torch.randint(3, cfg.vocab_size, (length - (i % 7),), generator=gen).tolist() for i in range(batch * rounds)]
    try:
        from models.config import ValueConfig
        from models.value import HFValueModel

        value = HFValueModel(
            model=model,
            tokenizer=SimpleNamespace(pad_token_id=2),
            config=ValueConfig(batch_size=batch, max_length=length, device=device, dtype="bfloat16"),
            version="random",
            trained=False,
        )
        forward: Callable[..., list[float]] = value._forward
        path = "models.value.HFValueModel"
    except ImportError:
        path = "inline (models not importable)"

        def forward(enc: list[list[int]], heads: list[list[int]] | None = None) -> list[float]:
            out: list[float] = []
            with torch.inference_mode():
                for s in range(0, len(enc), batch):
                    chunk = enc[s : s + batch]
                    width = max(len(e) for e in chunk)
                    ids = torch.full((len(chunk), width), 2, dtype=torch.long)
                    mask = torch.zeros_like(ids)
                    for r, e in enumerate(chunk):
                        ids[r, : len(e)] = torch.tensor(e)
                        mask[r, : len(e)] = 1
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                    out += logits[:, 0].float().clamp(0, 1).cpu().tolist()
            return out

    forward(encoded[:batch])
    sync(device)
    t0 = time.perf_counter()
    scores = forward(encoded)
    sync(device)
    padded = len(encoded) / (time.perf_counter() - t0)
    assert len(scores) == len(encoded) and all(0.0 <= s <= 1.0 for s in scores)
    equal = [e[:length - 6] for e in encoded]  # same lengths: no padding, the mask is all ones
    t0 = time.perf_counter()
    forward(equal)
    sync(device)
    unpadded = len(equal) / (time.perf_counter() - t0)
    shaped = search_shaped_value(value, length=length, rounds=rounds, device=device) if path.startswith("models") else {}
    return padded, unpadded, path, shaped


def search_shaped_value(value: Any, *, length: int, rounds: int, device: str) -> dict[str, float]:
    """States/s of what VM-MCTS sends (per problem: a cached head, expansions of 5 rollouts of
    different lengths sharing their parent state, each also scored as its first-line child),
    scored in padded rows (``pack_tokens=0``, the CUDA default) and as a prefix tree (the CPU
    default): the measurement that decides the CUDA default."""
    import random

    from models.config import DEFAULT_PACK_TOKENS

    rng = random.Random(0)
    vocab = value.model.config.vocab_size
    head_len, parent_len = length // 4, length // 16
    encoded: list[list[int]] = []
    heads: list[list[int]] = []
    for _problem in range(rounds * 2):
        head = [rng.randrange(3, vocab) for _ in range(head_len)]
        for _ in range(3):  # expansions
            parent = head + [rng.randrange(3, vocab) for _ in range(parent_len)]
            for _ in range(5):
                rollout = parent + [rng.randrange(3, vocab) for _ in range(rng.randint(8, length - head_len - parent_len))]
                child = rollout[: len(parent) + 6]
                encoded += [child, rollout]
                heads += [head, head]
    out: dict[str, float] = {}
    for name, pack in (("padded", 0), ("tree", DEFAULT_PACK_TOKENS)):
        model = value.sharing_weights(pack_tokens=pack)
        model._forward(encoded[:20], heads[:20])
        model.clear_prefix_cache()
        sync(device)
        t0 = time.perf_counter()
        model._forward(encoded, heads)
        sync(device)
        out[f"search_shaped_states_s_{name}"] = round(len(encoded) / (time.perf_counter() - t0), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy shapes and sizes (CPU smoke test)")
    parser.add_argument("--out", default="bench/results/gpu.json")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        gen_batches, new_tokens, prompt_len, vbatch, vlen, vrounds = [4, 8], 8, 8, 4, 64, 2
    else:
        gen_batches, new_tokens, prompt_len, vbatch, vlen, vrounds = [64, 256], 128, 64, 64, 512, 8
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "dtype": "bfloat16",
        "tiny": args.tiny,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "value_len": vlen,
        "shapes": {},
    }
    for name in args.shapes.split(","):
        cfg = make_config(name, args.tiny)
        row: dict[str, Any] = {}
        t0 = time.perf_counter()
        with torch.device(device):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        model.eval()
        row["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
        row["init_s"] = round(time.perf_counter() - t0, 1)
        for b in gen_batches:
            row[f"generate_tok_s_b{b}"] = round(bench_generate(model, batch=b, prompt_len=prompt_len, new_tokens=new_tokens, device=device), 1)
            print(f"{name}: generate batch {b}: {row[f'generate_tok_s_b{b}']} tok/s", flush=True)
        loop = bench_policy_loop(model, batch=gen_batches[0], prompt_len=prompt_len, new_tokens=new_tokens, device=device)
        if loop is not None:
            row[f"hfpolicy_tok_s_b{gen_batches[0]}"] = round(loop, 1)
            print(f"{name}: HFPolicy loop batch {gen_batches[0]}: {loop:.1f} tok/s", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        states, unpadded, path, shaped = bench_value(cfg, batch=vbatch, length=vlen, rounds=vrounds, device=device)
        row[f"value_states_s_b{vbatch}"] = round(states, 1)
        row[f"value_states_s_b{vbatch}_equal_len"] = round(unpadded, 1)
        row["value_path"] = path
        row.update(shaped)
        print(f"{name}: value batch {vbatch} x {vlen} tokens: {states:.1f} states/s padded, {unpadded:.1f} equal lengths ({path})", flush=True)
        if device == "cuda":
            row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.empty_cache()
        result["shapes"][name] = row
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
