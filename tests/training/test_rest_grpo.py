"""End-to-end runs of the training job on the real small model (SmolLM2-135M-Instruct), the real
sandbox and, for ReST-GRPO's sampling stage, the real vLLM CPU engine."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from training.config import RestGRPOConfig
from training.curation import population_std


def _gym_file(tmp_path: Path, n: int) -> Path:
    from tasks.gym import make_gym
    from tasks.jsonl import write_jsonl

    problems = make_gym(0, 40, tiers=(1,)).train[:n]
    path = tmp_path / "train.jsonl"
    write_jsonl(path, problems)
    return path


def _config(tmp_path: Path, algorithm: str, *, problems: int, grpo: dict, **extra: object) -> RestGRPOConfig:
    return RestGRPOConfig.model_validate(
        {
            "algorithm": algorithm,
            "output_dir": str(tmp_path / algorithm),
            "data": {"train_file": str(_gym_file(tmp_path, problems))},
            "sandbox": {"workers": 2},
            "grpo": {"save_steps": 1, "torch_threads": 1, **grpo},
            **extra,
        }
    )


def _lora_b_norm(adapter_dir: Path) -> float:
    from safetensors.torch import load_file

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return float(sum(t.float().abs().sum() for name, t in tensors.items() if "lora_B" in name))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_grpo_step_writes_a_verified_loadable_checkpoint(tmp_path: Path) -> None:
    from models.checkpoints import verify_checkpoint
    from training.rest_grpo import run_iteration

    cfg = _config(
        tmp_path, "grpo", problems=2,
        grpo={"num_generations": 2, "per_device_batch_size": 4, "max_steps": 1, "max_completion_length": 24, "learning_rate": 1e-3},
    )
    out = run_iteration(cfg)
    manifest = verify_checkpoint(out, kind="policy")
    assert manifest.format == "lora" and manifest.job and manifest.job.endswith(":grpo")
    assert set(manifest.config["data_hashes"]) >= {"train_file", "curated"}
    assert manifest.metrics["steps"] == 1
    metrics = _rows(cfg.output_dir / "metrics.jsonl")
    step = next(r for r in metrics if "reward" in r)
    assert {"reward", "reward_std", "frac_reward_zero_std", "loss", "completions/mean_length"} <= set(step)
    # the step's wall time split; the rollouts came from the engine where vLLM is installed (grpo.rollouts auto)
    assert {f"time/{k}_s" for k in ("step", "generation", "rewards", "weight_sync", "forward_backward")} <= set(step)
    summary = json.loads((cfg.output_dir / "summary.json").read_text())
    engine = importlib.util.find_spec("vllm") is not None
    assert summary["rollouts"] == ("engine" if engine else "trainer")
    assert (step["time/weight_sync_s"] > 0) == engine
    assert not (cfg.output_dir / "rollout_adapters").exists()  # scratch adapters removed with the engine
    groups = _rows(cfg.output_dir / "groups.jsonl")
    assert groups and all(len(g["rewards"]) == 2 and all(0.0 <= r <= 1.0 for r in g["rewards"]) for g in groups)
    # LoRA B starts at zero: it moves exactly when some group had reward variance (non-zero advantages)
    varied = any(population_std(g["rewards"]) > 0 for g in groups)
    assert (_lora_b_norm(out) > 0) == varied
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == cfg.grpo.lora.r

    # a saved step exports without training (interrupted runs, comparisons at equal steps)
    from safetensors.torch import load_file

    from training.rest_grpo import export_saved_step

    trained = load_file(str(out / "adapter_model.safetensors"))
    again = export_saved_step(cfg, step=1)
    exported = verify_checkpoint(again, kind="policy")
    assert exported.job and exported.job.endswith(":grpo@step1") and exported.metrics["steps"] == 1
    saved = load_file(str(again / "adapter_model.safetensors"))
    assert saved.keys() == trained.keys() and all((saved[k] == trained[k]).all() for k in saved)
    with pytest.raises(FileNotFoundError, match="step 5 was not saved"):
        export_saved_step(cfg, step=5)


@pytest.mark.slow
async def test_rest_grpo_iteration_end_to_end(tmp_path: Path, vllm_policy) -> None:
    from models import EngineConfig, load_policy
    from training.rest_grpo import run_iteration

    cfg = _config(
        tmp_path, "rest_grpo", problems=8,
        sampling={"n": 5, "max_new_tokens": 96}, policy={"kv_cache_gib": 0.5},
        grpo={"num_generations": 4, "per_device_batch_size": 8, "max_steps": 2, "max_completion_length": 96, "learning_rate": 1e-3},
        seed=3,
    )
    out = await asyncio.to_thread(run_iteration, cfg)
    run = cfg.output_dir
    samples = _rows(run / "samples.jsonl")
    assert len(samples) == 8 and all(len(s["rewards"]) == 5 for s in samples)
    curated = _rows(run / "curated.jsonl")
    by_id = {s["problem_id"]: s for s in samples}
    for row in curated:
        s = by_id[row["problem_id"]]
        assert population_std(s["rewards"]) >= cfg.filter.sigma_0  # only diverse problems survive
        if row["kind"] == "partial":
            best = s["completions"][max(range(5), key=lambda i: (s["rewards"][i], -i))]
            assert best.startswith(row["state"]) and row["state"] != best and row["state"].endswith("\n")
            assert row["prompt"].endswith(row["state"])
    groups = _rows(run / "groups.jsonl")
    assert any(population_std(g["rewards"]) > 0 for g in groups)
    assert _lora_b_norm(out) > 0  # the update changed the adapter

    # the checkpoint is servable: an adapter view of the running engine samples from it
    policy = await load_policy(vllm_policy.config.model_copy(update={"adapter": str(out)}), reuse=vllm_policy)
    try:
        assert policy.version != vllm_policy.version
        text = (await policy.sample(curated[0]["prompt"], n=1, max_tokens=16, temperature=0.0))[0].text
        assert isinstance(text, str)
    finally:
        await policy.close()

    # resuming a finished run reuses every stage on disk: no resampling, same curated set
    before = (run / "samples.jsonl").stat().st_mtime_ns, (run / "curated.jsonl").read_text()
    checkpoints = sorted(p.name for p in (run / "trainer").glob("checkpoint-*"))
    adapter = (out / "adapter_model.safetensors").read_bytes()
    again = await asyncio.to_thread(run_iteration, cfg, resume=True)
    assert again == out
    assert ((run / "samples.jsonl").stat().st_mtime_ns, (run / "curated.jsonl").read_text()) == before
    # ... and trains no step past max_steps (transformers' Trainer, resumed at max_steps, would run one more)
    assert sorted(p.name for p in (run / "trainer").glob("checkpoint-*")) == checkpoints
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
    assert EngineConfig  # imported for the adapter view's config type
