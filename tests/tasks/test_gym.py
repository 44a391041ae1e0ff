"""The training gym: determinism, splits that hold out whole compositions, well-formed statements
and signatures, non-degenerate tests, and reference solutions that pass their own hidden tests
when run in the sandbox (the generator's expected values come from its trusted callables)."""

from __future__ import annotations

import ast
import builtins
from collections import Counter

import pytest
from pydantic import ValidationError

from tasks import load_jsonl
from tasks.gym import FAMILIES, OPS, OPS_BY_NAME, GymConfig, compositions, make_gym


@pytest.fixture(scope="module")
def gym():
    return make_gym(11, 45)


def test_same_seed_same_gym_and_growth_only_appends(gym):
    again = make_gym(11, 45)
    assert again.all() == gym.all()
    other = make_gym(12, 45)
    assert [p.prompt for p in other.all()] != [p.prompt for p in gym.all()]
    bigger = {p.id: p for p in make_gym(11, 90).all()}
    assert all(bigger[p.id] == p for p in gym.all())


def test_splits_hold_out_whole_compositions(gym):
    sigs = {name: {tuple(p.metadata["composition"]) for p in gym.split(name)} for name in ("train", "validation", "test")}
    assert sigs["train"] and sigs["validation"] and sigs["test"]
    assert not sigs["train"] & sigs["test"]
    assert not sigs["train"] & sigs["validation"]
    assert not sigs["validation"] & sigs["test"]
    for name in ("train", "validation", "test"):
        assert {p.metadata["split"] for p in gym.split(name)} == {name}
    ids = [p.id for p in gym.all()]
    assert len(ids) == len(set(ids))
    # no two problems share a statement (same composition and constants)
    assert len({p.prompt for p in gym.all()}) == len(ids)


def test_tiers_families_and_metadata(gym):
    tiers = Counter(p.metadata["tier"] for p in gym.all())
    assert set(tiers) == {1, 2, 3}
    assert set(p.metadata["family"] for p in gym.all()) == set(FAMILIES)
    for p in gym.all():
        chain = p.metadata["composition"]
        assert len(chain) == p.metadata["tier"] == len(p.metadata["constants"])
        assert p.metadata["family"] == OPS_BY_NAME[chain[0]].family
        for a, b in zip(chain, chain[1:], strict=False):
            assert OPS_BY_NAME[a].gives == OPS_BY_NAME[b].takes
    assert len(compositions(1)) == len(OPS)
    assert all(len(c) == 2 for c in compositions(2))


def test_statement_and_signature_are_well_formed(gym):
    for p in gym.all():
        tree = ast.parse(p.starter_code)
        (fn,) = tree.body
        assert isinstance(fn, ast.FunctionDef) and fn.name == p.entry_point
        assert len(fn.args.args) == 1 and fn.args.args[0].annotation is not None and fn.returns is not None
        doc = ast.get_docstring(fn)
        example = p.public_tests[0]
        assert doc and f">>> {p.entry_point}({example.args[0]!r})" in doc and repr(example.expected) in doc
        assert example == p.tests[0]
        assert f"`{p.entry_point}({fn.args.args[0].arg})`" in p.prompt
        assert "{k}" not in p.prompt and "{k}" not in p.starter_code
        ref = ast.parse(p.metadata["reference_solution"])
        defined = {node.name for node in ref.body if isinstance(node, ast.FunctionDef)}
        assert p.entry_point in defined
        called = {n.func.id for n in ast.walk(ref) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert called <= defined | set(dir(builtins)), (p.id, called - defined)


def test_tests_are_call_tests_with_varied_outputs(gym, tmp_path):
    for p in gym.all():
        assert len(p.tests) == 8
        assert all(t.kind == "call" and t.fn_name == p.entry_point and len(t.args) == 1 for t in p.tests)
        outputs = [repr(t.expected) for t in p.tests]
        assert len(set(outputs)) >= 2, p.id
        assert len({repr(t.args) for t in p.tests}) == len(p.tests)
    paths = gym.write(tmp_path)
    assert load_jsonl(paths["test"]) == gym.test
    assert load_jsonl(paths["train"]) == gym.train


def test_config_is_validated():
    with pytest.raises(ValidationError, match="sum"):
        GymConfig(fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValidationError, match="tiers"):
        GymConfig(tiers=(0, 1))
    only_strings = make_gym(1, 12, families=("strings",), tiers=(1, 2))
    assert {p.metadata["family"] for p in only_strings.all()} == {"strings"}


@pytest.fixture(scope="module")
def sandbox():
    try:
        from sandbox import Sandbox
    except ImportError:
        pytest.skip("sandbox.Sandbox not available yet")
    with Sandbox(workers=2) as box:
        yield box


def _covering(problems):
    """A few problems that between them use every operation the gym has."""
    chosen, seen = [], set()
    while True:  # greedy set cover
        best = max(problems, key=lambda p: len(set(p.metadata["composition"]) - seen))
        if not set(best.metadata["composition"]) - seen:
            return chosen, seen
        chosen.append(best)
        seen |= set(best.metadata["composition"])


async def _check_references(problems, sandbox):
    jobs = [(p.metadata["reference_solution"], p.tests, p.entry_point) for p in problems]
    verdicts = await sandbox.run_many(jobs)
    failed = [(p.id, v.status, v.detail, [t.message for t in v.tests if not t.passed][:1]) for p, v in zip(problems, verdicts, strict=True) if not v.passed]
    assert not failed


async def test_references_pass_their_own_tests_in_the_sandbox(sandbox):
    problems, used = _covering(make_gym(3, 150).all())
    assert used == set(OPS_BY_NAME)  # every operation's source text is checked against its callable
    await _check_references(problems, sandbox)
    # the tests discriminate: a problem's reference fails another composition's tests
    wrong = []
    for p, q in zip(problems, problems[1:], strict=False):
        same_input = OPS_BY_NAME[p.metadata["composition"][0]].takes == OPS_BY_NAME[q.metadata["composition"][0]].takes
        if same_input and p.metadata["composition"] != q.metadata["composition"]:
            program = q.metadata["reference_solution"].replace(f"def {q.entry_point}(", f"def {p.entry_point}(", 1)
            wrong.append((program, p.tests, p.entry_point))
    assert wrong
    wrong_verdicts = await sandbox.run_many(wrong[:8])
    assert all(not v.passed for v in wrong_verdicts)


@pytest.mark.slow
async def test_every_reference_of_a_full_gym_passes_in_the_sandbox(sandbox):
    await _check_references(make_gym(0, 100).all(), sandbox)
