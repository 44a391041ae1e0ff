"""GRPO rollouts from the engine (`training.rollouts`): the step timer, the grouping of TRL's repeated
prompts into n-sample requests (with a test double), and, on the real vLLM CPU engine (slow), that
after an update the engine samples with the trainer's current weights: its greedy completions equal
transformers + PEFT's on the same LoRA weights, step after step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from models.base import RolloutPolicy
from models.config import EngineConfig
from training.rollouts import EngineRollouts, StepTimer


def test_step_timer_nests_phases_and_reports_means() -> None:
    timer = StepTimer()
    for _ in range(2):
        timer.begin_step()
        with timer.phase("generation"):
            time.sleep(0.02)
            with timer.phase("weight_sync"):
                time.sleep(0.03)
        with timer.phase("rewards"):
            time.sleep(0.01)
        time.sleep(0.01)
        row = timer.end_step()
        # the inner phase is charged to itself, not to the outer one
        assert 0.02 <= row["generation_s"] < 0.045
        assert row["weight_sync_s"] >= 0.03
        parts = row["generation_s"] + row["weight_sync_s"] + row["rewards_s"] + row["forward_backward_s"]
        assert parts == pytest.approx(row["step_s"], abs=1e-6)
    means = timer.pop_mean()
    assert set(means) == {f"time/{k}" for k in ("step_s", "generation_s", "rewards_s", "weight_sync_s", "forward_backward_s")}
    assert timer.pop_mean() == {}  # reported once


class FakeTokenPolicy:
    """Returns, for each request, n completions ``[first prompt id, k]`` and records the requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[list[int], int, dict[str, Any]]] = []

    async def sample_tokens(self, prompt_ids, *, n=1, max_tokens=512, temperature=0.7, top_p=1.0, stop_token_ids=()):
        self.requests.append((list(prompt_ids), n, {"max_tokens": max_tokens, "temperature": temperature,
                                                    "stop_token_ids": list(stop_token_ids)}))
        return [[prompt_ids[0], k] for k in range(n)]

    def with_adapter(self, adapter_dir, *, version, prompt_mode=None):
        return self

    async def load_adapter(self) -> None:
        return None

    async def load_linear_weights(self, path: str) -> int:
        return 0

    async def close(self) -> None:
        return None


def test_repeated_prompts_become_one_request_of_n_and_keep_their_places(tmp_path: Path) -> None:
    rollouts = EngineRollouts(EngineConfig(), adapter_root=tmp_path / "adapters")
    fake = FakeTokenPolicy()
    assert isinstance(fake, RolloutPolicy)
    from training.rollouts import _LoopThread

    rollouts._loop, rollouts._base = _LoopThread(), fake  # the engine replaced by the double
    try:
        prompts = [[7, 1], [7, 1], [7, 1], [9, 2], [9, 2], [9, 2]]
        out = rollouts.generate(prompts, temperature=0.7, top_p=1.0, max_tokens=16, stop_token_ids=[0, 5])
    finally:
        rollouts._loop.stop()
    assert sorted((ids, n) for ids, n, _ in fake.requests) == [([7, 1], 3), ([9, 2], 3)]
    assert all(kw == {"max_tokens": 16, "temperature": 0.7, "stop_token_ids": [0, 5]} for _, _, kw in fake.requests)
    assert out == [[7, 0], [7, 1], [7, 2], [9, 0], [9, 1], [9, 2]]


