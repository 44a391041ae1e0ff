"""bench.value_study: one table row per `restrl train value` run folder, its setting read from the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.value_study import expected_calibration_error, summarize_run


def test_a_run_folder_becomes_one_row_with_its_setting(tmp_path: Path) -> None:
    run = tmp_path / "top2_lr1e-3"
    (run / "final").mkdir(parents=True)
    (run / "final" / "restrl.json").write_text(json.dumps({"config": {"top_layers": 2, "lora_r": 8, "learning_rate": 1e-3, "seed": 0}}))
    (run / "metrics.json").write_text(json.dumps({
        "held_out": {"mse": 0.05, "constant_mse": 0.1, "pearson_r": 0.6}, "train_rows": 100, "held_out_rows": 20, "steps": 7,
        "train_s": 3.0, "feature_cache": {"build_s": 40.0},
        "held_out_by_kind": {"program": {"pearson_r": 0.7}},
        "held_out_pair_accuracy_by_depth": {"2+": {"pairs": 10, "accuracy": 0.8}},
        "calibration": [{"rows": 10, "mean_pred": 0.2, "mean_target": 0.1}, {"rows": 30, "mean_pred": 0.5, "mean_target": 0.5}],
    }))
    row = summarize_run(run)
    assert row["setting"] == {"top_layers": 2, "lora_r": 8, "learning_rate": 1e-3}  # seed is not a setting of the study
    assert row["feature_cache_build_s"] == 40.0 and row["pair_accuracy_by_depth"] == {"2+": 0.8}
    assert abs(row["ece"] - 0.025) < 1e-12 and expected_calibration_error([]) is None
    base = tmp_path / "shipped"  # a baseline: no final/, its checkpoint in metrics.json
    base.mkdir()
    (base / "metrics.json").write_text(json.dumps({"held_out": {"mse": 0.07}, "evaluated_checkpoint": "models/default/value", "steps": 0}))
    assert summarize_run(base)["setting"] == {"evaluated_checkpoint": "models/default/value"}


def test_the_study_commands_are_real_configs_and_done_settings_are_skipped(tmp_path: Path, monkeypatch) -> None:
    import yaml

    import bench.value_study as vs
    from training.cli import load_job_config
    from training.search_eval import EvalConfig
    from training.value_train import ValueTrainConfig

    cfg = vs.StudyConfig.model_validate(yaml.safe_load((vs.ROOT / "configs" / "value_study.yaml").read_text()))
    cfg = cfg.model_copy(update={"study_dir": str(tmp_path / "study"), "record_dir": None})
    assert vs.StudyConfig.model_validate(yaml.safe_load((vs.ROOT / "configs" / "value_study.yaml").read_text())).record_dir \
        == "bench/results/value_study"  # committed

    def parsed(cls, cmd):
        sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
        return load_job_config(cls, str(vs.ROOT / cmd[cmd.index("--config") + 1]), sets)

    first, rank = parsed(ValueTrainConfig, vs.train_command(cfg, "top2_lr1e-4")), parsed(ValueTrainConfig, vs.train_command(cfg, "top2_lr1e-4_rank"))
    assert first.top_layers == 2 and first.learning_rate == 1e-4 and first.bf16 is True and first.rows_file == "runs/value_data3/rows.jsonl"
    assert first.output_dir == str(tmp_path / "study" / "top2_lr1e-4") and first.rank_weight == 0
    assert rank.rank_weight == 1.0 and rank.problems_per_batch == first.problems_per_batch == 4
    assert parsed(ValueTrainConfig, vs.train_command(cfg, "top4_lr1e-4")).top_layers == 4  # a setting overrides common
    sel = parsed(EvalConfig, vs.selection_command(cfg, "top2_lr1e-4"))
    assert sel.datasets == ("gym_validation",) and sel.strategies == ("best_of_n",) and sel.rescore_from == "bench/results/value_selection"
    assert sel.value.model == str(tmp_path / "study" / "top2_lr1e-4" / "final") and sel.output_dir.startswith(str(tmp_path))
    assert sel.prm_aggregates == ()  # the whole-program value only

    # the shipped model as a baseline: scored untrained on the same rows and split (data keys only), and on the same samples
    assert cfg.baselines == {"shipped": "models/previous/value-a1c18840"}  # VM_0, so the recorded rows stay reproducible
    shipped = parsed(ValueTrainConfig, vs.train_command(cfg, "shipped"))
    assert shipped.evaluate_checkpoint == "models/previous/value-a1c18840" and shipped.top_layers is None and shipped.rank_weight == 0
    assert (shipped.rows_file, shipped.holdout_exclude, shipped.split_seed) == (first.rows_file, first.holdout_exclude, first.split_seed)
    assert first.holdout_exclude == "configs/value_data.yaml"
    assert parsed(EvalConfig, vs.selection_command(cfg, "shipped")).value.model == "models/previous/value-a1c18840"

    ran: list[tuple[str, str]] = []
    monkeypatch.setattr(vs, "_run", lambda cmd, folder: ran.append((cmd[2], folder.name)))
    done = tmp_path / "study" / "top2_lr1e-4"
    (done / "selection").mkdir(parents=True)
    (done / "metrics.json").write_text("{}")
    (done / "selection" / "eval.json").write_text("{}")
    vs.run_study(cfg, only=["top2_lr1e-4", "top2_lr3e-4"])
    assert ran == [("train", "top2_lr3e-4"), ("eval", "top2_lr3e-4")]
    ran.clear()
    vs.run_study(cfg, only=["shipped", "top2_lr1e-3_rank"])
    assert ran == [("train", "shipped"), ("eval", "shipped"), ("train", "top2_lr1e-3_rank"), ("eval", "top2_lr1e-3_rank")]  # baselines first
    (tmp_path / "study" / "shipped").mkdir(parents=True, exist_ok=True)
    from training.search_eval import write_phase
    # a baseline that scored the selection samples itself is not rescored: its selection is the samples'
    samples = tmp_path / "samples"
    write_phase(samples / "gym_validation.best_of_n.b20.json.gz", {"value_version": "value-x@1", "problems": [], "results": []})
    (samples / "eval.json").write_text(json.dumps({"gym_validation": {"best_of_n": {"20": 0.5}}}))
    same = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={"samples": str(samples)})})
    (tmp_path / "study" / "shipped" / "metrics.json").write_text(json.dumps({"value_version": "value-x@1"}))
    ran.clear()
    vs.run_study(same, only=["shipped"])
    assert ran == [] and vs.selection_of(tmp_path / "study" / "shipped", same.selection) == {"best_of_n": 0.5}
    (tmp_path / "study" / "shipped" / "metrics.json").write_text(json.dumps({"value_version": "value-y@2"}))
    vs.run_study(same, only=["shipped"])
    assert ran == [("eval", "shipped")]
    with pytest.raises(ValueError, match="share a name"):
        vs.run_study(cfg.model_copy(update={"baselines": {"top2_lr1e-4": "x"}}))


def test_selection_pairs_a_setting_with_the_shipped_model_on_the_same_programs(tmp_path: Path) -> None:
    from bench.value_study import Selection, selection_of
    from training.search_eval import write_phase

    def phase(values: list[list[float]]) -> dict:
        results = [{"steps": [[1, 10, 1], [2, 20, 2]], "candidates": [
            {"code": f"c{j}", "step": j, "value": v, "passed": j == 1} for j, v in enumerate(vals)]} for vals in values]
        return {"config": {"value_model": None}, "problems": [f"p{i}" for i in range(len(values))], "results": results}

    samples, run = tmp_path / "samples", tmp_path / "study" / "mine"
    name = "gym_validation.best_of_n.b2.json.gz"
    write_phase(samples / name, phase([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]]))  # the shipped model picks the passing one once
    write_phase(run / "selection" / name, {**phase([[0.1, 0.9], [0.1, 0.9], [0.2, 0.8]]), "config": {"value_model": "mine"}})
    report = {"gym_validation": {"best_of_n": {"2": 1.0}, "best_of_n+public": {"2": 1.0}, "prm_best_of_n": {"2": 0.0}}}
    (run / "selection" / "eval.json").write_text(json.dumps(report))
    base = tmp_path / "study" / "vm1"  # a baseline that ranked the same programs as the setting does
    write_phase(base / "selection" / name, {**phase([[0.1, 0.9], [0.9, 0.1], [0.2, 0.8]]), "config": {"value_model": "vm1"}})
    sel = Selection(samples=str(samples), budgets=[1, 2], budget=2)
    out = selection_of(run, sel, {"vm1": base, "mine": run, "absent": tmp_path / "study" / "absent"})
    assert out is not None and out["best_of_n"] == 1.0 and out["prm_best_of_n"] == 0.0
    assert out["vs_scorer"]["won"] == 2 and out["vs_scorer"]["lost"] == 0 and out["vs_scorer"]["difference"] > 0  # the setting's
    # against each baseline with a selection, never itself
    assert list(out["vs_baselines"]) == ["vm1"] and (out["vs_baselines"]["vm1"]["won"], out["vs_baselines"]["vm1"]["lost"]) == (1, 0)
    assert selection_of(run, None) is None


def test_a_recorded_setting_is_done_on_a_fresh_checkout_and_the_table_reads_the_record(tmp_path: Path, monkeypatch) -> None:
    import bench.value_study as vs
    from training.search_eval import write_phase

    samples = tmp_path / "samples"
    write_phase(samples / "gym_validation.best_of_n.b2.json.gz", {"value_version": "shipped@1", "config": {}, "problems": [], "results": []})
    cfg = vs.StudyConfig(study_dir=str(tmp_path / "runs"), record_dir=str(tmp_path / "record"),
                         selection=vs.Selection(samples=str(samples), budgets=[1, 2], budget=2), settings={"a": {}, "b": {}})

    def fake_run(cmd: list[str], folder: Path) -> None:  # what the real commands leave in the run folder
        ran.append((cmd[2], folder.name))
        if cmd[2] == "train":
            (folder / "final").mkdir(parents=True, exist_ok=True)
            (folder / "final" / "adapter_model.safetensors").write_bytes(b"weights")
            (folder / "final" / "restrl.json").write_text(json.dumps({"config": {"learning_rate": 1e-4}}))
            (folder / "metrics.json").write_text(json.dumps({"held_out": {"mse": 0.05}, "value_version": folder.name}))
        else:
            write_phase(folder / "selection" / "gym_validation.best_of_n.b2.json.gz", {"config": {}, "problems": [], "results": []})
            (folder / "selection" / "eval.json").write_text(json.dumps({"gym_validation": {"best_of_n": {"2": 0.25}}}))
            (folder / "selection" / "eval.png").write_bytes(b"png")

    ran: list[tuple[str, str]] = []
    monkeypatch.setattr(vs, "_run", fake_run)
    vs.run_study(cfg, only=["a"])
    assert ran == [("train", "a"), ("eval", "a")]
    kept = sorted(str(p.relative_to(tmp_path / "record" / "a")) for p in (tmp_path / "record" / "a").rglob("*") if p.is_file())
    assert kept == ["final/restrl.json", "metrics.json", "selection/eval.json", "selection/gym_validation.best_of_n.b2.json.gz"]  # no weights
    import shutil
    shutil.rmtree(tmp_path / "runs")  # a fresh checkout: the run folders are gone, the record is committed
    ran.clear()
    vs.run_study(cfg)
    assert ran == [("train", "b"), ("eval", "b")]  # a is not trained again
    shutil.rmtree(tmp_path / "record" / "b" / "selection")  # a setting recorded without its selection is not done
    shutil.rmtree(tmp_path / "runs")
    ran.clear()
    vs.run_study(cfg)
    assert ran == [("train", "b"), ("eval", "b")]
    rows = vs.table(tmp_path / "record", cfg.selection, tmp_path / "table.json", "cmd")
    assert [r["name"] for r in rows] == ["a", "b"] and rows[0]["setting"] == {"learning_rate": 1e-4}
    assert rows[0]["selection"]["best_of_n"] == 0.25
    assert vs.table(tmp_path / "nothing", cfg.selection, tmp_path / "t2.json", "cmd") == []


def test_paired_predictions_compare_two_runs_on_the_rows_both_predicted(tmp_path: Path) -> None:
    from bench.value_study import paired_predictions

    def row(state: str, target: float, pred: float, depth: int = 2) -> dict:
        return {"problem_id": "p", "kind": "program", "state": state, "target": target, "depth": depth, "prediction": pred}

    shared = [row("pass", 1.0, 0.9), row("fail", 0.0, 0.2)]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps(r) for r in [*shared, row("only a", 0.0, 0.5)]))
    b.write_text("\n".join(json.dumps(r) for r in [{**shared[0], "prediction": 0.1}, {**shared[1], "prediction": 0.6},
                                                     {**shared[1], "state": "retargeted", "target": 0.5}]))
    out = paired_predictions(a, b)
    assert out["rows"] == [3, 3] and out["common_rows"] == 2
    assert out["a"]["pair_accuracy_by_depth"]["all"] == 1.0 and out["b"]["pair_accuracy_by_depth"]["all"] == 0.0
    assert out["a"]["regression"]["mse"] < out["b"]["regression"]["mse"]
