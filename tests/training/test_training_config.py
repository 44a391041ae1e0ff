"""Config validation and bad-input errors, all before any compute starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import ConfigError, RestGRPOConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def base(tmp_path: Path, **extra: object) -> dict:
    return {"output_dir": str(tmp_path / "run"), "data": {"train_file": str(tmp_path / "train.jsonl")}, **extra}


def test_spec_defaults(tmp_path: Path) -> None:
    cfg = RestGRPOConfig.model_validate(base(tmp_path))
    assert cfg.algorithm == "rest_grpo"
    assert (cfg.sampling.n, cfg.sampling.temperature) == (5, 0.7)
    assert (cfg.filter.sigma_0, cfg.partial_states.r_0, cfg.partial_states.alpha) == (0.05, 0.9, 0.95)
    assert cfg.partial_states.exclude_full_solution and not cfg.partial_states.replacement
    assert cfg.grpo.num_generations == 8 and cfg.grpo.beta == 0.04 and cfg.grpo.epsilon == 0.2
    assert cfg.partial_state_count(7) == 4  # ceil(0.5 * 7)


def test_batch_must_be_divisible_by_group_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"divisible by grpo.num_generations = 8.*multiple of 8"):
        RestGRPOConfig.model_validate(base(tmp_path, grpo={"per_device_batch_size": 6}))
    ok = RestGRPOConfig.model_validate(base(tmp_path, grpo={"per_device_batch_size": 4, "gradient_accumulation_steps": 2}))
    assert ok.prompts_per_step == 1


def test_dapo_needs_clip_higher(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epsilon_high"):
        RestGRPOConfig.model_validate(base(tmp_path, algorithm="dapo"))
    with pytest.raises(ValueError, match="must be >= grpo.epsilon"):
        RestGRPOConfig.model_validate(base(tmp_path, grpo={"epsilon_high": 0.1}))


def test_unknown_fields_and_bad_values_are_named(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(base(tmp_path, algorithm="ppo", sampling={"n": 1, "tempreature": 0.5})))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "algorithm" in text and "sampling.n" in text and "sampling.tempreature" in text


def test_missing_and_malformed_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm: [grpo\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad)
    listy = tmp_path / "list.json"
    listy.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_overrides_replace_dotted_fields(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(base(tmp_path)))
    cfg = load_config(path, overrides={"grpo.max_steps": 3, "algorithm": "grpo"})
    assert cfg.grpo.max_steps == 3 and cfg.algorithm == "grpo"


# configs/ holds the example of every job: policy training (everything not listed), value data,
# value training and evaluation, each validated by its own job's config class.
OTHER_JOBS = {
    "value_data.yaml": ("training.value_data", "CollectConfig"),
    "value_data_v3.yaml": ("training.value_data", "CollectConfig"),
    "value_data_v4.yaml": ("training.value_data", "CollectConfig"),
    "value.yaml": ("training.value_train", "ValueTrainConfig"),
    "eval_validation.yaml": ("training.search_eval", "EvalConfig"),
    "eval.yaml": ("training.search_eval", "EvalConfig"),
    "value_study.yaml": ("bench.value_study", "StudyConfig"),
    "value_study_pilot.yaml": ("bench.value_study", "StudyConfig"),
    "value_study_v4.yaml": ("bench.value_study", "StudyConfig"),
}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_example_configs_validate(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Every configs/*.yaml validates, in the nested policy/value/sandbox/search shape: no
    deprecation warning."""
    with caplog.at_level("WARNING"):
        if name in OTHER_JOBS or name.startswith("value_data"):
            import importlib

            from training.cli import load_job_config

            module, cls = OTHER_JOBS.get(name, OTHER_JOBS["value_data.yaml"])
            assert load_job_config(getattr(importlib.import_module(module), cls), str(CONFIGS / name), None) is not None
        else:
            assert load_config(CONFIGS / name).grpo.max_steps >= 1
    assert "deprecated" not in caplog.text


def _run_config(tmp_path: Path, train: Path) -> RestGRPOConfig:
    return RestGRPOConfig.model_validate({"output_dir": str(tmp_path / "run"), "data": {"train_file": str(train)}})


def test_missing_dataset_is_a_clear_error_before_compute(tmp_path: Path) -> None:
    from tasks.jsonl import DatasetError
    from training.rest_grpo import load_training_problems

    with pytest.raises(DatasetError, match="no such file"):
        load_training_problems(_run_config(tmp_path, tmp_path / "missing.jsonl"))


def test_malformed_dataset_names_the_line(tmp_path: Path) -> None:
    from tasks.jsonl import DatasetError
    from training.rest_grpo import load_training_problems

    train = tmp_path / "train.jsonl"
    good = {"id": "a", "prompt": "p", "tests": [{"kind": "call", "args": [1], "expected": 1}]}
    train.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DatasetError, match=r"train.jsonl:2"):
        load_training_problems(_run_config(tmp_path, train))


def test_problems_without_tests_or_from_humaneval_are_refused(tmp_path: Path) -> None:
    from training.rest_grpo import TrainingDataError, load_training_problems

    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"id": "a", "prompt": "p"}) + "\n")
    with pytest.raises(TrainingDataError, match="no tests"):
        load_training_problems(_run_config(tmp_path, train))
    train.write_text("")
    with pytest.raises(TrainingDataError, match="empty"):
        load_training_problems(_run_config(tmp_path, train))


