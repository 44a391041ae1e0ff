"""bench.grpo_step's arms and ratios (the runs themselves are the bench: minutes of CPU)."""

from __future__ import annotations

import pytest

from bench.grpo_step import arm_settings, summarize


def test_arms_name_their_rollouts_weight_sync_and_precision():
    assert arm_settings("engine") == ["grpo.rollouts=engine", "grpo.bf16=false"]
    assert arm_settings("trainer-bf16") == ["grpo.rollouts=trainer", "grpo.bf16=true"]
    assert arm_settings("engine-merged-bf16") == ["grpo.rollouts=engine", "grpo.bf16=true", "grpo.weight_sync=merged"]
    assert arm_settings("engine-adapter") == ["grpo.rollouts=engine", "grpo.bf16=false", "grpo.weight_sync=adapter"]
    for bad in ("vllm", "engine-fp8", "engine-", "trainer-merged", "engine-merged-adapter", "engine-bf16-merged"):
        with pytest.raises(SystemExit, match="trainer or engine"):
            arm_settings(bad)


def _run(arm: str, step_s: float, fb_s: float) -> dict:
    first = {"step": 1, "step_s": 99.0, "generation_s": 9.0, "rewards_s": 0.1, "weight_sync_s": 0.0, "forward_backward_s": 90.0}
    later = [{"step": i, "step_s": step_s, "generation_s": step_s - fb_s, "rewards_s": 0.1, "weight_sync_s": 0.0,
              "forward_backward_s": fb_s} for i in (2, 3)]
    return {"arm": arm, "steps": [first, *later]}


def test_ratios_are_the_first_arms_times_over_each_other_arms_later_steps():
    s = summarize([_run("engine", 40.0, 30.0), _run("engine-bf16", 30.0, 20.0)], ("engine", "engine-bf16"))
    assert s["engine"]["first_step_s"] == 99.0 and s["engine"]["steps_measured"] == 2
    assert s["ratios_vs_first"]["engine-bf16"] == {"step_s": 40 / 30, "generation_s": 1.0, "forward_backward_s": 1.5}
    assert "speedup_step" not in s  # that key is the default trainer-vs-engine comparison's
    default = summarize([_run("trainer", 60.0, 30.0), _run("engine", 40.0, 30.0)])
    assert default["speedup_step"] == 1.5 and default["speedup_generation"] == 3.0
