"""Two `restrl eval` phase files of the same problems, compared paired: one setting against another.

    python -m bench.compare_phases A.json.gz B.json.gz [--budget 20] [--names one samples]
        [--rules value public count:0.5] [--out FILE]

`restrl eval` refuses to mix phases made with different settings in one report (they are not the
same arm). A study of one setting (``search.merged_visits``, a value model, ``c_uct``) runs the
same strategy twice into two output folders; this reads both phases (or their
``.partial.jsonl.gz`` while one is still running: only problems finished in both count) and, per
final-answer rule (value; public tests then value; ``count:w``, value x count^w, where the phases keep
each sample's step) at the sample budget, prints pass@1 of each, wins
and losses, the paired-bootstrap 95 % interval of the difference and the exact McNemar p
(`training.paired`), the oracle (a passing program was sampled), and the mean policy tokens and
value calls per problem, and the value rule's misses: problems where a passing program was sampled
and a failing one chosen, by the step (expansion) that sampled the choice, and the median value by
which it beat the best passing program. Each other rule is also compared with the value rule on the
same run (``against_value``: how a final-answer rule such as count:w is chosen on validation phases).
Two strategies run under one config (vm_mcts vs best_of_n phases of one `restrl eval`, best
``interleave``d) compare the same way, before the whole report exists. Writes JSON with ``--out``;
never asserts anything.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
from pathlib import Path
from typing import Any

from training.paired import Bootstrap
from training.search_eval import choose, has_counts, read_phase, snapshot_of

RULES = ("value", "public")


def load_records(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the settings it was made with, problem id -> record) from a phase or a partial phase file."""
    if path.name.endswith(".partial.jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = []
            for raw in fh:
                try:
                    lines.append(json.loads(raw))
                except json.JSONDecodeError:
                    break
        header = lines[0]["header"]
        return header["config"], {header["problems"][line["i"]]: line["record"] for line in lines[1:]}
    phase = read_phase(path)
    return phase["config"], dict(zip(phase["problems"], phase["results"], strict=True))


def value_misses(records: list[dict[str, Any]], *, budget: int) -> dict[str, Any]:
    """Where the value rule chose a failing program although a passing one was sampled by ``budget``:
    how many, the step that sampled each choice, and the median value gap to the best passing one."""
    by_step: dict[int, int] = {}
    gaps: list[float] = []
    for rec in records:
        _, cands = snapshot_of(rec, unit="samples", limit=budget)
        passing = [c for c in cands if c.get("passed") and c["value"] is not None]
        pick = choose(rec, "value", unit="samples", limit=budget)
        if not passing or pick is None or pick.get("passed"):
            continue
        by_step[pick["step"]] = by_step.get(pick["step"], 0) + 1
        gaps.append(pick["value"] - max(c["value"] for c in passing))
    return {"problems": len(gaps), "chosen_by_step": dict(sorted(by_step.items())),
            "median_value_gap": statistics.median(gaps) if gaps else None}


def compare(a: Path, b: Path, *, budget: int, names: tuple[str, str], rules: tuple[str, ...] = RULES) -> dict[str, Any]:
    config_a, recs_a = load_records(a)
    config_b, recs_b = load_records(b)
    ids = sorted(set(recs_a) & set(recs_b))
    boot = Bootstrap(len(ids))
    counted = has_counts({"results": [recs[i] for recs in (recs_a, recs_b) for i in ids]})
    out: dict[str, Any] = {
        "files": [str(a), str(b)], "names": list(names), "budget": budget, "problems": len(ids),
        "settings_that_differ": {k: [config_a.get(k), config_b.get(k)] for k in sorted(set(config_a) | set(config_b))
                                 if config_a.get(k) != config_b.get(k)},
        "rules": {}, "against_value": {name: {} for name in names},
        "rules_without_counts": [r for r in rules if r.startswith("count:")] if not counted else [],
    }
    rules = tuple(r for r in rules if counted or not r.startswith("count:"))  # no counts recorded: named, not read as 1
    passed: dict[str, list[list[bool]]] = {}
    for rule in dict.fromkeys(("value", *rules)):
        passed[rule] = [[bool(p and p.get("passed")) for p in (choose(recs[i], rule, unit="samples", limit=budget) for i in ids)]
                        for recs in (recs_a, recs_b)]
        if rule in rules:
            out["rules"][rule] = boot.compare(passed[rule][0], passed[rule][1])
    for rule in rules:
        if rule != "value":
            for k, name in enumerate(names):
                out["against_value"][name][rule] = boot.compare(passed[rule][k], passed["value"][k])
    for name, recs in zip(names, (recs_a, recs_b), strict=True):
        snaps = [snapshot_of(recs[i], unit="samples", limit=budget) for i in ids]
        steps = [recs[i]["steps"][t - 1] if t else [0, 0, 0] for i, (t, _) in zip(ids, snaps, strict=True)]
        out[name] = {
            "oracle": sum(any(c.get("passed") for c in cands) for _, cands in snaps),
            "policy_tokens_mean": sum(s[1] for s in steps) / max(len(ids), 1),
            "value_calls_mean": sum(s[2] for s in steps) / max(len(ids), 1),
            "candidates_mean": sum(len(cands) for _, cands in snaps) / max(len(ids), 1),
            "value_misses": value_misses([recs[i] for i in ids], budget=budget),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--budget", type=int, default=20, help="sampled programs (the snapshot read from each run)")
    p.add_argument("--names", nargs=2, default=("a", "b"))
    p.add_argument("--rules", nargs="+", default=list(RULES), help="final-answer rules: value, public, count:W (value x count^W)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = compare(args.a, args.b, budget=args.budget, names=tuple(args.names), rules=tuple(args.rules))
    n = result["problems"]
    a, b = args.names
    print(f"{n} problems, budget {args.budget}; settings that differ: {result['settings_that_differ']}")
    print(f"{'rule':10} {a:>8} {b:>8} {'won':>4} {'lost':>4} {'diff':>7} {'95% CI':>17} {'McNemar p':>10}")
    for rule, r in result["rules"].items():
        lo, hi = r["ci95"]
        print(f"{rule:10} {r['a_passed']:8d} {r['b_passed']:8d} {r['won']:4d} {r['lost']:4d} {r['difference']:+7.3f}"
              f" [{lo:+.3f}, {hi:+.3f}] {r['mcnemar_p']:10.3f}")
    if result["rules_without_counts"]:
        print(f"left out: {result['rules_without_counts']} (these phases keep no sample counts)")
    for name in args.names:
        for rule, r in result["against_value"][name].items():
            lo, hi = r["ci95"]
            print(f"{name}: {rule} vs value {r['a_passed']} vs {r['b_passed']}, won {r['won']}, lost {r['lost']},"
                  f" {r['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    for name in args.names:
        s = result[name]
        print(f"{name}: oracle {s['oracle']}/{n}, policy tokens {s['policy_tokens_mean']:.0f}, value calls"
              f" {s['value_calls_mean']:.1f}, candidates {s['candidates_mean']:.1f} per problem")
        m = s["value_misses"]
        if m["problems"]:
            print(f"{name}: the value rule chose a failing program where a passing one was sampled in {m['problems']}"
                  f" problems; the choice by step {m['chosen_by_step']}, median value gap {m['median_value_gap']:+.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
