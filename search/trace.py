"""Search traces: a JSON-able record of one search that replays exactly and feeds training.

`build_trace` (called by `run_search` when ``config.record_trace``) records the config, the
model versions, the seed, the problem, every node (parent, line, state, value, visits, terminal,
exhausted, and the rollouts of its subtree: count and mean value - the state-value target of
RESTRL_SPEC.md section 3), every expansion in issue order (node, n, samples with their token
counts and finish reasons, rollout values and sandbox statuses, children created) and every
state the value model scored. `search.replay` turns a trace back into a policy and a value
model; `load_trace` / `save_trace` read and write the files training jobs consume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.context import SearchRun

TRACE_FORMAT = "restrl.search-trace"
TRACE_VERSION = 1


def build_trace(run: SearchRun, strategy: str) -> dict[str, Any]:
    nodes = run.tree.nodes
    count = {n.id: len(n.rollout_values) for n in nodes}
    total = {n.id: sum(n.rollout_values) for n in nodes}
    for n in reversed(nodes):  # children have larger ids than their parents
        if n.parent is not None:
            count[n.parent.id] += count[n.id]
            total[n.parent.id] += total[n.id]
    return {
        "format": TRACE_FORMAT,
        "version": TRACE_VERSION,
        "strategy": strategy,
        "config": run.config.model_dump(mode="json"),
        "seed": run.config.seed,
        "policy_version": str(run.policy.version),
        "value_version": str(run.evaluator.version),
        "prompt_mode": run.mode,
        "problem": run.problem.model_dump(mode="json"),
        "nodes": [
            {
                "id": n.id,
                "parent": n.parent.id if n.parent else None,
                "line": n.line,
                "state": n.state,
                "depth": n.depth,
                "value": n.value,
                "initial_value": n.initial_value,
                "visits": n.visits,
                "terminal": n.terminal,
                "expanded": n.expanded,
                "exhausted": n.exhausted,
                "subtree_rollouts": count[n.id],
                "subtree_mean": total[n.id] / count[n.id] if count[n.id] else None,
            }
            for n in nodes
        ],
        "expansions": run.trace_expansions,
        "values": [[s, v] for s, v in run.trace_values.items()],
        "candidates": [c.model_dump(mode="json") for c in run.ranked()],
        "stop_reason": run.stop_reason,
        "usage": run.usage.model_dump(mode="json"),
    }


def save_trace(trace: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(trace, ensure_ascii=False))
    tmp.replace(path)
    return path


def load_trace(path: str | Path) -> dict[str, Any]:
    """Read a trace file; raise ValueError naming the file when it is not a search trace we know."""
    path = Path(path)
    try:
        trace = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read a search trace ({exc})") from exc
    if not isinstance(trace, dict) or trace.get("format") != TRACE_FORMAT:
        raise ValueError(f"{path}: not a search trace (field 'format' must be {TRACE_FORMAT!r})")
    if trace.get("version") != TRACE_VERSION:
        raise ValueError(f"{path}: trace version {trace.get('version')!r} is not supported (expected {TRACE_VERSION})")
    return trace
