"""The GRPO objective as explicit tensors: group-relative advantages and the clipped token loss.

The training job does not call these: TRL's `GRPOTrainer` computes the same quantities inside its
step. They exist so the maths the job relies on is stated in one readable place and tested as
invariants (zero-mean groups, zero advantage for a zero-variance group, gradient-accumulation
equivalence of the token-level loss), and they mirror TRL 1.16 exactly where TRL is specific:

* advantages: A_i = (r_i - mean_g) / (std_g + 1e-4) with TRL's *sample* std (Bessel-corrected),
  whereas the ReST filter statistic is the population std (`training.curation.population_std`);
* ``loss_type="dapo"`` (the spec's token-level normalisation): sum of masked per-token losses
  divided by the number of completion tokens in the whole accumulated batch, so splitting a batch
  into micro-batches changes nothing;
* clip: ratio clamped to [1 - epsilon, 1 + epsilon_high] (clip-higher when epsilon_high > epsilon);
* KL: the k3 estimator exp(ref - logp) - (ref - logp) - 1, weighted by beta.
"""

from __future__ import annotations

import torch

ADVANTAGE_EPS = 1e-4  # TRL's constant


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: bool = True) -> torch.Tensor:
    """Group-relative advantages of a flat reward vector laid out group after group."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    adv = grouped - mean
    if scale:
        std = grouped.std(dim=1, keepdim=True, unbiased=True) if group_size > 1 else torch.zeros_like(mean)
        adv = adv / (std + ADVANTAGE_EPS)
    return adv.reshape(-1)


def zero_std_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal (they carry no policy gradient)."""
    grouped = rewards.view(-1, group_size)
    return float((grouped.max(dim=1).values == grouped.min(dim=1).values).float().mean())


def clipped_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token loss (B, T): -min(ratio * A, clip(ratio) * A) + beta * KL_k3."""
    ratio = torch.exp(logps - old_logps)
    high = epsilon if epsilon_high is None else epsilon_high
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + high)
    adv = advantages.unsqueeze(-1)
    loss = -torch.min(ratio * adv, clipped * adv)
    if beta:
        if ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps")
        delta = ref_logps - logps
        loss = loss + beta * (torch.exp(delta) - delta - 1)
    return loss


def token_level_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, *, total_tokens: float | None = None) -> torch.Tensor:
    """TRL's ``dapo`` aggregation: masked sum / completion tokens of the whole accumulated batch
    (``total_tokens``; default: this batch's)."""
    denom = mask.sum() if total_tokens is None else torch.as_tensor(total_tokens, dtype=per_token_loss.dtype)
    return (per_token_loss * mask).sum() / denom.clamp(min=1.0)
