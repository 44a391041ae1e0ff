"""Markdown tables of a `restrl eval` report (bench/results/eval.json), for bench/RESULTS.md and the
README: what is pasted there is what this prints from the committed JSON, not numbers copied by hand.

    python -m bench.eval_tables [bench/results/eval.json] [--reference vm_mcts] [--datasets gym_test humaneval]

Per dataset:

* solved (of n) per final-answer arm and sample budget, the bootstrap 95 % interval of pass@1 as
  problems, and the oracle (a passing program was sampled) per strategy;
* the cost of each strategy per problem (samples, policy tokens, value calls) and its phase's wall;
* the reference arm paired against every other strategy at each budget under the same final-answer
  rule (value against value, ``+public`` against ``+public``; PRM-BoN by its default ``min``; greedy
  against both): won / lost, the pass@1 difference with its paired-bootstrap 95 % interval, the
  exact McNemar p;
* the same at equal policy-token budgets (the snapshot of each arm whose cumulative tokens fit).

A report with planned phases that have no file (a sitting stopped by ``time_limit_s``, or
``report_only`` before every phase ran) says so first: an absent arm is not run, not zero.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _n(report: dict[str, Any], dataset: str) -> int:
    return int(report["power"][dataset]["problems"])


def _count(rate: float | None, n: int) -> str:
    return "-" if rate is None else str(round(rate * n))


def solved_table(report: dict[str, Any], dataset: str) -> list[str]:
    n = _n(report, dataset)
    arms = report[dataset]
    budgets = sorted({int(b) for v in arms.values() for b in v})
    lines = [f"| arm (solved of {n}) | " + " | ".join(f"@{b}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for arm, by_b in arms.items():
        cells = []
        for b in budgets:
            rate = by_b.get(str(b))
            ci = report["intervals"][dataset].get(arm, {}).get(str(b))
            cells.append("-" if rate is None else f"{_count(rate, n)} [{_count(ci[0], n)}, {_count(ci[1], n)}]" if ci else _count(rate, n))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    for strategy, by_b in report["oracle"].get(dataset, {}).items():
        if strategy == "greedy":
            continue
        lines.append(f"| oracle: {strategy} | " + " | ".join(_count(by_b.get(str(b)), n) for b in budgets) + " |")
    return lines


def cost_table(report: dict[str, Any], dataset: str) -> list[str]:
    cost = report["cost"][dataset]
    strategies = [a for a in cost if "+" not in a and ":" not in a]
    lines = ["| strategy | budget | samples | policy tokens | value calls | phase wall s (run budget) |", "|---|---:|---:|---:|---:|---:|"]
    for arm in strategies:
        for b, c in sorted(cost[arm].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {arm} | {b} | {c['samples']:.1f} | {c['policy_tokens']:,.0f} | {c['value_calls']:.1f} |"
                         f" {c['phase_wall_s']:,.0f} ({c['phase_run_budget']}) |")
    return lines


def _pair_rows(paired: dict[str, Any], reference: str, unit: str) -> list[str]:
    lines: list[tuple[int, str]] = []
    for key, r in paired.items():
        a, b = key.split(" vs ")
        arm_a, at = a.rsplit("@", 1)
        arm_b = b.rsplit("@", 1)[0]
        if arm_a not in (reference, f"{reference}+public") or arm_b.split("+")[0] == reference or ":" in arm_b:
            continue
        if arm_b != "greedy" and arm_a.endswith("+public") != arm_b.endswith("+public"):
            continue  # like with like: the value rule against the value rule, public tests against public tests
        lo, hi = r["ci95"]
        lines.append((int(at), f"| {at}{unit} | {arm_a} vs {arm_b} | {r['a_passed']} / {r['b_passed']} | {r['won']} / {r['lost']} |"
                                f" {r['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {r['mcnemar_p']:.3f} |"))
    return [line for _, line in sorted(lines, key=lambda kv: kv[0])]


def paired_table(report: dict[str, Any], dataset: str, reference: str) -> list[str]:
    head = ["| budget | pair | solved | won / lost | difference [95 % CI] | McNemar p |", "|---:|---|---|---|---|---:|"]
    return head + _pair_rows(report["paired"][dataset], reference, "")


def token_table(report: dict[str, Any], dataset: str, reference: str) -> list[str]:
    tokens = report["tokens"][dataset]
    n = _n(report, dataset)
    budgets = [str(t) for t in tokens["budgets"]]
    lines = [f"| arm (solved of {n}) | " + " | ".join(f"{int(t):,} tok" for t in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for arm, by_t in tokens["pass1"].items():
        samples = tokens["samples"].get(arm, {})
        lines.append(f"| {arm} | " + " | ".join(
            f"{_count(by_t.get(t), n)} ({samples[t]:.1f} samples)" if t in samples and t in by_t else _count(by_t.get(t), n)
            for t in budgets) + " |")
    head = ["", "| tokens | pair | solved | won / lost | difference [95 % CI] | McNemar p |", "|---:|---|---|---|---|---:|"]
    return lines + head + _pair_rows(tokens["paired"], reference, " tokens")


def tables(report: dict[str, Any], *, reference: str = "vm_mcts", datasets: list[str] | None = None) -> str:
    missing = report["meta"].get("phases_not_run") or []
    out: list[str] = [f"Phases not run (no file; their arms are absent below): {', '.join(missing)}.", ""] if missing else []
    for dataset in datasets or [d for d in report if d in report["power"]]:
        if dataset not in report:
            continue
        out += [f"#### {dataset}: problems solved by budget (sampled programs)", "", *solved_table(report, dataset), "",
                f"#### {dataset}: cost per problem", "", *cost_table(report, dataset), "",
                f"#### {dataset}: {reference} paired against the other strategies, same final-answer rule", "", *paired_table(report, dataset, reference), "",
                f"#### {dataset}: at equal policy tokens", "", *token_table(report, dataset, reference), ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report", type=Path, nargs="?", default=Path("bench/results/eval.json"))
    ap.add_argument("--reference", default="vm_mcts", help="the strategy paired against every other arm")
    ap.add_argument("--datasets", nargs="+")
    args = ap.parse_args()
    print(tables(json.loads(args.report.read_text()), reference=args.reference, datasets=args.datasets))


if __name__ == "__main__":
    main()
