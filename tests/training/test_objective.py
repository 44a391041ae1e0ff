"""Advantage and loss invariants of the GRPO objective (training.objective mirrors TRL 1.16)."""

from __future__ import annotations

import pytest
import torch

from training.objective import clipped_token_loss, group_advantages, token_level_loss, zero_std_fraction


def test_group_advantages_have_zero_mean_per_group() -> None:
    rewards = torch.tensor([0.0, 1.0, 0.5, 0.25, 1.0, 1.0, 0.0, 0.3])
    adv = group_advantages(rewards, 4).view(-1, 4)
    assert torch.allclose(adv.mean(dim=1), torch.zeros(2), atol=1e-6)
    # order inside a group is preserved: better reward, larger advantage
    assert adv[0].argmax() == 1 and adv[0].argmin() == 0


def test_zero_variance_group_has_zero_advantage() -> None:
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    adv = group_advantages(rewards, 4)
    assert torch.equal(adv[:4], torch.zeros(4))
    assert adv[4:].abs().sum() > 0
    assert zero_std_fraction(rewards, 4) == 0.5


def test_advantages_match_trl_normalisation() -> None:
    from trl.trainer.utils import nanstd

    rewards = torch.rand(24, generator=torch.Generator().manual_seed(0))
    grouped = rewards.view(-1, 8)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (nanstd(grouped, dim=1, keepdim=True) + 1e-4)
    assert torch.allclose(group_advantages(rewards, 8), expected.view(-1), atol=1e-6)


def test_group_size_must_divide() -> None:
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)


def test_clip_limits_the_ratio_on_the_advantage_side() -> None:
    old = torch.zeros(2, 1)
    adv = torch.tensor([1.0, -1.0])
    big = torch.full((2, 1), 0.5)  # ratio e^0.5 = 1.65
    loss = clipped_token_loss(big, old, adv, epsilon=0.2)
    assert loss[0, 0].item() == pytest.approx(-1.2)  # positive advantage: ratio clipped at 1 + eps
    assert loss[1, 0].item() == pytest.approx(torch.exp(torch.tensor(0.5)).item())  # negative: unclipped (pessimistic)
    higher = clipped_token_loss(big, old, adv, epsilon=0.2, epsilon_high=0.28)
    assert higher[0, 0].item() == pytest.approx(-1.28)  # clip-higher


def test_kl_term_is_zero_at_the_reference_and_positive_elsewhere() -> None:
    logps = torch.tensor([[-1.0, -2.0]])
    adv = torch.zeros(1)
    same = clipped_token_loss(logps, logps, adv, beta=0.1, ref_logps=logps)
    assert torch.allclose(same, torch.zeros_like(same))
    apart = clipped_token_loss(logps, logps, adv, beta=0.1, ref_logps=logps - 0.5)
    assert (apart > 0).all()


def _tiny_policy_loss(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, total: float) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    logps = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    per_token = clipped_token_loss(logps, logps.detach(), adv, epsilon=0.2, epsilon_high=0.28)
    return token_level_loss(per_token, mask[:, 1:], total_tokens=total)


def test_gradient_accumulation_is_equivalent_to_one_batch() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 11))
    tokens = torch.randint(0, 11, (8, 7))
    mask = torch.ones(8, 7)
    mask[0, 4:] = 0  # unequal completion lengths are what token-level normalisation is about
    mask[5, 2:] = 0
    adv = group_advantages(torch.tensor([0.0, 1.0, 1.0, 0.0, 0.2, 0.9, 0.4, 0.4]), 4)
    total = float(mask[:, 1:].sum())

    model.zero_grad()
    _tiny_policy_loss(model, tokens, mask, adv, total).backward()
    full = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    for part in (slice(0, 3), slice(3, 8)):  # uneven micro-batches, global token count as denominator
        _tiny_policy_loss(model, tokens[part], mask[part], adv[part], total).backward()
    accumulated = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(full, accumulated, strict=True):
        assert torch.allclose(a, b, atol=1e-6)

    model.zero_grad()
    for part in (slice(0, 3), slice(3, 8)):  # per-micro-batch normalisation would NOT be equivalent
        _tiny_policy_loss(model, tokens[part], mask[part], adv[part], float(mask[part, 1:].sum()) * 2).backward()
    local = [p.grad.clone() for p in model.parameters()]
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full, local, strict=True))


def test_zero_advantage_batch_gives_no_policy_gradient() -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 11))
    tokens = torch.randint(0, 11, (4, 6))
    mask = torch.ones(4, 6)
    adv = group_advantages(torch.ones(4), 4)
    _tiny_policy_loss(model, tokens, mask, adv, float(mask[:, 1:].sum())).backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())
