"""Steps 3-4 of a ReST-GRPO iteration: reward-diversity filter and partial-solution states.

In: per problem, the N sampled completions and their rewards (``ProblemSamples``). Out: the
curated prompt set (``CuratedPrompt`` rows: a problem, a state to continue from, and why it was
chosen), which `training.rest_grpo` renders into GRPO prompts.

Rules (RESTRL_SPEC.md section 1):
* filter: population std (ddof = 0) of the N rewards; the problem is dropped if std < sigma_0;
  otherwise its base prompt (root state) is kept.
* partial states: for a kept problem whose best reward >= r_0, split the best completion into lines,
  prefixes p_1..p_L (p_i = the first i lines, each ending in a newline); draw k = ceil(0.5 L) of them
  with weights alpha**(i-1).

Departures from the reference implementation (each a `PartialStateConfig` option, ours by default):
p_L is excluded (the full solution leaves nothing to generate: a zero-variance group); draws are
without replacement; the draw is seeded per (seed, problem id) so it does not depend on the order
or number of other problems; a prompt that is too long loses prefix lines from its end, never
statement text. When fewer than k prefixes are available without replacement, all of them are used.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from training.config import FilterConfig, PartialStateConfig

PromptKind = Literal["base", "partial"]


@dataclass(frozen=True, slots=True)
class ProblemSamples:
    """The N sampled completions of one problem (continuing ``root``) and their rewards."""

    problem_id: str
    root: str
    completions: tuple[str, ...]
    rewards: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.completions) != len(self.rewards):
            raise ValueError(f"{self.problem_id}: {len(self.completions)} completions but {len(self.rewards)} rewards")


@dataclass(frozen=True, slots=True)
class CuratedPrompt:
    """One training prompt: continue ``state`` (root state + a prefix of generated lines)."""

    problem_id: str
    state: str
    kind: PromptKind
    prefix_lines: int = 0  # i of p_i for partial states
    sample_std: float = 0.0  # population std of the problem's N sampled rewards


@dataclass(slots=True)
class CurationStats:
    problems: int = 0
    kept: int = 0
    dropped_low_std: int = 0
    with_partial_states: int = 0
    partial_prompts: int = 0
    truncated_prefixes: int = 0
    skipped_too_long: int = 0
    stds: list[float] = field(default_factory=list)  # naive: every problem's std
    kept_stds: list[float] = field(default_factory=list)  # after filtering


def population_std(values: Sequence[float]) -> float:
    """std with ddof = 0 (the spec's filter statistic)."""
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def keep_problem(rewards: Sequence[float], config: FilterConfig) -> bool:
    return population_std(rewards) >= config.sigma_0


def line_prefixes(completion: str) -> list[str]:
    """p_1..p_L: cumulative line prefixes of the generated code, each ending in a newline. Trailing
    empty lines are not lines (they would add duplicate-looking prefixes)."""
    lines = completion.rstrip("\n").split("\n") if completion.strip() else []
    return ["\n".join(lines[:i]) + "\n" for i in range(1, len(lines) + 1)]


def prefix_weights(count: int, alpha: float) -> list[float]:
    """alpha**(i-1) for i = 1..count (short prefixes favoured)."""
    return [alpha ** (i - 1) for i in range(1, count + 1)]


def problem_rng(seed: int, problem_id: str) -> random.Random:
    """A generator that depends only on (seed, problem id)."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def draw_prefix_indices(lines: int, config: PartialStateConfig, rng: random.Random) -> list[int]:
    """Which prefixes (1-based i) to use for a best completion of ``lines`` lines, sorted."""
    if lines <= 0:
        return []
    k = math.ceil(config.fraction * lines)
    candidates = list(range(1, lines + (0 if config.exclude_full_solution else 1)))
    if not candidates:
        return []
    weights = prefix_weights(len(candidates), config.alpha)
    if config.replacement:
        return sorted(rng.choices(candidates, weights=weights, k=k))
    chosen: list[int] = []
    pool, pool_w = list(candidates), list(weights)
    for _ in range(min(k, len(pool))):  # sequential weighted draws without replacement
        i = rng.choices(range(len(pool)), weights=pool_w, k=1)[0]
        chosen.append(pool.pop(i))
        pool_w.pop(i)
    return sorted(chosen)


def fit_prefix(prefix: str, fits: Callable[[str], bool]) -> str | None:
    """The longest line-prefix of ``prefix`` (dropping lines from its end) whose prompt ``fits``;
    None if not even one line fits."""
    lines = prefix.rstrip("\n").split("\n")
    for n in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:n]) + "\n"
        if fits(candidate):
            return candidate
    return None


def curate(
    samples: Sequence[ProblemSamples],
    *,
    filter_config: FilterConfig | None,
    partial_config: PartialStateConfig | None,
    seed: int,
    fits: Callable[[str, str], bool] | None = None,
) -> tuple[list[CuratedPrompt], CurationStats]:
    """The curated prompt set. ``filter_config=None`` keeps every problem; ``partial_config=None``
    adds no partial states. ``fits(problem_id, state)`` says whether the rendered prompt of a state
    is short enough (default: always)."""
    stats = CurationStats()
    out: list[CuratedPrompt] = []
    for ps in samples:
        stats.problems += 1
        std = population_std(ps.rewards)
        stats.stds.append(std)
        if filter_config is not None and std < filter_config.sigma_0:
            stats.dropped_low_std += 1
            continue
        stats.kept += 1
        stats.kept_stds.append(std)
        out.append(CuratedPrompt(ps.problem_id, ps.root, "base", 0, std))
        if partial_config is None or not ps.rewards:
            continue
        best = max(range(len(ps.rewards)), key=lambda i: (ps.rewards[i], -i))  # first best on ties
        if ps.rewards[best] < partial_config.r_0:
            continue
        prefixes = line_prefixes(ps.completions[best])
        indices = draw_prefix_indices(len(prefixes), partial_config, problem_rng(seed, ps.problem_id))
        added = 0
        for i in indices:
            prefix = prefixes[i - 1]
            if fits is not None and not fits(ps.problem_id, ps.root + prefix):

                def prefix_fits(
                    p: str, pid: str = ps.problem_id, root: str = ps.root, check: Callable[[str, str], bool] = fits
                ) -> bool:
                    return check(pid, root + p)

                shorter = fit_prefix(prefix, prefix_fits)
                if shorter is None:
                    stats.skipped_too_long += 1
                    continue
                stats.truncated_prefixes += 1
                prefix = shorter
                i = len(line_prefixes(prefix))
            out.append(CuratedPrompt(ps.problem_id, ps.root + prefix, "partial", i, std))
            added += 1
        if added:
            stats.with_partial_states += 1
            stats.partial_prompts += added
    return out, stats
