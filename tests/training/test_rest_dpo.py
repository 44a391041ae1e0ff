"""The ReST-DPO baseline: pairs from sampled programs (pure), and a few real DPO steps on the default
model (SmolLM2-135M-Instruct) through `run_iteration`, from a sampling stage already on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import RestGRPOConfig
from training.curation import ProblemSamples
from training.rest_dpo import preference_pairs, raw_completion


def _samples(completions: tuple[str, ...], rewards: tuple[float, ...]) -> ProblemSamples:
    return ProblemSamples("p", "", completions, rewards)


def test_pairs_best_with_worst_and_only_when_rewards_differ() -> None:
    s = _samples(("a", "b", "c", "d", "e"), (0.0, 1.0, 0.5, 0.0, 1.0))
    assert preference_pairs(s, pairs=1) == [(1, 3)]  # first best (index 1) with last worst (index 3)
    assert preference_pairs(s, pairs=2) == [(1, 3), (4, 0)]
    assert preference_pairs(s, pairs=5) == [(1, 3), (4, 0)]  # the middle one has no partner
    assert preference_pairs(_samples(("a", "b", "c"), (0.5, 0.5, 0.5)), pairs=3) == []  # no preference
    # a partial pass fraction beats a lower one; equal rewards stop the pairing
    assert preference_pairs(_samples(("a", "b", "c", "d"), (0.2, 0.6, 0.2, 0.6)), pairs=2) == [(1, 2), (3, 0)]


def test_pairs_skip_duplicates_and_unusable_samples() -> None:
    s = _samples(("same", "same", "", "other"), (1.0, 1.0, 0.0, 0.0))
    assert preference_pairs(s, pairs=2) == [(0, 3)]  # the duplicate and the empty continuation are skipped


def test_raw_completion_puts_back_the_held_back_newline() -> None:
    assert raw_completion("```python\n", "def f():\n    return 1") == "\ndef f():\n    return 1"
    assert raw_completion("def f():", "\n    return 1") == "\n    return 1"


def test_rest_dpo_trains_on_pairs_and_resumes(tmp_path: Path) -> None:
    """Two DPO steps from a sampling stage on disk (the real engine's sampling stage is covered by
    the slow ReST-GRPO test): pairs written, a verified LoRA checkpoint, DPO metrics, and a resume
    that reuses the pairs."""
    from models.checkpoints import verify_checkpoint
    from tasks.gym import make_gym
    from tasks.jsonl import write_jsonl
    from training.rest_grpo import run_iteration

    problems = make_gym(0, 40, tiers=(1,)).train[:2]
    train = tmp_path / "train.jsonl"
    write_jsonl(train, problems)
    cfg = RestGRPOConfig.model_validate({
        "algorithm": "rest_dpo", "output_dir": str(tmp_path / "run"), "data": {"train_file": str(train)},
        "sandbox": {"workers": 2}, "sampling": {"n": 3},
        "dpo": {"per_device_batch_size": 2, "max_length": 256, "pairs_per_problem": 1},
        "grpo": {"max_steps": 2, "learning_rate": 1e-3, "save_steps": 1, "torch_threads": 1},
    })
    run = cfg.output_dir
    run.mkdir(parents=True)
    root = ""  # rewrite mode (the default model's): the prompt opens an empty code block
    rows = [
        {"problem_id": problems[0].id, "root": root, "rewards": [1.0, 0.0, 0.0],
         "completions": ["def f(x):\n    return x + 1", "def f(x):\n    return x", "pass"]},
        {"problem_id": problems[1].id, "root": root, "rewards": [0.0, 0.5, 0.0],
         "completions": ["x = 1", "def g(s):\n    return s[::-1]", "print(1)"]},
    ]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_iteration(cfg, resume=True)  # the sampling stage is read from disk

    pairs = [json.loads(line) for line in (run / "curated.jsonl").read_text().splitlines()]
    assert [(p["problem_id"], p["chosen_reward"], p["rejected_reward"]) for p in pairs] == [
        (problems[0].id, 1.0, 0.0), (problems[1].id, 0.5, 0.0)]
    assert pairs[0]["chosen"] == "def f(x):\n    return x + 1```" and pairs[0]["rejected"] == "pass```"
    assert all(p["prompt"].endswith("```python\n") for p in pairs)

    manifest = verify_checkpoint(out, kind="policy")
    assert manifest.format == "lora" and manifest.job and manifest.job.endswith(":rest_dpo")
    assert manifest.metrics["steps"] == 2
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in metrics if "loss" in m and "rewards/margins" in m]
    assert len(logged) == 2 and all("time/step_s" in m for m in logged)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algorithm"] == "rest_dpo" and summary["curated_kinds"] == {"pair": 2}

    before = (run / "curated.jsonl").read_text()
    cfg2 = cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"max_steps": 3})})
    with pytest.raises(ValueError, match="different config"):
        run_iteration(cfg2, resume=True)
    again = run_iteration(cfg, resume=True)  # finished: the trainer restores step 2 and stops
    assert again == out and (run / "curated.jsonl").read_text() == before
