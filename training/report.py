"""Comparison plots of policy-training runs (`restrl report training RUN_DIR...`).

In: run directories written by `training.rest_grpo.run_iteration` (``metrics.jsonl``,
``groups.jsonl``, ``samples.jsonl``, ``curated.jsonl``). Out: PNG files (matplotlib, Agg backend):

* ``training_reward.png`` - reward mean and reward std per step, one line per run;
* ``training_reward_std_hist.png`` - the paper's reward-variance figure: the distribution of
  per-prompt reward std (population std over a prompt's samples) of the naive prompt set (every
  problem's N samples) vs the set after the sigma_0 filter, and of the groups each run actually
  trained on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.curation import population_std

logger = logging.getLogger(__name__)


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def step_series(run_dir: Path, key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in _rows(run_dir / "metrics.jsonl") if key in r]
    return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]


def group_stds(run_dir: Path) -> list[float]:
    """Population std of every training group's rewards."""
    return [population_std(r["rewards"]) for r in _rows(run_dir / "groups.jsonl")]


def sample_stds(run_dir: Path) -> tuple[list[float], list[float]]:
    """(naive: every problem's std over its N samples, kept: the problems that passed the filter)."""
    samples = _rows(run_dir / "samples.jsonl")
    naive = [population_std(r["rewards"]) for r in samples]
    kept_ids = {r["problem_id"] for r in _rows(run_dir / "curated.jsonl") if r.get("kind") == "base"}
    kept = [population_std(r["rewards"]) for r in samples if r["problem_id"] in kept_ids]
    return naive, kept


def report_training(run_dirs: Sequence[str | Path], *, out_dir: str | Path, labels: Sequence[str] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [Path(d) for d in run_dirs]
    for run in runs:
        if not run.is_dir():
            raise FileNotFoundError(f"{run}: not a run directory")
    names = list(labels) if labels else [r.name for r in runs]
    if len(names) != len(runs):
        raise ValueError(f"{len(names)} labels for {len(runs)} runs: give one --label per run or none")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run, name in zip(runs, names, strict=True):
        for ax, key in zip(axes, ("reward", "reward_std", "frac_reward_zero_std"), strict=True):
            steps, values = step_series(run, key)
            if steps:
                ax.plot(steps, values, marker="o", markersize=3, label=name)
    for ax, title in zip(axes, ("reward mean per step", "reward std per step", "fraction of zero-std groups"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "training_reward.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = [i / 20 for i in range(0, 12)]  # rewards are in [0, 1]: std <= 0.5
    series: list[tuple[str, list[float]]] = []
    for run, name in zip(runs, names, strict=True):
        naive, kept = sample_stds(run)
        if naive:
            series.append((f"{name}: sampled prompts, naive (n={len(naive)})", naive))
            series.append((f"{name}: after sigma_0 filter (n={len(kept)})", kept))
        trained = group_stds(run)
        if trained:
            series.append((f"{name}: training groups (n={len(trained)})", trained))
    for label, values in series:
        weights = [1.0 / len(values)] * len(values)
        ax.hist(values, bins=bins, weights=weights, histtype="step", linewidth=1.8, label=label)
    ax.set_xlabel("per-prompt reward std (population)")
    ax.set_ylabel("fraction of prompts")
    ax.set_title("reward variance of training prompts")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "training_reward_std_hist.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    logger.info("wrote %s", ", ".join(str(p) for p in written))
    return written
