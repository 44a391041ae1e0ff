"""Value training's pieces as invariants: problem-grouped batches and the within-problem ranking term."""

from __future__ import annotations

import pytest

from training.value_train import ProblemBatchSampler, problem_batches, ranking_loss


def _rows(counts: dict[str, int]) -> list[dict]:
    return [{"problem_id": p, "state": f"{p}{i}", "target": i % 2} for p, n in counts.items() for i in range(n)]


def test_problem_batches_use_every_row_once_with_few_problems_per_batch() -> None:
    rows = _rows({"a": 7, "b": 3, "c": 5, "d": 1})
    batches = problem_batches(rows, batch_size=4, problems_per_batch=2, seed=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(rows)))  # every row, once
    for b in batches:
        assert len({rows[i]["problem_id"] for i in b}) <= 2 and len(b) <= 4
    assert batches == problem_batches(rows, batch_size=4, problems_per_batch=2, seed=0)  # seeded
    sampler = ProblemBatchSampler(rows, batch_size=4, problems_per_batch=2, seed=0)
    first, second = list(sampler), list(sampler)
    assert first == batches and sorted(i for b in second for i in b) == list(range(len(rows))) and first != second


def test_ranking_loss_counts_only_same_problem_pairs_in_target_order() -> None:
    torch = pytest.importorskip("torch")
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1])
    right = torch.tensor([0.9, 0.1, 0.8, 0.2])
    wrong = torch.tensor([0.1, 0.9, 0.2, 0.8])
    assert ranking_loss(right, targets, groups, temperature=0.1) < 0.02
    assert ranking_loss(wrong, targets, groups, temperature=0.1) > 7.0
    # across problems nothing is compared: problem 0's rows above problem 1's change nothing
    shifted = torch.tensor([10.9, 10.1, 0.8, 0.2])
    assert ranking_loss(shifted, targets, groups, temperature=0.1) == pytest.approx(ranking_loss(right, targets, groups, temperature=0.1).item())
    assert ranking_loss(right, torch.ones(4), groups, temperature=0.1).item() == 0.0  # no pair with different targets
    scores = torch.tensor([0.3, 0.5], requires_grad=True)
    ranking_loss(scores, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), temperature=0.1).backward()
    assert scores.grad[0] < 0 < scores.grad[1]  # pushes the passing one up, the failing one down
