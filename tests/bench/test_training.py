"""bench.training, the driver of the policy-training arms (issue 21): the commands it runs are valid
`restrl train policy` configs that differ only in the algorithm, a run survives a fresh checkout
through its snapshot, and the report pairs every model with the base and GRPO per problem."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

import bench.training as bt
from training.cli import load_job_config
from training.config import RestGRPOConfig


def _config(cmd: list[str]) -> RestGRPOConfig:
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    return load_job_config(RestGRPOConfig, str(bt.ROOT / cmd[cmd.index("--config") + 1]), sets)


def test_every_arm_is_the_template_with_its_algorithm_and_the_shared_steps_and_rate():
    configs = {arm: _config(bt.train_command(arm, steps=300, lr=3e-5, out=bt.run_dir(arm), resume=False)) for arm in bt.ARMS}
    assert {arm: c.algorithm for arm, c in configs.items()} == {"grpo": "grpo", "dapo": "dapo", "rest_dpo": "rest_dpo",
                                                                 "rest_grpo": "rest_grpo"}
    for arm, c in configs.items():
        assert c.grpo.max_steps == 300 and c.grpo.learning_rate == 3e-5
        assert c.output_dir == Path("runs/training") / arm
        assert c.data == configs["grpo"].data and c.grpo.lora == configs["grpo"].grpo.lora  # same problems, same adapter shape
    assert configs["dapo"].grpo.epsilon_high == 0.28 and configs["dapo"].grpo.beta == 0.0
    assert configs["grpo"].grpo.epsilon_high is None and configs["grpo"].grpo.beta == 0.04
    lr_run = bt.train_command("grpo", steps=60, lr=1e-4, out=bt.run_dir("grpo", 1e-4), resume=True)
    assert lr_run[-1] == "--resume" and _config(lr_run[:-1]).output_dir == Path("runs/training/lr/0.0001/grpo")
    with pytest.raises(SystemExit, match="unknown arm"):
        bt.train_command("ppo", steps=1, lr=1e-4, out=bt.run_dir("ppo"), resume=False)


@pytest.fixture
def sandboxed_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, sub in (("RUNS", "runs/training"), ("SNAPSHOTS", "results/training_runs"), ("EVALS", "results/training_eval"),
                      ("RESULTS", "results/training.json"), ("PLOTS", "plots")):
        monkeypatch.setattr(bt, name, tmp_path / sub)
    monkeypatch.setattr(bt, "ROOT", tmp_path)
    return tmp_path


def test_a_snapshot_carries_the_last_trainer_step_to_a_fresh_checkout(sandboxed_paths: Path):
    run = bt.RUNS / "lr" / "0.0001" / "grpo"
    for step in (10, 20):
        ckpt = run / "trainer" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "adapter_model.safetensors").write_bytes(b"w" * step)
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (run / "rollout_adapters" / "v3").mkdir(parents=True)  # the engine's per-step adapters: rebuilt, not kept
    for name in ("config.json", "metrics.jsonl", "curated.jsonl", "samples.jsonl"):
        (run / name).write_text(name)
    dest = bt.snapshot("lr/0.0001/grpo")
    assert dest.name == "lr_0.0001_grpo.tar.gz"
    with tarfile.open(dest) as tar:
        names = set(tar.getnames())
    assert "trainer/checkpoint-20/trainer_state.json" in names and not any("checkpoint-10" in n for n in names)
    assert not any(n.startswith("rollout_adapters") for n in names) and "samples.jsonl" in names

    import shutil

    shutil.rmtree(bt.RUNS)  # a fresh checkout: runs/ is not in git
    assert bt.restore("lr/0.0001/grpo") and not bt.restore("dapo")
    assert json.loads((run / "trainer" / "checkpoint-20" / "trainer_state.json").read_text()) == {"global_step": 20}
    assert (run / "config.json").read_text() == "config.json"
    with pytest.raises(SystemExit, match="no run"):
        bt.snapshot("rest_grpo")


def _eval(name: str, dataset: str, outcomes: list[bool], ids: list[str] | None = None) -> None:
    bt.EVALS.mkdir(parents=True, exist_ok=True)
    ids = ids or [f"p{i}" for i in range(len(outcomes))]
    bt.eval_path(name, dataset).write_text(json.dumps({
        "model": name, "dataset": dataset, "problems": len(ids), "passed": sum(outcomes), "pass1": sum(outcomes) / len(ids),
        "mean_pass_fraction": 0.5, "infra_errors": 0, "ids": ids, "outcomes": outcomes, "rewards": [float(o) for o in outcomes]}))


def test_the_report_pairs_each_model_with_base_and_grpo_per_problem(sandboxed_paths: Path):
    base = [True] * 10 + [False] * 30
    _eval("base", "gym_test", base)
    _eval("grpo", "gym_test", base[:38] + [True, True])  # 2 won, none lost
    _eval("rest_grpo", "gym_test", [False] + base[1:30] + [True] * 10)  # 10 won, 1 lost
    _eval("rest_grpo", "humaneval", [True, False])
    out = bt.report()
    runs = out["runs"]
    assert set(runs) == {"base", "grpo", "rest_grpo"}  # arms never trained nor evaluated are left out
    vs_base = runs["rest_grpo"]["vs_base"]["gym_test"]
    assert (vs_base["won"], vs_base["lost"], vs_base["difference"]) == (10, 1, 0.225)
    assert vs_base["ci95"][0] > 0 and vs_base["mcnemar_p"] < 0.05
    assert (runs["rest_grpo"]["vs_grpo"]["gym_test"]["won"], runs["rest_grpo"]["vs_grpo"]["gym_test"]["lost"]) == (8, 1)
    assert "humaneval" not in runs["rest_grpo"]["vs_base"]  # base not evaluated there: no pair
    assert runs["grpo"]["vs_base"]["gym_test"]["won"] == 2 and "vs_grpo" not in runs["grpo"] and "vs_grpo" not in runs["base"]
    assert json.loads(bt.RESULTS.read_text()) == json.loads(json.dumps(out))
    assert "| rest_grpo |" in bt.table(out) and "+0.225" in bt.table(out)

    _eval("dapo", "gym_test", base, ids=[f"q{i}" for i in range(40)])
    with pytest.raises(SystemExit, match="different gym_test problems"):
        bt.report()
