"""The whole value pipeline on the real parts: MCTS collection with the real policy (vLLM) and
the real sandbox -> `restrl train value` on the real SmolLM2 backbone (a few steps) -> the
checkpoint loads through the serving loader and scores states in [0, 1].

About 35 s on the 2 quiet cores here (2 problems x 5 samples, 2 training steps), so it runs in
the default suite."""

from __future__ import annotations

from pathlib import Path

import pytest


async def test_collect_train_load_score(vllm_policy, tmp_path: Path) -> None:
    from models import ValueConfig
    from models.value import HFValueModel
    from sandbox.pool import Sandbox
    from tasks import write_jsonl
    from training.value_data import CollectConfig, collect, read_rows, select_problems
    from training.value_train import ValueTrainConfig, run_value_training

    cfg = CollectConfig(output_dir=str(tmp_path / "vd"), max_problems=2, gym_tiers=(1,), gym_n_per_tier=20,
                        search={"budget": {"samples": 5}, "max_tokens": 96}, concurrency=2)
    problems = select_problems(cfg)
    write_jsonl(tmp_path / "vd" / "problems.jsonl", problems)
    with Sandbox(workers=2) as box:
        summary = await collect(problems, vllm_policy, box, cfg)
    rows = read_rows(tmp_path / "vd" / "rows.jsonl")
    assert summary["problems_searched"] == 2 and rows
    assert {r["kind"] for r in rows} >= {"expanded", "program"}
    assert all(0.0 <= r["target"] <= 1.0 for r in rows)

    tcfg = ValueTrainConfig(
        rows_file=str(tmp_path / "vd" / "rows.jsonl"), problems_file=str(tmp_path / "vd" / "problems.jsonl"),
        output_dir=str(tmp_path / "vm"), max_steps=2, batch_size=2, value={"max_length": 256, "device": "cpu"}, eval_batch_size=8,
        holdout_fraction=0.5, bf16=False,
    )
    result = run_value_training(tcfg)
    final = Path(result["checkpoint"])
    assert (final / "restrl.json").exists() and (final / "adapter_model.safetensors").exists()
    assert result["reload_max_abs_diff"] < 1e-4
    assert result["held_out"]["rows"] > 0 and "mse" in result["held_out"]

    # the checkpoint scored, untrained, on the same split as serving loads it (a study's baseline): the trained run's
    # held-out predictions again; a training setting beside it is refused
    import json

    from pydantic import ValidationError

    base = run_value_training(tcfg.model_copy(update={"output_dir": str(tmp_path / "base"), "evaluate_checkpoint": str(final),
                                                      "value": tcfg.value.model_copy(update={"dtype": "float32"})}))
    trained_preds = [json.loads(x)["prediction"] for x in (tmp_path / "vm" / "predictions.jsonl").read_text().splitlines()]
    base_preds = [json.loads(x)["prediction"] for x in (tmp_path / "base" / "predictions.jsonl").read_text().splitlines()]
    assert len(base_preds) == len(trained_preds) == result["held_out"]["rows"] and base["steps"] == 0
    assert max(abs(a - b) for a, b in zip(base_preds, trained_preds, strict=True)) < 1e-4
    assert json.loads((tmp_path / "base" / "metrics.json").read_text())["evaluated_checkpoint"] == str(final)
    assert not (tmp_path / "base" / "final").exists()
    with pytest.raises(ValidationError, match="evaluate_checkpoint"):
        ValueTrainConfig(evaluate_checkpoint=str(final), top_layers=2)

    # continued training from that checkpoint with the ranking term and problem-grouped batches
    from models.checkpoints import read_manifest

    cont = run_value_training(tcfg.model_copy(update={"output_dir": str(tmp_path / "vm2"), "init_from": str(final),
                                                      "rank_weight": 1.0, "problems_per_batch": 1}))
    assert read_manifest(cont["checkpoint"]).parent == str(final) and cont["reload_max_abs_diff"] < 1e-4
    # LoRA on the top 2 decoder layers only
    from safetensors import safe_open

    top = run_value_training(tcfg.model_copy(update={"output_dir": str(tmp_path / "vm3"), "lora_layers": 2}))
    with safe_open(str(Path(top["checkpoint"]) / "adapter_model.safetensors"), "pt") as fh:
        layers = {int(k.split("layers.")[1].split(".")[0]) for k in fh.keys() if "lora_" in k}
    assert layers == {28, 29}

    # the top 2 layers + norm + head in full, on cached states of the frozen layers below (float32 here, so the
    # cached computation must equal the whole model's: the serving path re-scores a sample, the reload all)
    full = tcfg.model_copy(update={"output_dir": str(tmp_path / "vm4"), "top_layers": 2, "rank_weight": 1.0, "problems_per_batch": 1,
                                   "feature_cache_dir": str(tmp_path / "features"), "value": tcfg.value.model_copy(update={"dtype": "float32"}),
                                   "max_steps": 3, "learning_rate": 1e-3})
    first = run_value_training(full)
    metrics = __import__("json").loads((tmp_path / "vm4" / "metrics.json").read_text())
    assert metrics["feature_cache"]["layer"] == 28 and metrics["feature_cache"]["computed_now"] > 0
    assert metrics["serving_max_abs_diff"] < 1e-4 and first["reload_max_abs_diff"] < 1e-4 and first["steps"] == 3
    with safe_open(str(Path(first["checkpoint"]) / "adapter_model.safetensors"), "pt") as fh:
        full_tensors = [k for k in fh.keys() if "lora_" not in k]  # modules_to_save: the trained modules in full
    layers = {int(k.split("layers.")[1].split(".")[0]) for k in full_tensors if "layers." in k}
    assert layers == {28, 29} and any(k.endswith("model.norm.weight") for k in full_tensors) and any("score" in k for k in full_tensors)
    again = run_value_training(full.model_copy(update={"output_dir": str(tmp_path / "vm5")}))
    assert __import__("json").loads((tmp_path / "vm5" / "metrics.json").read_text())["feature_cache"]["computed_now"] == 0  # reused
    assert again["held_out"] == first["held_out"]  # seeded: the same run again

    # the top layers warm-started from a checkpoint (init_from): the frozen layers below are the LoRA checkpoint's, merged;
    # at a vanishing learning rate the result still scores as that checkpoint does, and it keeps its LoRA below the top
    warm = run_value_training(full.model_copy(update={"output_dir": str(tmp_path / "vm6"), "init_from": str(final), "learning_rate": 1e-12,
                                                      "max_steps": 1}))
    warm_metrics = json.loads((tmp_path / "vm6" / "metrics.json").read_text())
    assert "-from-" in warm_metrics["feature_cache"]["dir"] and warm_metrics["feature_cache"]["computed_now"] > 0  # its own cache
    warm_preds = [json.loads(x)["prediction"] for x in (tmp_path / "vm6" / "predictions.jsonl").read_text().splitlines()]
    assert max(abs(a - b) for a, b in zip(warm_preds, trained_preds, strict=True)) < 1e-4
    assert warm_metrics["serving_max_abs_diff"] < 1e-4 and warm["reload_max_abs_diff"] < 1e-4
    assert read_manifest(warm["checkpoint"]).parent == str(final)
    with safe_open(str(Path(warm["checkpoint"]) / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert {int(k.split("layers.")[1].split(".")[0]) for k in keys if "lora_" in k} == set(range(28))
    assert {int(k.split("layers.")[1].split(".")[0]) for k in keys if "lora_" not in k and "layers." in k} == {28, 29}
    # from a top-layers checkpoint: its top layers and head are where training starts
    again_warm = run_value_training(full.model_copy(update={"output_dir": str(tmp_path / "vm7"), "init_from": first["checkpoint"],
                                                            "learning_rate": 1e-12, "max_steps": 1}))
    first_preds = [json.loads(x)["prediction"] for x in (tmp_path / "vm4" / "predictions.jsonl").read_text().splitlines()]
    again_preds = [json.loads(x)["prediction"] for x in (tmp_path / "vm7" / "predictions.jsonl").read_text().splitlines()]
    assert max(abs(a - b) for a, b in zip(again_preds, first_preds, strict=True)) < 1e-4 and again_warm["reload_max_abs_diff"] < 1e-4
    with pytest.raises(ValueError, match="not a folder"):
        run_value_training(full.model_copy(update={"output_dir": str(tmp_path / "vm8"), "init_from": str(tmp_path / "nothing")}))

    value = HFValueModel.load(ValueConfig(model=str(final), max_length=256))
    assert value.trained and "untrained" not in value.version
    assert value.policy_base == "HuggingFaceTB/SmolLM2-135M-Instruct" == result["policy_base"]  # no collect config: the default
    scores = await value.score(problems[0], ["", rows[0]["state"]])
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
