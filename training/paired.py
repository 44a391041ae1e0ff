"""Paired comparison of two strategies on the same problems: what `restrl eval` reports for every
pair of arms at an equal budget.

In: per problem, whether each arm's returned program passed (booleans in the same problem order).
Out: wins, losses, the pass@1 difference with a paired bootstrap 95% interval (problems resampled
with replacement, the same resample for both arms), the exact two-sided McNemar p-value (a binomial
test on the discordant problems), and the set's resolution: the smallest difference that would be
significant at 5 % given the observed discordance (``detectable_95``) and the difference it would
detect with 80 % power (``mde_80``), both from the normal approximation of the paired difference's
standard error sqrt(discordant share / n).

`Bootstrap` draws the resamples once per problem set so that every arm and pair of that set uses
the same draws (intervals of different pairs are then comparable, and the cost is one gather per
arm instead of one per pair).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Z_95 = 1.959963984540054
Z_80 = 0.8416212335729143


def mcnemar_exact(won: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: P(|X - m/2| >= |won - m/2|) for X ~ Binomial(m, 1/2)."""
    m = won + lost
    if m == 0:
        return 1.0
    k = min(won, lost)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m
    return min(1.0, 2 * tail)


class Bootstrap:
    """Resamples of ``n`` problems (``reps`` x ``n`` indices, seeded)."""

    def __init__(self, n: int, *, reps: int = 10_000, seed: int = 0) -> None:
        self.n = n
        self.reps = reps
        self.index = np.random.default_rng(seed).integers(0, n, size=(reps, n)) if n else np.zeros((reps, 0), dtype=int)
        self._cache: dict[int, np.ndarray] = {}

    def means(self, passed: Sequence[bool]) -> np.ndarray:
        """pass@1 of each resample."""
        arr = np.asarray(passed, dtype=np.float64)
        key = hash(arr.tobytes())
        if key not in self._cache:
            self._cache[key] = arr[self.index].mean(axis=1) if self.n else np.zeros(self.reps)
        return self._cache[key]

    def interval(self, passed: Sequence[bool]) -> list[float]:
        """95 % percentile interval of pass@1."""
        m = self.means(passed)
        return [float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))]

    def compare(self, a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
        """Arm a vs arm b on the same problems (see the module doc)."""
        n = len(a)
        if n != len(b) or n != self.n:
            raise ValueError(f"paired arms need {self.n} problems each, got {len(a)} and {len(b)}")
        won = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
        lost = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
        diff = self.means(a) - self.means(b)
        se = math.sqrt((won + lost) / n) / math.sqrt(n) if n else float("nan")
        return {
            "problems": n,
            "a_passed": int(sum(a)),
            "b_passed": int(sum(b)),
            "won": won,
            "lost": lost,
            "difference": (sum(a) - sum(b)) / n if n else 0.0,
            "ci95": [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))],
            "mcnemar_p": mcnemar_exact(won, lost),
            "detectable_95": Z_95 * se,
            "mde_80": (Z_95 + Z_80) * se,
        }
