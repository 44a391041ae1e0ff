"""bench.eval_tables: the markdown pasted into RESULTS and the README is read from the report."""

from __future__ import annotations

import json

from bench.eval_tables import tables
from tests.training.test_search_eval import _phases
from training.search_eval import EvalConfig, _phase_config, phase_path, run_eval, write_phase


def test_tables_read_solved_counts_costs_and_like_with_like_pairs_from_the_report(tmp_path) -> None:
    cfg = EvalConfig(datasets=("humaneval",), budgets=(5, 10), max_budget={}, output_dir=str(tmp_path / "phases"),
                     results_file=str(tmp_path / "eval.json"), plot_file=str(tmp_path / "eval.png"), report_only=True, bootstrap=500)
    for name, ph in _phases().items():
        write_phase(phase_path(cfg, name), {**ph, "config": _phase_config(cfg)})
    run_eval(cfg)
    text = tables(json.loads((tmp_path / "eval.json").read_text()))
    lines = text.splitlines()
    assert lines[0] == "Phases not run (no file; their arms are absent below): humaneval.orm_mcts.b10, humaneval.beam.b10."
    vm = next(line for line in lines if line.startswith("| vm_mcts |"))
    assert vm.split("|")[2].strip().startswith("1 [") and vm.split("|")[3].strip().startswith("2 [")  # 1 then 2 of 4 solved
    assert "| oracle: vm_mcts | 1 | 3 |" in lines
    assert any(line.startswith("| vm_mcts | 10 | 7.5 | 30 |") for line in lines)  # 5 samples of 4 tokens per step, 2 of 4 problems stopped at 5
    pairs = [line for line in lines if " vs " in line]
    assert "| 10 | vm_mcts vs best_of_n | 2 / 2 | 1 / 1 |" in "\n".join(pairs)
    assert not any("vm_mcts vs best_of_n+public" in line or "vm_mcts+public vs best_of_n |" in line or ":mean" in line for line in pairs)
    assert any("tokens | vm_mcts vs best_of_n |" in line for line in pairs)
