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

by the node's depth, split by whether the sample finished within one step of the node (it became
a finished child, which the spec's tree never samples from again; ``SearchConfig.widen`` can), and
by the expansion's order in the search. A tree search beats independent sampling only where its later expansions
yield more than the root's; the value model chooses which states those are. Per mode also the
tree's shape (how many roots have a single child: in rewrite mode the signature line) and the
Pearson r between the value of an expanded state and the pass rate of its own expansion (does the
value model send the search where the passes are).

Collection searches of one problem share their seeds (the root's samples are the same in both
modes), so they give no independent sample to compare with. ``--phases TREE BON`` does that on two
`restrl eval` phase files (a tree strategy and best_of_n, independent samples; finished phases or
``.partial.jsonl.gz``, read on the problems both finished): the share of the tree's distinct
programs after its first expansion that pass, against best_of_n's distinct programs on the same
problems, split by whether the tree's first expansion sampled a passing program; and for each of
the two phases the pass rate of its samples by order, in blocks of ``--block`` samples (an
expansion's k: the tree's expansions against best_of_n's draws in the same positions), with its
distinct programs per problem.

``--against OTHER_TRACES`` compares the guided searches of two collections on the problems both
searched, paired by problem: one ReST iteration's value model guiding the search against the
previous one's (e.g. v4's VM_1 against v3's VM_0), each search with samples of its own. Per
search: does the value rule's final choice pass (the program the product would return at that
budget), and was a passing program sampled at all. ``--held-out ROWS`` restricts a second table to
the problems a value run with configs/value.yaml's split (and ``--holdout-exclude``)
held out of those rows: the problems neither model trained on. Never asserts anything.

    python -m bench.expansion_yield runs/value_data3/traces [--phases TREE.json.gz BON.json.gz ... --block 5]
        [--against runs/value_data4/traces --held-out runs/value_data3/rows.jsonl] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.compare_phases import load_records
from search.tree import rollout_code, split_continuations
from training.paired import Bootstrap
from training.search_eval import choose, has_counts, search_record
from training.value_data import rollout_reward

CLASSES = ("root", "below_passing", "below_partial", "below_zero", "unseen")


def expansion_yield(trace: dict[str, Any]) -> list[tuple[str, int, bool]]:
    """(class, node depth, passed every test) of every sample with an executed reward, in search order."""
    return [(s["class"], s["depth"], s["passed"]) for s in sample_yield(trace)]


