"""`restrl report training` and the `train` CLI group, on hand-made run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import restrl
from training.report import group_stds, report_training, sample_stds, step_series


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(root: Path, name: str, *, with_samples: bool) -> Path:
    run = root / name
    run.mkdir()
    _write(run / "metrics.jsonl", [
        {"step": s, "reward": 0.1 * s, "reward_std": 0.2, "frac_reward_zero_std": 0.5, "loss": 0.0} for s in (1, 2, 3)
    ] + [{"step": 3, "train_runtime": 10.0}])
    _write(run / "groups.jsonl", [{"step": 0, "problem_id": "a", "rewards": [0, 1, 0, 1]}, {"step": 1, "problem_id": "b", "rewards": [1, 1, 1, 1]}])
    if with_samples:
        _write(run / "samples.jsonl", [
            {"problem_id": "a", "root": "", "completions": ["x"] * 4, "rewards": [0, 1, 0, 1]},
            {"problem_id": "b", "root": "", "completions": ["x"] * 4, "rewards": [0, 0, 0, 0]},
        ])
        _write(run / "curated.jsonl", [{"problem_id": "a", "kind": "base"}, {"problem_id": "a", "kind": "partial"}])
    return run


def test_series_and_std_extraction(tmp_path: Path) -> None:
    run = _run(tmp_path, "rest", with_samples=True)
    assert step_series(run, "reward") == ([1, 2, 3], [0.1, 0.2, pytest.approx(0.3)])
    assert group_stds(run) == [0.5, 0.0]
    naive, kept = sample_stds(run)
    assert naive == [0.5, 0.0] and kept == [0.5]


def test_report_writes_pngs(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "rest", with_samples=True), _run(tmp_path, "grpo", with_samples=False)]
    written = report_training(runs, out_dir=tmp_path / "plots")
    assert [p.name for p in written] == ["training_reward.png", "training_reward_std_hist.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="labels"):
        report_training(runs, out_dir=tmp_path / "plots", labels=["one"])
    with pytest.raises(FileNotFoundError):
        report_training([tmp_path / "missing"], out_dir=tmp_path / "plots")


def test_cli_report_and_train_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path, "rest", with_samples=True)
    assert restrl.main(["report", "training", str(run), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "training_reward.png").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"output_dir: {tmp_path / 'r'}\ndata: {{train_file: {tmp_path / 'none.jsonl'}}}\ngrpo: {{per_device_batch_size: 3}}\n")
    assert restrl.main(["train", "policy", "--config", str(bad)]) == 2
    assert "divisible by grpo.num_generations" in capsys.readouterr().err
    assert restrl.main(["train", "policy", "--config", str(bad), "--set", "grpo.per_device_batch_size=8"]) == 2
    assert "none.jsonl" in capsys.readouterr().err  # the missing dataset, reported before any model loads
