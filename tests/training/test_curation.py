"""Filter and partial-state rules on hand-made rewards (RESTRL_SPEC.md section 1, steps 3-4)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from training.config import FilterConfig, PartialStateConfig
from training.curation import (
    ProblemSamples,
    curate,
    draw_prefix_indices,
    line_prefixes,
    population_std,
    prefix_weights,
    problem_rng,
)

BEST = "def f(x):\n    y = x + 1\n    z = y * 2\n    w = z - 3\n    return w\n"  # 5 lines


def ps(pid: str, rewards: list[float], best: str = BEST) -> ProblemSamples:
    completions = ["pass\n"] * len(rewards)
    completions[max(range(len(rewards)), key=lambda i: rewards[i])] = best
    return ProblemSamples(pid, "", tuple(completions), tuple(rewards))


def test_population_std_is_ddof0() -> None:
    assert population_std([0, 1]) == pytest.approx(0.5)  # ddof=1 would give 0.707
    assert population_std([1, 1, 1, 1, 1]) == 0.0


def test_filter_drops_low_std_and_keeps_base_prompt() -> None:
    samples = [ps("same", [1, 1, 1, 1, 1]), ps("tiny", [0.5, 0.5, 0.5, 0.5, 0.55]), ps("diverse", [0, 0, 1, 0, 0.5])]
    out, stats = curate(samples, filter_config=FilterConfig(sigma_0=0.05), partial_config=None, seed=0)
    assert [c.problem_id for c in out] == ["diverse"]
    assert out[0].kind == "base" and out[0].state == ""
    assert stats.dropped_low_std == 2 and stats.kept == 1
    assert len(stats.stds) == 3 and len(stats.kept_stds) == 1


def test_no_filter_keeps_everything() -> None:
    samples = [ps("a", [0, 0, 0]), ps("b", [1, 1, 1])]
    out, _ = curate(samples, filter_config=None, partial_config=None, seed=0)
    assert [c.problem_id for c in out] == ["a", "b"]


def test_line_prefixes_are_cumulative_and_end_in_newline() -> None:
    prefixes = line_prefixes(BEST)
    assert len(prefixes) == 5
    assert prefixes[0] == "def f(x):\n" and prefixes[-1] == BEST
    assert all(b.startswith(a) for a, b in zip(prefixes, prefixes[1:], strict=False))
    assert line_prefixes("x = 1\n\n\n") == ["x = 1\n"]
    assert line_prefixes("   \n") == []


def test_partial_states_need_best_reward_at_least_r0() -> None:
    cfg = PartialStateConfig(r_0=0.9)
    out, _ = curate([ps("p", [0, 0.8, 0.2])], filter_config=None, partial_config=cfg, seed=0)
    assert [c.kind for c in out] == ["base"]
    out, stats = curate([ps("p", [0, 0.9, 0.2])], filter_config=None, partial_config=cfg, seed=0)
    assert [c.kind for c in out].count("partial") == math.ceil(0.5 * 5)
    assert stats.with_partial_states == 1


def test_ours_excludes_full_solution_and_draws_without_replacement() -> None:
    cfg = PartialStateConfig()  # ours: exclude p_L, no replacement
    for seed in range(200):
        idx = draw_prefix_indices(5, cfg, problem_rng(seed, "p"))
        assert len(idx) == 3 and len(set(idx)) == 3
        assert 5 not in idx and all(1 <= i <= 4 for i in idx)


def test_reference_options_allow_full_solution_and_repeats() -> None:
    cfg = PartialStateConfig(exclude_full_solution=False, replacement=True)
    seen: Counter[int] = Counter()
    repeats = 0
    for seed in range(400):
        idx = draw_prefix_indices(5, cfg, problem_rng(seed, "p"))
        assert len(idx) == 3
        repeats += len(set(idx)) < len(idx)
        seen.update(idx)
    assert seen[5] > 0 and repeats > 0


def test_fewer_candidates_than_k_uses_all() -> None:
    cfg = PartialStateConfig()
    assert draw_prefix_indices(2, cfg, problem_rng(0, "p")) == [1]  # k=1, candidates {1}
    assert draw_prefix_indices(1, cfg, problem_rng(0, "p")) == []  # only p_L exists, excluded
    assert draw_prefix_indices(0, cfg, problem_rng(0, "p")) == []


def test_weights_favour_short_prefixes() -> None:
    assert prefix_weights(3, 0.5) == [1.0, 0.5, 0.25]
    cfg = PartialStateConfig(alpha=0.5, fraction=0.1, exclude_full_solution=False)  # k = 1 of 10
    counts = Counter(draw_prefix_indices(10, cfg, problem_rng(s, "p"))[0] for s in range(3000))
    # P(i) proportional to 0.5**(i-1): p_1 about twice p_2, p_2 about twice p_3
    assert counts[1] > 1.6 * counts[2] > 1.6 * 1.6 * counts[3] > 0


def test_draws_are_seeded_per_problem_and_order_independent() -> None:
    a = [ps("a", [0, 1, 0]), ps("b", [1, 0, 0])]
    cfg = PartialStateConfig()
    out1, _ = curate(a, filter_config=None, partial_config=cfg, seed=7)
    out2, _ = curate(list(reversed(a)), filter_config=None, partial_config=cfg, seed=7)
    key = lambda rows: sorted((c.problem_id, c.state) for c in rows)  # noqa: E731
    assert key(out1) == key(out2)
    states = {seed: key(curate(a, filter_config=None, partial_config=cfg, seed=seed)[0]) for seed in range(10)}
    assert len(set(map(tuple, states.values()))) > 1  # the seed matters


def test_partial_state_is_root_plus_prefix_of_best() -> None:
    sample = ProblemSamples("p", "def f(x):\n", ("    return 0\n", "    y = 1\n    z = 2\n    return y + z\n"), (0.0, 1.0))
    out, _ = curate([sample], filter_config=None, partial_config=PartialStateConfig(), seed=0)
    partial = [c for c in out if c.kind == "partial"]
    assert len(partial) == 2  # L = 3, k = 2, candidates p_1, p_2
    assert {c.state for c in partial} == {"def f(x):\n    y = 1\n", "def f(x):\n    y = 1\n    z = 2\n"}
    assert {c.prefix_lines for c in partial} == {1, 2}


def test_too_long_prompt_loses_prefix_lines_not_statement() -> None:
    sample = ProblemSamples("p", "", ("a\nb\nc\nd\ne\nf\ng\nh\n", "x\n"), (1.0, 0.0))
    cfg = PartialStateConfig(fraction=1.0)  # k = 8, candidates p_1..p_7
    out, stats = curate([sample], filter_config=None, partial_config=cfg, seed=0, fits=lambda pid, st: st.count("\n") <= 3)
    partial = [c for c in out if c.kind == "partial"]
    assert all(c.state.count("\n") <= 3 for c in partial)
    assert stats.truncated_prefixes == 4 and stats.skipped_too_long == 0
    assert all(c.state == "a\nb\nc\n"[: len(c.state)] for c in partial)
    _, stats = curate([sample], filter_config=None, partial_config=cfg, seed=0, fits=lambda pid, st: False)
    assert stats.skipped_too_long == 7 and stats.partial_prompts == 0


def test_algorithms_share_one_curation_path() -> None:
    from training.config import RestGRPOConfig
    from training.rest_grpo import ALGORITHMS, curate_for

    samples = [ps("flat0", [0, 0, 0, 0]), ps("flat1", [1, 1, 1, 1]), ps("tiny", [0.5, 0.5, 0.5, 0.52]), ps("div", [0, 1, 1, 0])]
    cfg = RestGRPOConfig.model_validate({"output_dir": "r", "data": {"train_file": "t.jsonl"}})
    ok = lambda pid, st: True  # noqa: E731
    rest, _ = curate_for(ALGORITHMS["rest_grpo"], samples, cfg, ok)
    assert {c.problem_id for c in rest} == {"div"} and any(c.kind == "partial" for c in rest)
    dapo, _ = curate_for(ALGORITHMS["dapo"], samples, cfg, ok)
    # dynamic sampling drops exactly the zero-variance groups (a small but non-zero std survives) and adds no partial states
    assert [c.problem_id for c in dapo] == ["tiny", "div"] and all(c.kind == "base" for c in dapo)
    assert not ALGORITHMS["grpo"].sample and not ALGORITHMS["grpo"].filter and not ALGORITHMS["grpo"].partial_states