def sample_yield(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sample with an executed reward, in search order: its expansion's class, node depth and
    order (``seq``), whether it finished within one step of the expanded state (``one_step``: it
    became a finished child, which the spec's tree never expands again) and whether it passed."""
    nodes = {n["id"]: n for n in trace["nodes"]}
    step_lines = int(trace.get("config", {}).get("step_lines", 1))
    seen: list[tuple[str, float]] = []  # (program, reward) of the rollouts so far
    out: list[dict[str, Any]] = []
    for exp in trace["expansions"]:
        node = nodes[exp["node"]]
        state = node["state"]
        children, rollouts = split_continuations(state, [x["text"] for x in exp["samples"]],
                                                 [x["finish_reason"] for x in exp["samples"]], step_lines=step_lines)
        finished = {r.sample for r in rollouts if r.child is not None and children[r.child].terminal}
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
            out.append({"class": cls, "depth": node["depth"], "seq": exp["seq"], "passed": reward >= 1.0,
                        "one_step": ro["sample"] in finished})  # a finished child, as the tree splits it
            seen.append((rollout_code(state, sample["text"], sample["finish_reason"]), reward))
    return out


def _share(n: int, k: int) -> dict[str, Any]:
    return {"samples": n, "passed": k, "pass_rate": k / n if n else None}


def tree_shape(trace: dict[str, Any]) -> dict[str, Any]:
    """Of one executed search: how many children its root has, and per expansion of a state the
    value model scored (``initial_value``) that state's value and the share of the expansion's
    executed samples that pass every test."""
    nodes = {n["id"]: n for n in trace["nodes"]}
    root = next(n["id"] for n in trace["nodes"] if n["parent"] is None)
    pairs = []
    for exp in trace["expansions"]:
        value = nodes[exp["node"]].get("initial_value")
        rewards = [r for r in (rollout_reward(ro) for ro in exp["rollouts"]) if r is not None]
        if value is not None and rewards:
            pairs.append((float(value), sum(r >= 1.0 for r in rewards) / len(rewards)))
    return {"root_children": sum(1 for n in trace["nodes"] if n["parent"] == root), "value_and_pass_rate": pairs}


def _pearson(pairs: list[tuple[float, float]]) -> float | None:
    if len(pairs) < 2:
        return None
    xs, ys = zip(*pairs, strict=True)
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # a constant column
        return None


def summarize(folder: Path) -> dict[str, Any]:
    tallies: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    problems: dict[str, dict[str, int]] = defaultdict(lambda: {"searches": 0, "root_passed": 0, "any_passed": 0, "single_child_roots": 0})
    value_pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for path in sorted(folder.glob("*.json")):
        mode = "guided" if path.name.endswith(".guided.json") else "tests"
        trace = json.loads(path.read_text())
        samples = sample_yield(trace)
        if not samples:
            continue
        p = problems[mode]
        p["searches"] += 1
        shape = tree_shape(trace)
        p["single_child_roots"] += shape["root_children"] == 1
        value_pairs[mode] += shape["value_and_pass_rate"]
        p["root_passed"] += any(s["passed"] for s in samples if s["class"] == "root")
        p["any_passed"] += any(s["passed"] for s in samples)
        for s in samples:
            depth = f"depth:{min(s['depth'], 4)}" + ("+" if s["depth"] >= 4 else "")
            finish = "one_step" if s["one_step"] else "longer"
            for key in (f"class:{s['class']}", depth, f"{depth},{finish}", f"expansion:{min(s['seq'], 8)}" + ("+" if s["seq"] >= 8 else ""), "all"):
                t = tallies[mode][key]
                t[0] += 1
                t[1] += s["passed"]
    return {mode: {"problems": problems[mode],
                   "value_vs_pass_rate": {"expansions": len(value_pairs[mode]), "pearson_r": _pearson(value_pairs[mode])},
                   **{k: _share(*v) for k, v in sorted(t.items())}} for mode, t in sorted(tallies.items())}


def order_yield(phase: dict[str, Any], *, block: int) -> dict[str, Any]:
    """Of one `restrl eval` phase: the pass rate of its samples by their order, in blocks of
    ``block`` samples (block i: the samples numbered i*block to (i+1)*block - 1 over the search,
    whether the strategy records a step per expansion or per sample), and its distinct programs
    per problem."""
    tally: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    distinct = 0
    for r in phase["results"]:
        distinct += len(r["candidates"])
        for c in r["candidates"]:
            for st in c["sampled_at"]:
                first = r["steps"][st - 1][0] if st else 0  # samples taken before this step
                t = tally[first // block]
                t[0] += 1
                t[1] += bool(c["passed"])
    n = len(phase["results"])
    return {"block": block, "distinct_per_problem": distinct / n if n else None,
            "by_block": {str(i): _share(*v) for i, v in sorted(tally.items())}}


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


def phase_pair(tree_path: Path, bon_path: Path, *, block: int) -> dict[str, Any]:
    """`paired_yield` of two phase files (finished or partial) on the problems both finished, with
    each phase's `order_yield` (``order``; a phase from before ``sampled_at`` has none) and how many
    problems each had finished (``finished``)."""
    (_, tree_recs), (_, bon_recs) = load_records(tree_path), load_records(bon_path)
    common = [pid for pid in tree_recs if pid in bon_recs]
    if not common:
        raise SystemExit(f"{tree_path} and {bon_path} share no finished problem")
    tree, bon = ({"results": [{**recs[pid], "problem_id": pid} for pid in common]} for recs in (tree_recs, bon_recs))
    return {**paired_yield(tree, bon), "finished": [len(tree_recs), len(bon_recs)],
            "order": {name: order_yield(ph, block=block) for name, ph in (("tree", tree), ("best_of_n", bon)) if has_counts(ph)}}


def trace_programs(trace: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Distinct programs of one executed search, in first-sampled order, by code: the value model's
    score of the first rollout that had one (None if none did), times sampled, executed reward."""
    nodes = {n["id"]: n for n in trace["nodes"]}
    out: dict[str, dict[str, Any]] = {}
    for exp in sorted(trace["expansions"], key=lambda e: e["seq"]):
        state = nodes[exp["node"]]["state"]
        for ro in exp["rollouts"]:
            smp = exp["samples"][ro["sample"]]
            p = out.setdefault(rollout_code(state, smp["text"], smp["finish_reason"]), {"count": 0, "value": None, "reward": 0.0})
            p["count"] += 1
            p["value"] = p["value"] if p["value"] is not None else ro["value"]
            p["reward"] = max(p["reward"], rollout_reward(ro) or 0.0)
    return out


def guided_outcome(trace: dict[str, Any]) -> dict[str, bool]:
    """Of one executed search: whether the value rule's final choice (the search's own rule,
    `training.search_eval.choose`) passes every test (``chosen``), whether any sampled program does
    (``any``), and whether the first expansion's did (``root``)."""
    progs = trace_programs(trace)
    record = search_record(trace, per_sample=False)
    pick = choose(record, "value", unit="samples", limit=float("inf"))
    return {"chosen": pick is not None and progs[pick["code"]]["reward"] >= 1.0,
            "any": any(p["reward"] >= 1.0 for p in progs.values()),
            "root": any(c["step"] == 0 and progs[c["code"]]["reward"] >= 1.0 for c in record["candidates"])}


def compare_guided(a: Path, b: Path, *, problems: set[str] | None = None) -> dict[str, Any]:
    """The guided searches of folders ``a`` and ``b`` on the problems both hold (within
    ``problems`` when given), paired: the value rule's choice and any passing program."""
    def outcomes(folder: Path) -> dict[str, dict[str, Any]]:
        out = {}
        for path in sorted(folder.glob("*.guided.json")):
            trace = json.loads(path.read_text())
            out[trace["problem"]["id"]] = {**guided_outcome(trace), "value_version": trace["value_version"]}
        return out

    oa, ob = outcomes(a), outcomes(b)
    ids = sorted(set(oa) & set(ob) & (problems if problems is not None else set(oa)))
    boot = Bootstrap(len(ids))
    return {"problems": len(ids),
            "value_versions": [sorted({oa[i]["value_version"] for i in ids}), sorted({ob[i]["value_version"] for i in ids})],
            **{key: boot.compare([oa[i][key] for i in ids], [ob[i][key] for i in ids]) for key in ("chosen", "any", "root")}}


def held_out_problems(rows_file: Path, *, holdout_exclude: Path | None, train_config: Path = Path("configs/value.yaml")) -> set[str]:
    """The problems `restrl train value --config train_config` holds out of these rows (its
    ``holdout_fraction`` and ``split_seed``; ``holdout_exclude``'s problems are never held out)."""
    from training.cli import load_job_config
    from training.value_data import read_rows
    from training.value_train import ValueTrainConfig, excluded_problems, split_by_problem

    cfg = load_job_config(ValueTrainConfig, str(train_config), [])
    rows = [{"problem_id": r["problem_id"]} for r in read_rows(rows_file)]
    never = excluded_problems(holdout_exclude) if holdout_exclude else set()
    return {r["problem_id"] for r in split_by_problem(rows, holdout_fraction=cfg.holdout_fraction, seed=cfg.split_seed, never=never)[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", type=Path, help="a folder of executed search traces (collect-values' traces/)")
    ap.add_argument("--phases", type=Path, nargs="*", default=[], help="pairs of eval phase files: TREE BON [TREE BON ...]")
    ap.add_argument("--block", type=int, default=5, help="with --phases: samples per block of the order table (an expansion's k)")
    ap.add_argument("--against", type=Path, help="another collection's traces/: its guided searches paired with these by problem")
    ap.add_argument("--held-out", type=Path, help="with --against: also on the problems a value run holds out of this rows file")
    ap.add_argument("--holdout-exclude", type=Path, default=Path("configs/value_data.yaml"),
                    help="with --held-out: the problems never held out (value training's holdout_exclude)")
    ap.add_argument("--out", type=Path, help="write the table as JSON here")
    args = ap.parse_args()
    if len(args.phases) % 2:
        ap.error("--phases takes pairs: a tree strategy's phase file, then best_of_n's on the same problems")
    report = summarize(args.traces)
    for mode, rows in report.items():
        p = rows["problems"]
        vp = rows["value_vs_pass_rate"]
        print(f"{mode}: {p['searches']} searches; a passing program among the root's samples in {p['root_passed']}, anywhere in {p['any_passed']}; "
              f"{p['single_child_roots']} roots with a single child; r(value of the expanded state, its expansion's pass rate) "
              f"{'n/a' if vp['pearson_r'] is None else format(vp['pearson_r'], '.3f')} over {vp['expansions']} expansions")
        print(f"  {'drawn from':<22} {'samples':>8} {'pass rate':>10}")
        for key in ([f"class:{c}" for c in CLASSES] + sorted(k for k in rows if k.startswith("depth:"))
                    + sorted(k for k in rows if k.startswith("expansion:")) + ["all"]):
            if key in rows:
                print(f"  {key:<22} {rows[key]['samples']:>8} {rows[key]['pass_rate']:>10.3f}")
    paired = {}
    for tree_path, bon_path in zip(args.phases[::2], args.phases[1::2], strict=True):
        key = f"{tree_path.name} vs {bon_path.name}"
        paired[key] = phase_pair(tree_path, bon_path, block=args.block)
        print(f"{key}: {paired[key]['all']['problems']} problems both finished (of {paired[key]['finished'][0]} and {paired[key]['finished'][1]})")
        print(f"{key}: pass rate of distinct programs")
        for cond in ("root_passed", "root_failed", "all"):
            row = paired[key][cond]
            t, b = row["tree_after_first"], row["best_of_n"]
            print(f"  {cond:<12} {row['problems']:>4} problems: tree after its first expansion {t['passed']}/{t['samples']} "
                  f"= {t['pass_rate'] or 0:.3f}, best_of_n {b['passed']}/{b['samples']} = {b['pass_rate'] or 0:.3f}")
        for name, o in paired[key]["order"].items():
            rates = " / ".join(f"{v['pass_rate']:.3f}" for v in o["by_block"].values())
            print(f"  {name}: samples' pass rate by block of {o['block']}: {rates}; {o['distinct_per_problem']:.1f} distinct programs per problem")
    against = {}
    if args.against:
        subsets: dict[str, set[str] | None] = {"all": None}
        if args.held_out:
            subsets["held_out"] = held_out_problems(args.held_out, holdout_exclude=args.holdout_exclude)
        for name, ids in subsets.items():
            against[name] = row = compare_guided(args.traces, args.against, problems=ids)
            print(f"guided searches, {args.traces} ({', '.join(row['value_versions'][0])}) vs {args.against} "
                  f"({', '.join(row['value_versions'][1])}), {name}: {row['problems']} problems")
            for key, label in (("chosen", "value rule's choice passes"), ("root", "first expansion sampled a pass"), ("any", "a passing program sampled")):
                c = row[key]
                print(f"  {label:<32} {c['a_passed']:>4} vs {c['b_passed']:>4}  won {c['won']}, lost {c['lost']}, "
                      f"{c['difference']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], p {c['mcnemar_p']:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"traces": str(args.traces), "modes": report, "phases": paired, "against": against}, indent=2))


if __name__ == "__main__":
    main()
