"""Final-answer rules over one search's programs, compared offline on executed search traces.

The value rule returns the program the value model scores highest. Where a search sampled a passing
program, that rule returns it only about half the time (bench/RESULTS.md, the second ReST
iteration). This re-ranks each guided search's programs of `restrl train collect-values` traces
(every rollout executed, so every program's reward is known) by other rules and pairs each against
the value rule, per problem: no model runs, so a rule costs seconds to try. The rules add how often
the search sampled the same program (``count``: self-consistency) to its value. Choose only on gym
*train* problems the value model never trained on (``--problems``: ``unseen`` = not in
``--exclude``, ``held-out`` = the problems a value run held out of ``--rows``). Never asserts anything.

    python -m bench.choice_rules runs/value_data3/traces --problems unseen --exclude configs/value_data.yaml
    python -m bench.choice_rules runs/value_data4/traces --problems held-out --rows runs/value_data3/rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.expansion_yield import held_out_problems, trace_programs
from search.types import count_weighted
from training.paired import Bootstrap

Program = dict[str, Any]

RULES: dict[str, Callable[[Program], Any]] = {
    "value": lambda p: p["value"],  # the search's rule (`search_eval.choose` with "value")
    "value+0.05log(count)": lambda p: p["value"] + 0.05 * math.log(p["count"]),
    "value*count^0.25": lambda p: count_weighted(p["value"], p["count"], 0.25),
    "value*count^0.5": lambda p: count_weighted(p["value"], p["count"], 0.5),
    "value*count": lambda p: count_weighted(p["value"], p["count"], 1.0),
    "count,value": lambda p: (p["count"], p["value"]),
}


def programs(trace: dict[str, Any]) -> list[Program]:
    """Distinct programs of one executed search in first-sampled order (`trace_programs`); a
    program the search gave no value is scored 0 for the rules' arithmetic and marked ``unvalued``."""
    return [{**p, "value": p["value"] or 0.0, "unvalued": p["value"] is None} for p in trace_programs(trace).values()]


def choice(progs: list[Program], rule: str) -> Program:
    """The program a rule returns: an unvalued program only when nothing else was valued, as in the
    search and `restrl eval`'s rules; the first sampled on ties, as the search does."""
    return max(progs, key=lambda p: (not p["unvalued"], RULES[rule](p)))  # max keeps the first of equal keys


def compare_rules(folder: Path, problems: set[str] | None) -> dict[str, Any]:
    passed: dict[str, list[bool]] = {rule: [] for rule in RULES}
    oracle: list[bool] = []
    for path in sorted(folder.glob("*.guided.json")):
        trace = json.loads(path.read_text())
        if problems is not None and trace["problem"]["id"] not in problems:
            continue
        progs = programs(trace)
        oracle.append(any(p["reward"] >= 1.0 for p in progs))
        for rule in RULES:
            passed[rule].append(choice(progs, rule)["reward"] >= 1.0)
    boot = Bootstrap(len(oracle))
    return {"problems": len(oracle), "oracle": sum(oracle),
            "rules": {rule: boot.compare(v, passed["value"]) for rule, v in passed.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", type=Path, help="collect-values' traces/ (its guided searches are compared)")
    ap.add_argument("--problems", choices=["all", "unseen", "held-out"], default="all")
    ap.add_argument("--exclude", type=Path, help="unseen: the problems the value model trained on (a collect-values config or problems JSONL)")
    ap.add_argument("--rows", type=Path, help="held-out: the rows file whose split (configs/value.yaml's) held the problems out")
    ap.add_argument("--holdout-exclude", type=Path, default=Path("configs/value_data.yaml"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    problems: set[str] | None = None
    if args.problems == "unseen":
        from training.value_train import excluded_problems

        if args.exclude is None:
            ap.error("--problems unseen needs --exclude")
        seen = excluded_problems(args.exclude)
        problems = {json.loads(path.read_text())["problem"]["id"] for path in args.traces.glob("*.guided.json")} - seen
    elif args.problems == "held-out":
        if args.rows is None:
            ap.error("--problems held-out needs --rows")
        problems = held_out_problems(args.rows, holdout_exclude=args.holdout_exclude)
    report = compare_rules(args.traces, problems)
    print(f"{args.traces}: {report['problems']} problems ({args.problems}); a passing program sampled in {report['oracle']}")
    for rule, c in report["rules"].items():
        print(f"  {rule:<22} {c['a_passed']:>4}   vs value: won {c['won']}, lost {c['lost']}, {c['difference']:+.3f} "
              f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], p {c['mcnemar_p']:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"traces": str(args.traces), "problems": args.problems, **report}, indent=2))


if __name__ == "__main__":
    main()
