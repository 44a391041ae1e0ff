"""`load_policy`: versions, verification, and the adapter hot-swap route (a view sharing the
running vLLM engine whose greedy output matches transformers + PEFT)."""

from __future__ import annotations

import pytest

from models import CheckpointError, EngineConfig, load_policy, resolve_weights, write_manifest
from models.prompting import render_prompt
from tasks import Problem

ADD = Problem(id="add", prompt="Write a function add(a, b) that returns a + b.", starter_code="def add(a, b):\n")


@pytest.fixture(scope="module")
def policy_adapter(tmp_path_factory, default_model_dir):
    """A small random LoRA adapter on the default model (non-zero B: it changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"]))
    # Every LoRA weight from one seeded generator: PEFT initialises A from the global RNG, whose
    # state depends on which tests ran first, and one draw in a few left greedy output unchanged.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    out = tmp_path_factory.mktemp("adapters") / "tiny-lora"
    peft_model.save_pretrained(out, safe_serialization=True)
    write_manifest(out, kind="policy", format="lora", base=str(default_model_dir), job="test")
    return out


def test_versions_and_modes(default_model_dir, policy_adapter):
    w = resolve_weights(EngineConfig())
    assert w.version.startswith("smollm2-135m-instruct@") and w.prompt_mode == "rewrite"
    wa = resolve_weights(EngineConfig(adapter=str(policy_adapter)))
    assert wa.version.startswith(w.version + "+tiny-lora@") and wa.adapter_dir == str(policy_adapter)
    assert resolve_weights(EngineConfig(prompt_mode="continue")).prompt_mode == "continue"


def test_adapter_as_model_and_bad_adapter_are_refused(policy_adapter, tmp_path):
    with pytest.raises(CheckpointError, match="not a base model"):
        resolve_weights(EngineConfig(model=str(policy_adapter)))
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        resolve_weights(EngineConfig(adapter=str(tmp_path)))


@pytest.mark.vllm
async def test_adapter_view_shares_engine_and_matches_peft(vllm_policy, policy_adapter):
    cfg = vllm_policy.config.model_copy(update={"adapter": str(policy_adapter)})
    view = await load_policy(cfg, reuse=vllm_policy)
    try:
        assert view.shares_engine_with(vllm_policy) and view.version != vllm_policy.version
        prompt = render_prompt(view.tokenizer, ADD, "", view.prompt_mode)
        [base] = await vllm_policy.sample(prompt, max_tokens=16, temperature=0)
        [adapted] = await view.sample(prompt, max_tokens=16, temperature=0)
        assert adapted.text != base.text  # the adapter is applied per request

        hf = await load_policy(EngineConfig(engine="hf", adapter=str(policy_adapter), max_model_len=2048))
        try:
            assert hf.version == view.version
            [ref] = await hf.sample(prompt, max_tokens=16, temperature=0)
        finally:
            await hf.close()
        tok = view.tokenizer
        assert tok(ref.text)["input_ids"][:8] == tok(adapted.text)["input_ids"][:8]
    finally:
        await view.close()
    [after] = await vllm_policy.sample(prompt, max_tokens=16, temperature=0)  # the engine survives the view
    assert after.text == base.text


@pytest.mark.vllm
async def test_adapter_rank_above_engine_limit_is_refused(vllm_policy, tmp_path):
    from models import ModelError

    (tmp_path / "adapter_config.json").write_text('{"r": 64, "peft_type": "LORA"}')
    with pytest.raises(ModelError, match="max_lora_rank"):
        vllm_policy.with_adapter(str(tmp_path), version="too-big")