def test_keys_of_earlier_releases_still_load_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps(base(tmp_path, policy={"base_model": "/models/base", "prompt_mode": "auto"},
                                    sampling={"engine": "hf", "kv_cache_gib": 0.5, "engine_seed": 3, "n": 4})))
    with caplog.at_level("WARNING"):
        cfg = load_config(path, overrides={"sampling.engine": "vllm"})
    assert (cfg.policy.model, cfg.policy.engine, cfg.policy.kv_cache_gib, cfg.policy.seed) == ("/models/base", "vllm", 0.5, 3)
    assert cfg.policy.prompt_mode is None and cfg.sampling.n == 4
    assert "'policy.base_model' is a deprecated name: use policy.model" in caplog.text


def test_eval_phase_settings_keep_their_flat_keys() -> None:
    """A phase file records the settings it was made with under the flat keys of earlier releases,
    so committed phase files stay reusable with --resume; the old flat config means the same."""
    from training.search_eval import EvalConfig, _phase_config

    flat = {"k": 4, "c_uct": 0.3, "merged_visits": "samples", "seed": 2, "value_model": "/v", "policy_adapter": "/a"}
    nested = EvalConfig(search={"k": 4, "c_uct": 0.3, "merged_visits": "samples", "seed": 2}, policy={"adapter": "/a", "seed": 2},
                        value={"model": "/v"})
    assert EvalConfig.model_validate(flat) == nested
    assert _phase_config(nested) == {
        "gym_seed": 0, "gym_n_per_tier": 2000, "humaneval_seed": 0, "k": 4, "c_uct": 0.3, "step_lines": 1, "merged_visits": "samples",
        "temperature": 0.7, "max_tokens": 256, "beam_width": 2, "seed": 2, "value_model": "/v", "value_dtype": "bfloat16",
        "policy_adapter": "/a", "prm_aggregates": ["min", "mean", "last"], "policy_model": None}


def test_engine_rollouts_need_vllm_a_lora_adapter_and_room(tmp_path: Path) -> None:
    assert RestGRPOConfig.model_validate(base(tmp_path)).grpo.rollouts == "auto"
    with pytest.raises(ValueError, match="needs policy.engine 'vllm'.*grpo.rollouts to trainer"):
        RestGRPOConfig.model_validate(base(tmp_path, policy={"engine": "hf"}, grpo={"rollouts": "engine"}))
    with pytest.raises(ValueError, match="full fine-tuning.*grpo.rollouts to trainer"):
        RestGRPOConfig.model_validate(base(tmp_path, grpo={"rollouts": "engine", "lora": None}))
    with pytest.raises(ValueError, match="grpo.lora.r=32 exceeds policy.max_lora_rank=16"):
        RestGRPOConfig.model_validate(base(tmp_path, grpo={"lora": {"r": 32}}))
    with pytest.raises(ValueError, match="grpo.max_completion_length = 4352"):
        RestGRPOConfig.model_validate(base(tmp_path, grpo={"max_completion_length": 3584}))
    # generation in the trainer: none of the engine's limits apply
    ok = RestGRPOConfig.model_validate(base(tmp_path, grpo={"rollouts": "trainer", "lora": {"r": 32}, "max_completion_length": 3584}))
    assert ok.grpo.lora is not None and ok.grpo.lora.r == 32


def test_rest_dpo_settings(tmp_path: Path) -> None:
    cfg = RestGRPOConfig.model_validate(base(tmp_path, algorithm="rest_dpo", dpo={"beta": 0.2, "pairs_per_problem": 2}))
    assert cfg.algorithm == "rest_dpo" and (cfg.dpo.beta, cfg.dpo.pairs_per_problem, cfg.dpo.loss_type) == (0.2, 2, "sigmoid")
    with pytest.raises(ValueError, match="loss_type"):
        RestGRPOConfig.model_validate(base(tmp_path, algorithm="rest_dpo", dpo={"loss_type": "kto"}))


def test_merged_weight_sync_needs_whole_packed_groups(tmp_path: Path) -> None:
    from training.rest_grpo import rollout_weight_sync

    assert RestGRPOConfig.model_validate(base(tmp_path)).grpo.weight_sync == "auto"
    with pytest.raises(ValueError, match=r"packs q_proj \+ k_proj \+ v_proj into one.*grpo.weight_sync to adapter"):
        RestGRPOConfig.model_validate(base(tmp_path, grpo={"weight_sync": "merged", "lora": {"target_modules": ["q_proj", "v_proj"]}}))
    with pytest.raises(ValueError, match=r"gate_proj \+ up_proj"):
        RestGRPOConfig.model_validate(base(tmp_path, grpo={"weight_sync": "merged", "lora": {"target_modules": ["up_proj", "o_proj"]}}))
    whole = RestGRPOConfig.model_validate(base(tmp_path, grpo={"weight_sync": "merged", "lora": {
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}}))
    assert rollout_weight_sync(whole) == "merged"
    # auto: a split group narrows to adapter (a merge could not rebuild the packed layer); whole groups stay auto (by device)
    split = RestGRPOConfig.model_validate(base(tmp_path, grpo={"lora": {"target_modules": ["q_proj", "v_proj"]}}))
    assert rollout_weight_sync(split) == "adapter"
    assert rollout_weight_sync(RestGRPOConfig.model_validate(base(tmp_path))) == "auto"
