"""`load_policy`: versions, verification, and the adapter hot-swap route (a view sharing the
running vLLM engine whose greedy output matches transformers + PEFT)."""

from __future__ import annotations

from pathlib import Path

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


def test_an_adapter_as_the_model_is_applied_on_its_base_and_a_bad_adapter_is_refused(policy_adapter, tmp_path):
    """``model`` may name a LoRA adapter folder (what `restrl serve --policy` and every job take):
    it is applied on the base its manifest names, exactly as ``adapter=`` on that base."""
    as_model = resolve_weights(EngineConfig(model=str(policy_adapter)))
    assert as_model == resolve_weights(EngineConfig(adapter=str(policy_adapter)))
    assert as_model.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and as_model.adapter_dir == str(policy_adapter)
    with pytest.raises(CheckpointError, match="not a base model"):
        resolve_weights(EngineConfig(model=str(policy_adapter), adapter=str(policy_adapter)))
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        resolve_weights(EngineConfig(adapter=str(tmp_path)))


def test_a_plain_hf_folder_and_a_hub_id_from_the_local_cache(tmp_path, monkeypatch, default_model_dir):
    """A transformers folder without restrl.json is accepted (hashed, logged as unverified); a hub
    id resolves through the local hub cache - nothing downloads here - and names the model the
    same on every machine."""
    import shutil

    plain = tmp_path / "plain-model"
    shutil.copytree(default_model_dir, plain)
    (plain / "restrl.json").unlink()
    w = resolve_weights(EngineConfig(model=str(plain)))
    assert w.model_name == "plain-model" and w.base_model == str(plain) and w.version.startswith("plain-model@")
    # a hub cache holding org/tiny-model (the layout huggingface_hub writes)
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny-model" / "snapshots" / ("a" * 40)
    shutil.copytree(plain, snapshot)
    (cache / "models--org--tiny-model" / "refs").mkdir()
    (cache / "models--org--tiny-model" / "refs" / "main").write_text("a" * 40)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at import: HF_HUB_CACHE=...
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = resolve_weights(EngineConfig(model="org/tiny-model"))
    assert Path(hub.model_dir) == snapshot and hub.base_model == "org/tiny-model" and hub.version.startswith("tiny-model@")
    assert hub.version.split("@")[1] == w.version.split("@")[1]  # the same files, the same digest


def test_an_unavailable_hub_id_says_what_to_do(monkeypatch, tmp_path):
    """No hub here: a hub id that is not in the local cache fails at once with a message naming it
    and the way out (a local folder, or a download where the hub is reachable)."""
    import huggingface_hub

    def unavailable(repo_id, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError(f"cannot reach the hub for {repo_id}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unavailable)
    with pytest.raises(CheckpointError) as err:
        resolve_weights(EngineConfig(model="Qwen/Qwen2.5-Coder-1.5B-Instruct"))
    message = str(err.value)
    assert "Qwen/Qwen2.5-Coder-1.5B-Instruct" in message and "huggingface-cli download" in message
    with pytest.raises(CheckpointError, match="not a model folder"):
        resolve_weights(EngineConfig(model=str(tmp_path / "missing" / "folder")))


def test_checkpoint_files_are_hashed_once_per_load(policy_adapter, monkeypatch):
    """Resolving a policy (and loading a value model on the same base) reads each file once: the
    digest of an unchanged file is remembered; a changed file is hashed again."""
    import models.checkpoints as ck

    ck._digests.clear()
    reads: list[str] = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        if args and args[0] == "rb":
            reads.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    resolve_weights(EngineConfig(adapter=str(policy_adapter)))
    first = sorted(reads)
    assert first and len(first) == len(set(first))  # every adapter file once
    reads.clear()
    resolve_weights(EngineConfig(adapter=str(policy_adapter)))
    assert reads == []  # nothing read again
    config = policy_adapter / "adapter_config.json"
    config.write_text(config.read_text())  # rewritten (same bytes): a new mtime and ctime
    resolve_weights(EngineConfig(adapter=str(policy_adapter)))
    assert reads == ["adapter_config.json"]


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
