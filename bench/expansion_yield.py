"""Where a tree search's samples pass: the yield of an expansion by what the search knew of its state.

Reads executed search traces (`restrl train collect-values`' ``traces/`` folder: every rollout
carries its executed reward) and counts, per search mode (``tests``: MCTS valued by the tests;
``guided``: valued by the value model, the decoding settings), the share of sampled programs that
pass every test, by the expanded node:

* ``root``: the first expansion, the samples best-of-N would draw;
* ``below_passing``: an earlier rollout through this state passed every test;
* ``below_partial``: earlier rollouts through it passed some tests, none all;
* ``below_zero``: every earlier rollout through it passed none;
* ``unseen``: no earlier rollout went through it (a merged state);

and by the node's depth. A tree search beats independent sampling only where its later expansions
yield more than the root's; the value model chooses which states those are.

Collection searches of one problem share their seeds (the root's samples are the same in both
modes), so they give no independent sample to compare with. ``--phases TREE BON`` does that on two
`restrl eval` phase files of the same problems (a tree strategy and best_of_n, independent
samples): the share of the tree's distinct programs after its first expansion that pass, against
best_of_n's distinct programs on the same problems, split by whether the tree's first expansion
sampled a passing program. Never asserts anything.

    python -m bench.expansion_yield runs/value_data3/traces [--phases TREE.json.gz BON.json.gz ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from search.tree import rollout_code
from training.search_eval import read_phase
from training.value_data import rollout_reward

CLASSES = ("root", "below_passing", "below_partial", "below_zero", "unseen")


def expansion_yield(trace: dict[str, Any]) -> list[tuple[str, int, bool]]:
    """(class, node depth, passed every test) of every sample with an executed reward, in search order."""
    nodes = {n["id"]: n for n in trace["nodes"]}
    seen: list[tuple[str, float]] = []  # (program, reward) of the rollouts so far
    out: list[tuple[str, int, bool]] = []
    for exp in trace["expansions"]:
        node = nodes[exp["node"]]
        state = node["state"]
        before = [r for code, r in seen if code.startswith(state)]
        if node["parent"] is None:
            cls = "root"
        elif not before:
            cls = "unseen"
        else:
            cls = "below_passing" if max(before) >= 1.0 else "below_partial" if max(before) > 0 else "below_zero"
        for ro in exp["rollouts"]:
            reward = rollout_reward(ro)
            if reward is None:
                continue
            sample = exp["samples"][ro["sample"]]
            out.append((cls, node["depth"], reward >= 1.0))
            seen.append((rollout_code(state, sample["text"], sample["finish_reason"]), reward))
    return out


def _share(n: int, k: int) -> dict[str, Any]:
    return {"samples": n, "passed": k, "pass_rate": k / n if n else None}


def summarize(folder: Path) -> dict[str, Any]:
    tallies: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    problems: dict[str, dict[str, int]] = defaultdict(lambda: {"searches": 0, "root_passed": 0, "any_passed": 0})
    for path in sorted(folder.glob("*.json")):
        mode = "guided" if path.name.endswith(".guided.json") else "tests"
        samples = expansion_yield(json.loads(path.read_text()))
        if not samples:
            continue
        p = problems[mode]
        p["searches"] += 1
        p["root_passed"] += any(ok for cls, _, ok in samples if cls == "root")
        p["any_passed"] += any(ok for _, _, ok in samples)
        for cls, depth, ok in samples:
            for key in (f"class:{cls}", f"depth:{min(depth, 4)}" + ("+" if depth >= 4 else ""), "all"):
                t = tallies[mode][key]
                t[0] += 1
                t[1] += ok
    return {mode: {"problems": problems[mode], **{k: _share(*v) for k, v in sorted(t.items())}} for mode, t in sorted(tallies.items())}


def paired_yield(tree_phase: dict[str, Any], bon_phase: dict[str, Any]) -> dict[str, Any]:
    """Per condition on the tree's first expansion (``root_passed``, ``root_failed``, ``all``): the
    problems, and the pass rate of the tree's distinct programs sampled after its first expansion
    and of best_of_n's distinct programs on the same problems."""
    bon = {r["problem_id"]: r for r in bon_phase["results"]}
    out: dict[str, Any] = {}
    for cond in ("root_passed", "root_failed", "all"):
        problems = tree_n = tree_k = bon_n = bon_k = 0
        for r in tree_phase["results"]:
            root_passed = any(c["passed"] for c in r["candidates"] if c["step"] == 0)
            if (cond == "root_passed" and not root_passed) or (cond == "root_failed" and root_passed):
                continue
            later = [c["passed"] for c in r["candidates"] if c["step"] > 0]
            other = [c["passed"] for c in bon[r["problem_id"]]["candidates"]]
            problems += 1
            tree_n, tree_k, bon_n, bon_k = tree_n + len(later), tree_k + sum(later), bon_n + len(other), bon_k + sum(other)
        out[cond] = {"problems": problems, "tree_after_first": _share(tree_n, tree_k), "best_of_n": _share(bon_n, bon_k)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", type=Path, help="a folder of executed search traces (collect-values' traces/)")
    ap.add_argument("--phases", type=Path, nargs="*", default=[], help="pairs of eval phase files: TREE BON [TREE BON ...]")
    ap.add_argument("--out", type=Path, help="write the table as JSON here")
    args = ap.parse_args()
    if len(args.phases) % 2:
        ap.error("--phases takes pairs: a tree strategy's phase file, then best_of_n's on the same problems")
    report = summarize(args.traces)
    for mode, rows in report.items():
        p = rows["problems"]
        print(f"{mode}: {p['searches']} searches; a passing program among the root's samples in {p['root_passed']}, anywhere in {p['any_passed']}")
        print(f"  {'drawn from':<22} {'samples':>8} {'pass rate':>10}")
        for key in [f"class:{c}" for c in CLASSES] + sorted(k for k in rows if k.startswith("depth:")) + ["all"]:
            if key in rows:
                print(f"  {key:<22} {rows[key]['samples']:>8} {rows[key]['pass_rate']:>10.3f}")
    paired = {}
    for tree_path, bon_path in zip(args.phases[::2], args.phases[1::2], strict=True):
        tree, bon = read_phase(tree_path), read_phase(bon_path)
        if tree["problems"] != bon["problems"]:
            raise SystemExit(f"{tree_path} and {bon_path} hold different problems")
        key = f"{tree_path.name} vs {bon_path.name}"
        paired[key] = paired_yield(tree, bon)
        print(f"{key}: pass rate of distinct programs")
        for cond, row in paired[key].items():
            t, b = row["tree_after_first"], row["best_of_n"]
            print(f"  {cond:<12} {row['problems']:>4} problems: tree after its first expansion {t['passed']}/{t['samples']} "
                  f"= {t['pass_rate'] or 0:.3f}, best_of_n {b['passed']}/{b['samples']} = {b['pass_rate'] or 0:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"traces": str(args.traces), "modes": report, "phases": paired}, indent=2))


if __name__ == "__main__":
    main()