def test_engine_rollouts_refuse_another_engine(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vllm engine"):
        EngineRollouts(EngineConfig(engine="hf"), adapter_root=tmp_path)


# --- the real engine ----------------------------------------------------------------------------------


def _prompts(tokenizer: Any) -> list[str]:
    from models.prompting import render_prompt, root_state
    from tasks.gym import make_gym

    problems = make_gym(0, 40, tiers=(1,)).train[:3]
    return [render_prompt(tokenizer, p, root_state(p, "rewrite"), "rewrite") for p in problems]


def _hf_greedy(model: Any, ids: list[int], max_tokens: int, eos: list[int]) -> list[int]:
    import torch

    model.eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
    completion = out[0, len(ids):].tolist()
    for i, t in enumerate(completion):  # generate pads after the first stop token; the engine stops there
        if t in eos:
            return completion[: i + 1]
    return completion


def _update(model: Any, tokenizer: Any, text: str, *, steps: int, lr: float) -> None:
    """A few real optimizer steps on the LoRA weights (cross-entropy on ``text``)."""
    import torch

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    batch = tokenizer(text, return_tensors="pt")
    for _ in range(steps):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # an engine start and 3 x 3 greedy completions each side: minutes on 2 loaded cores
@pytest.mark.parametrize("weight_sync", ["adapter", "merged"])
def test_engine_samples_with_the_trainers_current_weights(default_model_dir: Path, tmp_path: Path, weight_sync: str) -> None:
    """After each update the engine's greedy completions equal transformers + PEFT's (float32 both
    sides), and they moved away from the base model's: with the adapter handed over as a new LoRA
    version, and with the merged weights copied into the engine's own layers."""
    if __import__("importlib").util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.rest_grpo import stop_token_ids

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"),
    )
    eos = [tokenizer.eos_token_id, *stop_token_ids(tokenizer)]
    prompt_ids = tokenizer(text=_prompts(tokenizer))["input_ids"]
    engine = EngineConfig(kv_cache_gib=0.25, max_model_len=1024, max_num_seqs=8, max_lora_rank=8, dtype="float32")
    rollouts = EngineRollouts(engine, adapter_root=tmp_path / "adapters", keep=1, weight_sync=weight_sync).start()  # type: ignore[arg-type]
    assert rollouts.sync_mode == weight_sync
    try:
        def greedy_both(step: int) -> tuple[list[list[int]], list[list[int]]]:
            rollouts.sync(model, step)
            got = rollouts.generate(prompt_ids, temperature=0.0, top_p=1.0, max_tokens=24, stop_token_ids=eos)
            want = [_hf_greedy(model, ids, 24, eos) for ids in prompt_ids]
            return got, want

        base_got, base_want = greedy_both(0)  # LoRA B = 0: the base model
        assert base_got == base_want
        _update(model, tokenizer, "def add(a, b):\n    return a + b  # ADDED ADDED ADDED\n", steps=3, lr=3e-2)
        got, want = greedy_both(1)
        assert got == want  # the engine follows the trainer's weights ...
        assert got != base_got  # ... which moved
        _update(model, tokenizer, "print('hello world')\n" * 3, steps=3, lr=3e-2)
        got2, want2 = greedy_both(2)
        assert got2 == want2 and got2 != got  # a second version replaces the first
        assert rollouts.syncs == 3
        kept = sorted(p.name for p in (tmp_path / "adapters").iterdir())
        assert kept == (["step-2-2"] if weight_sync == "adapter" else [])  # keep=1; merged weights leave no file
    finally:
        rollouts.close()
    assert not (tmp_path / "adapters").exists()


def _tiny_peft(**lora: Any) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", **lora))
    with torch.no_grad():  # B starts at 0: give it values, so the merge has something to add
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def test_merged_lora_weights_are_peft_merge_of_every_lora_layer() -> None:
    import torch

    from training.rollouts import merged_lora_weights

    model = _tiny_peft(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    got = merged_lora_weights(model)
    assert sorted(got) == sorted(f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    base = {name: model.base_model.model.get_submodule(name).get_base_layer().weight.detach().clone() for name in got}
    merged = model.merge_and_unload().state_dict()
    for name, weight in got.items():
        assert weight.dtype == torch.float32
        assert torch.allclose(weight, merged[f"{name}.weight"], atol=1e-6)  # PEFT's own merge
        assert (weight - base[name]).abs().max() > 1e-3  # the adapter's delta is in it


def test_merged_lora_weights_refuse_what_a_merge_does_not_carry() -> None:
    from training.rollouts import merged_lora_weights

    with pytest.raises(ValueError, match="DoRA"):
        merged_lora_weights(_tiny_peft(target_modules=["q_proj", "k_proj", "v_proj"], use_dora=True))
    with pytest.raises(ValueError, match="modules_to_save"):
        merged_lora_weights(_tiny_peft(target_modules=["q_proj", "k_proj", "v_proj"], modules_to_save=["lm_head"]))
