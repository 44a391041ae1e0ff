"""bench.value_study: one table row per `restrl train value` run folder, its setting read from the manifest."""

from __future__ import annotations

import json
from pathlib import Path

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
