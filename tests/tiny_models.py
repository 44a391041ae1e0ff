"""Small random-weight causal LMs for tests that need a second architecture or a second model:
a few MB each, seeded, saved as plain transformers folders (no restrl.json) with SmolLM2's tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_random_causal_lm(out: Path, tokenizer_dir: Path, arch: str, **dims: Any) -> Path:
    """A ``arch`` ("llama" or "qwen2") causal LM with ``dims`` (hidden_size, num_hidden_layers, ...)
    and seeded random weights, saved in ``out`` with the tokenizer of ``tokenizer_dir``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = config_cls(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **dims)
    torch.manual_seed(0)
    model_cls(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
