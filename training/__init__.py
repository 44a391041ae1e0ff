"""Offline training jobs: ReST-GRPO policy training and its baselines (vanilla GRPO, DAPO-style, ReST-DPO).

In: training problems (JSONL of `tasks.Problem`, e.g. the gym's train split), the base model
(default: the embedded SmolLM2-135M-Instruct) and optionally a previous iteration's LoRA adapter,
plus a `RestGRPOConfig`. The job samples with the serving engine (`models`, vLLM), rewards programs
in `sandbox`, curates prompts (`training.curation`: reward-std filter, partial-solution states) and
updates the policy with TRL's GRPOTrainer, whose completions come from the same vLLM engine with the
trainer's current LoRA weights each step (`training.rollouts`), or with TRL's DPOTrainer on
preference pairs of the sampled programs (``rest_dpo``, `training.rest_dpo`). Out: a run directory with per-step metrics and a
checkpoint (LoRA adapter + ``restrl.json`` manifest) that `models.load_policy` serves and the next
iteration samples from; `training.report` draws comparison plots. Heavy dependencies (torch, TRL,
vLLM) are imported inside the functions that need them.
"""

from training.config import RestGRPOConfig, load_config
from training.curation import CuratedPrompt, ProblemSamples, curate

__all__ = ["CuratedPrompt", "ProblemSamples", "RestGRPOConfig", "curate", "load_config"]
