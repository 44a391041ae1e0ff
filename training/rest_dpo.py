"""The ReST-DPO baseline: preference pairs from the sampled programs, TRL's DPOTrainer.

In: the same sampling stage as ReST-GRPO (N programs per problem from the serving engine, rewarded
by their tests: `training.curation.ProblemSamples`) and the shared update settings (``grpo``: steps,
learning rate, LoRA, checkpointing) plus ``dpo`` (beta, loss, pairs per problem, batch). Out: the
pairs (``RUN/curated.jsonl``: prompt, chosen, rejected and their rewards) and a DPO-trained
checkpoint written like every other algorithm's (``RUN/final``).

Pairs: per problem, programs sorted by reward (ties by sample order); the best is paired with the
worst, the second best with the second worst, ... up to ``dpo.pairs_per_problem`` pairs whose
rewards differ (a passing program beats a failing one; where none passes, the higher pass fraction
wins). Problems whose N rewards are all equal give no pair (they carry no preference), which is
the DPO counterpart of ReST-GRPO's reward-std filter.

Departures: completions are the engine's text up to the closing fence, which the pair texts put
back (then DPOTrainer appends EOS), so chosen and rejected end the way generation ends; a sample
that rewrote the prompt's last line (no clean continuation) is never paired. The reference model is
the base with the adapter disabled (PEFT), as in the GRPO jobs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.loading import ResolvedWeights
from models.prompting import FENCE_CLOSE, PromptMode, render_prompt
from tasks import Problem
from training.config import RestGRPOConfig
from training.curation import ProblemSamples

logger = logging.getLogger(__name__)


def raw_completion(root: str, continuation: str) -> str:
    """The engine's text after the rendered prompt for a stored completion (stored relative to the
    root: the prompt holds back the root's final newline, `models.prompting.prompt_code`)."""
    return "\n" + continuation if root.endswith("\n") else continuation


def preference_pairs(samples: ProblemSamples, *, pairs: int) -> list[tuple[int, int]]:
    """(chosen, rejected) sample indices of one problem: best with worst, 2nd best with 2nd worst,
    ..., at most ``pairs``, each with a strictly higher chosen reward; unusable samples (an empty
    continuation) and duplicate texts are skipped."""
    seen: set[str] = set()
    usable = []
    for i, text in enumerate(samples.completions):
        if text and text not in seen:
            seen.add(text)
            usable.append(i)
    order = sorted(usable, key=lambda i: (-samples.rewards[i], i))
    out = []
    for k in range(min(pairs, len(order) // 2)):
        best, worst = order[k], order[len(order) - 1 - k]
        if samples.rewards[best] <= samples.rewards[worst]:
            break
        out.append((best, worst))
    return out


def pair_rows(
    samples: Sequence[ProblemSamples], problems: dict[str, Problem], tokenizer: Any, mode: PromptMode, *, pairs: int
) -> list[dict[str, Any]]:
    """DPOTrainer rows (prompt, chosen, rejected) plus the columns the reports read."""
    rows = []
    for s in samples:
        prompt = render_prompt(tokenizer, problems[s.problem_id], s.root, mode)
        for chosen, rejected in preference_pairs(s, pairs=pairs):
            rows.append({
                "prompt": prompt,
                "chosen": raw_completion(s.root, s.completions[chosen]) + FENCE_CLOSE,
                "rejected": raw_completion(s.root, s.completions[rejected]) + FENCE_CLOSE,
                "problem_id": s.problem_id,
                "kind": "pair",
                "chosen_reward": s.rewards[chosen],
                "rejected_reward": s.rewards[rejected],
            })
    return rows


def build_dpo_trainer(
    config: RestGRPOConfig, *, weights: ResolvedWeights, rows: list[dict[str, Any]], trainer_dir: Path, tokenizer: Any,
    callbacks: Sequence[Any],
) -> Any:
    """TRL's DPOTrainer on the pairs with the shared update settings (LoRA on the policy's base, or
    continuing ``policy.adapter``)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from training.rest_grpo import load_trainable

    g, d = config.grpo, config.dpo
    model, peft_config, shared = load_trainable(config, weights)
    args = DPOConfig(
        output_dir=str(trainer_dir),
        per_device_train_batch_size=d.per_device_batch_size,
        gradient_accumulation_steps=d.gradient_accumulation_steps,
        max_steps=g.max_steps,
        learning_rate=g.learning_rate,
        beta=d.beta,
        loss_type=[d.loss_type],
        max_length=d.max_length,
        **shared,
    )
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    columns = ("prompt", "chosen", "rejected")
    return DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{k: r[k] for k in columns} for r in rows]),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
