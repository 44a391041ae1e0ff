"""One iteration of ReST-GRPO, and the vanilla-GRPO, DAPO-style and ReST-DPO baselines on the same code path.

In: a `RestGRPOConfig` (training problems as JSONL, the base model and optionally the previous
iteration's LoRA adapter). Out: a run directory::

    RUN/config.json       the resolved configuration
    RUN/samples.jsonl     step 1-2: N sampled completions per problem and their test rewards
    RUN/curated.jsonl     step 3-4: the curated prompt set (base + partial-state prompts; rest_dpo: the pairs)
    RUN/trainer/          TRL checkpoints (resumable state; `--resume` continues from the last one)
    RUN/metrics.jsonl     one row per logged step (reward mean/std, frac zero-std groups, KL, loss, lengths,
                          and the step's wall time split: time/{step,generation,rewards,weight_sync,forward_backward}_s)
    RUN/groups.jsonl      every training group's rewards (per-prompt reward std figure)
    RUN/summary.json      stage wall times, curation statistics, final metrics
    RUN/final/            the LoRA adapter (or full model) + restrl.json: loadable with
                          ``models.load_policy(EngineConfig(adapter=RUN/final))`` and chainable as
                          the next iteration's ``policy.adapter``

Algorithms (registry `ALGORITHMS`): ``rest_grpo`` samples with the serving engine (vLLM, every
problem's request in flight at once), rewards in the sandbox, filters by reward std and adds
partial-state prompts; ``grpo`` trains on every problem's base prompt; ``dapo`` screens the pool
with G engine samples per problem, drops zero-std groups (dynamic sampling; the pool refills the
dataset by cycling) and uses clip-higher. All three then run the same TRL `GRPOTrainer` update
with the same number of optimizer steps, group size and batch. ``rest_dpo`` samples like
``rest_grpo`` and trains TRL's `DPOTrainer` on preference pairs of those programs
(`training.rest_dpo`) with the same steps, learning rate and LoRA.

Rollouts (``grpo.rollouts``): the G completions of every GRPO step come from the policy's vLLM
engine with the trainer's current LoRA weights, handed over as a new adapter version each step
(`training.rollouts`), or, for full fine-tuning or without vLLM, from TRL's transformers generation.

Departures from the paper / reference implementation, stated here as the style guide asks:
* the update is TRL's GRPOTrainer (as in the reference) with LoRA by default on CPU; the GRPO
  completions stop at the closing code fence by treating the fence tokens as end-of-sequence (so no
  format-shaping reward exists to be amplified), in the engine's rollouts and in TRL's generation alike;
  engine rollouts carry no importance-sampling correction (`training.rollouts`);
* KL is measured against the base model with the adapter disabled (PEFT), also when an iteration
  starts from a previous adapter;
* DAPO's dynamic sampling is done before training by screening with the serving engine rather
  than by re-generating inside the trainer's step (TRL 1.16 has no refill hook); clip-higher and
  token-level normalisation are TRL's own;
* partial-state rules: see `training.curation` (ours by default, reference behaviour as options).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

from tqdm.auto import tqdm

from models.checkpoints import write_manifest
from models.config import use_bf16
from models.loading import ResolvedWeights, resolve_weights
from models.prompting import STOP, PromptMode, continuation, join_code, render_prompt, root_state
from search.stack import open_sandbox, open_stack
from tasks import Problem
from tasks.humaneval import is_eval_only
from tasks.jsonl import load_jsonl
from training.config import FilterConfig, RestGRPOConfig, split_packed_groups
from training.curation import CuratedPrompt, CurationStats, ProblemSamples, curate
from training.rewards import SandboxReward, TestRewarder
from training.rollouts import EngineRollouts, StepTimer, step_timer_callback

logger = logging.getLogger(__name__)

JOB_NAME = "restrl.training.rest_grpo"


@dataclass(frozen=True)
class AlgorithmSpec:
    """Which curation stages an algorithm runs before the shared GRPO update."""

    sample: bool  # sample N per problem with the engine and score them
    filter: bool  # reward-std filter (sigma_0)
    partial_states: bool
    screen_zero_std: bool  # DAPO dynamic sampling: keep only prompts whose G samples differ
    update: str = "grpo"  # key of `_Iteration.UPDATES`: grpo (GRPOTrainer on prompts) | dpo (DPOTrainer on pairs)


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "rest_grpo": AlgorithmSpec(sample=True, filter=True, partial_states=True, screen_zero_std=False),
    "grpo": AlgorithmSpec(sample=False, filter=False, partial_states=False, screen_zero_std=False),
    "dapo": AlgorithmSpec(sample=True, filter=False, partial_states=False, screen_zero_std=True),
    "rest_dpo": AlgorithmSpec(sample=True, filter=False, partial_states=False, screen_zero_std=False, update="dpo"),
}


class TrainingDataError(ValueError):
    """The training data is unusable (the message names the file and what to do)."""


# ---------------------------------------------------------------------------------------------- data


def load_training_problems(config: RestGRPOConfig) -> list[Problem]:
    """Read, check, shuffle and cut the training problems. Raises before any compute starts."""
    path = config.data.train_file
    problems = load_jsonl(path)  # DatasetError names file:line:field
    if not problems:
        raise TrainingDataError(f"{path}: no problems (the file is empty)")
    for p in problems:
        if not p.tests:
            raise TrainingDataError(f"{path}: problem '{p.id}' has no tests, so no reward can be computed; remove it")
        if is_eval_only(p):
            raise TrainingDataError(f"{path}: problem '{p.id}' is from an evaluation set (HumanEval); never train on it")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise TrainingDataError(f"{path}: problem id '{dup}' appears more than once; ids must be unique")
    if config.data.shuffle_seed is not None:
        random.Random(config.data.shuffle_seed).shuffle(problems)
    if config.data.limit is not None:
        problems = problems[: config.data.limit]
    return problems


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_jsonl_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    @property
    def curated(self) -> Path:
        return self.root / "curated.jsonl"

    @property
    def trainer(self) -> Path:
        return self.root / "trainer"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def groups(self) -> Path:
        return self.root / "groups.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def final(self) -> Path:
        return self.root / "final"


# ------------------------------------------------------------------------------------------ models


def resolve_policy(config: RestGRPOConfig) -> ResolvedWeights:
    """The policy's base folder (a folder, a hub id or the embedded default, verified), its adapter
    and its prompt mode (``policy.prompt_mode``, else the measured default)."""
    return resolve_weights(config.policy)


def stop_token_ids(tokenizer: Any, stops: Sequence[str] = STOP) -> list[int]:
    """Every vocabulary token whose text contains a stop string: treated as end-of-sequence by the
    trainer's generation so completions end at the closing fence like the engine's."""
    ids = []
    for token, idx in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if any(s in text for s in stops):
            ids.append(idx)
    return sorted(ids)


async def _sample_all(prompts: Sequence[str], *, n: int, config: RestGRPOConfig) -> list[list[str]]:
    """N completions of every prompt, all in flight at once on the stack's engine."""
    s = config.sampling
    async with open_stack(config.policy) as stack:
        bar = tqdm(total=len(prompts), desc=f"sampling n={n}", unit="problem")

        async def one(prompt: str) -> list[str]:
            samples = await stack.policy.sample(prompt, n=n, max_tokens=s.max_new_tokens, stop=STOP, temperature=s.temperature,
                                                top_p=s.top_p)
            bar.update(1)
            return [x.text for x in samples]

        try:
            return list(await asyncio.gather(*(one(p) for p in prompts)))
        finally:
            bar.close()


def sample_and_score(
    problems: Sequence[Problem],
    *,
    n: int,
    config: RestGRPOConfig,
    mode: PromptMode,
    tokenizer: Any,
    rewarder: TestRewarder,
) -> list[ProblemSamples]:
    """Steps 1-2: N completions per problem from the engine, scored in the sandbox."""
    roots = [root_state(p, mode) for p in problems]
    prompts = [render_prompt(tokenizer, p, r, mode) for p, r in zip(problems, roots, strict=True)]
    completions = asyncio.run(_sample_all(prompts, n=n, config=config))
    items = [(p, join_code(r, c)) for p, r, cs in zip(problems, roots, completions, strict=True) for c in cs]
    # Kept relative to the root (the prompt held back its final newline): partial states are
    # root + line prefixes of these. A sample that rewrote the root's last line offers none.
    completions = [[continuation(r, c) or "" for c in cs] for r, cs in zip(roots, completions, strict=True)]
    scored: list[Any] = []
    chunk = 64
    for start in tqdm(range(0, len(items), chunk), desc="sandbox rewards", unit="batch"):
        scored.extend(rewarder.score(items[start : start + chunk]))
    infra = sum(s.infra_error for s in scored)
    if infra:
        logger.warning("sampling stage: %d of %d programs hit sandbox infrastructure errors (scored 0)", infra, len(scored))
    out, k = [], 0
    for p, r, cs in zip(problems, roots, completions, strict=True):
        rewards = tuple(s.reward for s in scored[k : k + len(cs)])
        k += len(cs)
        out.append(ProblemSamples(p.id, r, tuple(cs), rewards))
    return out


# ------------------------------------------------------------------------------------ curation


def base_prompts(problems: Sequence[Problem], mode: PromptMode) -> list[CuratedPrompt]:
    return [CuratedPrompt(p.id, root_state(p, mode), "base") for p in problems]


def curate_for(
    spec: AlgorithmSpec,
    samples: Sequence[ProblemSamples],
    config: RestGRPOConfig,
    fits: Callable[[str, str], bool],
) -> tuple[list[CuratedPrompt], CurationStats]:
    if spec.screen_zero_std:
        return curate(samples, filter_config=FilterConfig(sigma_0=1e-9), partial_config=None, seed=config.seed)
    return curate(
        samples,
        filter_config=config.filter if spec.filter else None,
        partial_config=config.partial_states if spec.partial_states else None,
        seed=config.seed,
        fits=fits,
    )


def curated_rows(curated: Sequence[CuratedPrompt], problems: dict[str, Problem], tokenizer: Any, mode: PromptMode) -> list[dict[str, Any]]:
    """Dataset rows for the trainer: the rendered prompt plus the columns the reward needs."""
    return [
        {
            "prompt": render_prompt(tokenizer, problems[c.problem_id], c.state, mode),
            "problem_id": c.problem_id,
            "state": c.state,
            "kind": c.kind,
            "prefix_lines": c.prefix_lines,
            "sample_std": c.sample_std,
        }
        for c in curated
    ]


# ------------------------------------------------------------------------------------- trainer


def _metrics_callback(path: Path, timer: StepTimer | None = None) -> Any:
    from transformers import TrainerCallback

    class MetricsToJsonl(TrainerCallback):
        """Appends every logged step's metrics (floats) to RUN/metrics.jsonl on the main process,
        with the mean wall-time split of the steps since the last log (``time/*_s``)."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            row: dict[str, Any] = {"step": state.global_step, "time": time.time()}
            if timer is not None and "loss" in logs:  # a training log (not the end-of-training summary)
                row.update(timer.pop_mean())
            for key, value in logs.items():
                try:
                    row[key] = float(value)
                except (TypeError, ValueError):
                    continue
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    return MetricsToJsonl()


def engine_rollouts(config: RestGRPOConfig, weights: ResolvedWeights) -> bool:
    """Whether the GRPO completions come from the vLLM engine (``grpo.rollouts``; auto: when the
    policy's engine is vllm, vLLM is installed and the update trains a LoRA adapter)."""
    import importlib.util

    g = config.grpo
    if g.rollouts != "auto":
        return g.rollouts == "engine"
    lora = g.lora is not None or weights.adapter_dir is not None
    return config.policy.engine == "vllm" and lora and importlib.util.find_spec("vllm") is not None


def rollout_weight_sync(config: RestGRPOConfig) -> Literal["auto", "adapter", "merged"]:
    """``grpo.weight_sync``, with auto narrowed to adapter when the LoRA targets split a layer the
    engine packs (a merge could not rebuild it); auto is left for `EngineRollouts` to resolve by device."""
    g = config.grpo
    if g.weight_sync == "auto" and g.lora is not None and split_packed_groups(g.lora.target_modules):
        return "adapter"
    return g.weight_sync


def timed_grpo_trainer() -> Any:
    """TRL's GRPOTrainer whose generation (rollouts included) and reward calls are timed phases of
    the step (`training.rollouts.StepTimer`; ``timer`` is set on the instance)."""
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
        timer: StepTimer

        def _generate(self, prompts: list[Any]) -> Any:  # TRL 1.16: one generation batch (rollouts included)
            with self.timer.phase("generation"):
                return super()._generate(prompts)

        def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Any:
            with self.timer.phase("rewards"):
                return super()._calculate_rewards(*args, **kwargs)

    return TimedGRPOTrainer


def load_trainable(config: RestGRPOConfig, weights: ResolvedWeights) -> tuple[Any, Any, dict[str, Any]]:
    """What every policy update (GRPO, DAPO, ReST-GRPO, ReST-DPO) starts from: the model (with
    ``policy.adapter`` loaded trainable), the LoRA config of a new adapter (or None), and the
    `TrainingArguments` fields they share (device, bf16 by device, saving, seeds)."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    g = config.grpo
    if g.torch_threads is not None:
        torch.set_num_threads(g.torch_threads)
    use_cpu = trains_on_cpu(config)
    bf16 = use_bf16(g.bf16, "cpu" if use_cpu else "cuda")
    model: Any = AutoModelForCausalLM.from_pretrained(weights.model_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    peft_config = None
    if weights.adapter_dir is not None:
        model = PeftModel.from_pretrained(model, weights.adapter_dir, is_trainable=True)
    elif g.lora is not None:
        peft_config = LoraConfig(r=g.lora.r, lora_alpha=g.lora.alpha, lora_dropout=g.lora.dropout,
                                 target_modules=list(g.lora.target_modules), task_type="CAUSAL_LM")
    shared = dict(use_cpu=use_cpu, bf16=bf16, logging_steps=g.logging_steps, save_strategy="steps", save_steps=g.save_steps,
                  save_total_limit=g.save_total_limit, save_only_model=False, report_to=[], seed=config.seed,
                  data_seed=config.seed, disable_tqdm=False, ddp_timeout=int(config.distributed_timeout_s))
    return model, peft_config, shared


def build_trainer(
    config: RestGRPOConfig,
    *,
    weights: ResolvedWeights,
    rows: list[dict[str, Any]],
    reward: SandboxReward,
    paths: RunPaths,
    tokenizer: Any,
    rollouts: EngineRollouts | None = None,
    timer: StepTimer | None = None,
) -> Any:
    """TRL's GRPOTrainer on the curated rows; with ``rollouts`` its completions come from the engine."""
    from datasets import Dataset
    from trl import GRPOConfig

    g = config.grpo
    model, peft_config, shared = load_trainable(config, weights)
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.insert(0, tokenizer.eos_token_id)
    model.generation_config.eos_token_id = eos_ids + [i for i in stop_token_ids(tokenizer) if i not in eos_ids]
    args = GRPOConfig(
        output_dir=str(paths.trainer),
        per_device_train_batch_size=g.per_device_batch_size,
        gradient_accumulation_steps=g.gradient_accumulation_steps,
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        max_steps=g.max_steps,
        learning_rate=g.learning_rate,
        beta=g.beta,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        loss_type=g.loss_type,
        temperature=g.temperature,
        shuffle_dataset=True,
        **shared,
    )
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    timer = timer or StepTimer()
    trainer = timed_grpo_trainer()(
        model=model,
        reward_funcs=[cast(Any, reward)],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[step_timer_callback(timer), _metrics_callback(paths.metrics, timer)],
        rollout_func=rollouts,
    )
    trainer.timer = timer
    return trainer


def last_checkpoint(trainer_dir: Path) -> Path | None:
    if not trainer_dir.is_dir():
        return None
    ckpts = [p for p in trainer_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None


def _trim_metrics(path: Path, max_step: int) -> None:
    """On resume, drop logged rows from steps the restored checkpoint had not reached."""
    if path.exists():
        write_jsonl_rows(path, [r for r in read_jsonl_rows(path) if r.get("step", 0) <= max_step])


def export_checkpoint(
    trainer: Any, config: RestGRPOConfig, *, paths: RunPaths, weights: ResolvedWeights, data_hashes: dict[str, str],
    metrics: dict[str, Any],
) -> Path:
    """Save the trained weights to RUN/final with a manifest (config, data hashes, metrics)."""
    final = paths.final
    if final.exists():
        shutil.rmtree(final)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.save_pretrained(str(final), safe_serialization=True)
    lora = weights.adapter_dir is not None or config.grpo.lora is not None
    if not lora:
        trainer.processing_class.save_pretrained(str(final))
    for junk in final.glob("*.bin"):  # never ship pickles (the checkpoint loader refuses them)
        junk.unlink()
    write_manifest(
        final,
        kind="policy",
        format="lora" if lora else "full",
        base=weights.base_source,
        parent=weights.adapter_dir,
        job=f"{JOB_NAME}:{config.algorithm}",
        config={**json.loads(config.model_dump_json()), "data_hashes": data_hashes},
        metrics=metrics,
    )
    return final


def _step_metrics(rows: list[dict[str, Any]], max_step: int) -> dict[str, Any]:
    step_rows = [r for r in rows if "reward" in r and r.get("step", 0) <= max_step]
    out: dict[str, Any] = {"steps": max_step}
    if step_rows:
        out["mean_reward"] = sum(r["reward"] for r in step_rows) / len(step_rows)
        out["mean_reward_std"] = sum(r.get("reward_std", 0.0) for r in step_rows) / len(step_rows)
        out["mean_frac_reward_zero_std"] = sum(r.get("frac_reward_zero_std", 0.0) for r in step_rows) / len(step_rows)
    return out


def export_saved_step(config: RestGRPOConfig, *, step: int | None = None) -> Path:
    """Export a saved trainer step (default: the last) of a LoRA run to RUN/final with its manifest,
    without training further: for a run that was interrupted, or compared at an earlier step."""
    paths = RunPaths(Path(config.output_dir))
    if step is None:
        checkpoint = last_checkpoint(paths.trainer)
        if checkpoint is None:
            raise FileNotFoundError(f"{paths.trainer}: no saved trainer step to export")
    else:
        checkpoint = paths.trainer / f"checkpoint-{step}"
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"{checkpoint}: step {step} was not saved (grpo.save_steps={config.grpo.save_steps})")
    saved = int(checkpoint.name.split("-")[-1])
    names = ("adapter_model.safetensors", "adapter_config.json")
    if not all((checkpoint / n).exists() for n in names):
        raise FileNotFoundError(f"{checkpoint}: no LoRA adapter (a full fine-tuning step is exported by finishing the run)")
    final = paths.final
    if final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    for name in names:
        shutil.copy2(checkpoint / name, final / name)
    metrics = _step_metrics(read_jsonl_rows(paths.metrics) if paths.metrics.exists() else [], saved)
    data_hashes = {"train_file": sha256_path(Path(config.data.train_file))}
    for key, path in (("curated", paths.curated), ("samples", paths.samples)):
        if path.exists():
            data_hashes[key] = sha256_path(path)
    weights = resolve_policy(config)
    base = json.loads((final / "adapter_config.json").read_text()).get("base_model_name_or_path") or weights.base_source
    write_manifest(
        final,
        kind="policy",
        format="lora",
        base=base,
        parent=weights.adapter_dir,
        job=f"{JOB_NAME}:{config.algorithm}@step{saved}",
        config={**json.loads(config.model_dump_json()), "data_hashes": data_hashes},
        metrics=metrics,
    )
    return final


# ------------------------------------------------------------------------------------------- job


def _write_config(paths: RunPaths, config: RestGRPOConfig, *, resume: bool) -> None:
    text = config.model_dump_json(indent=2)
    if paths.config.exists() and resume:
        # a config of an earlier release is read through its renamed keys
        if RestGRPOConfig.model_validate(json.loads(paths.config.read_text())).model_dump_json() != config.model_dump_json():
            raise ValueError(
                f"{paths.config}: the run was started with a different config; resume with the same config file"
                " or choose a new output_dir"
            )
        return
    if paths.config.exists() and not resume and (paths.final.exists() or last_checkpoint(paths.trainer) is not None):
        raise FileExistsError(f"{paths.root}: holds a previous run; pass --resume to continue it or choose a new output_dir")
    paths.config.write_text(text)


def trains_on_cpu(config: RestGRPOConfig) -> bool:
    """``grpo.use_cpu``, else True where no CUDA device is visible."""
    import torch

    return config.grpo.use_cpu if config.grpo.use_cpu is not None else not torch.cuda.is_available()


def distributed_state(timeout_s: float, *, cpu: bool) -> Any:
    """accelerate's `PartialState` (``cpu``: gloo process groups, as the trainer's ``use_cpu``); under
    `accelerate launch` or torchrun its process group is created with ``timeout_s``, because the
    processes that do not sample wait at a barrier while the main one samples, scores and curates
    (far beyond NCCL's default 10 minutes on a real problem set). The state is process-wide: the
    first call decides (the trainer's own, later, reuses it)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu, timeout=timedelta(seconds=timeout_s))


def run_iteration(config: RestGRPOConfig, *, resume: bool = False) -> Path:
    """Run one iteration (sample -> reward -> curate -> GRPO update -> checkpoint) and return the
    checkpoint directory. Every stage's output is on disk, so an interrupted run resumes from the
    last finished stage (and, inside the update, the last saved trainer step)."""
    problems = load_training_problems(config)  # data errors before any compute (and before heavy imports)
    from transformers import AutoTokenizer

    weights = resolve_policy(config)  # refuses a missing or malformed adapter before anything loads
    tokenizer = AutoTokenizer.from_pretrained(weights.model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    sandbox = open_sandbox(config.sandbox)
    try:
        run = _Iteration(config=config, resume=resume, spec=ALGORITHMS[config.algorithm], problems=problems,
                         paths=RunPaths(Path(config.output_dir)),
                         state=distributed_state(config.distributed_timeout_s, cpu=trains_on_cpu(config)), weights=weights,
                         tokenizer=tokenizer,
                         rewarder=TestRewarder(sandbox, mode=weights.prompt_mode))
        return run.stages()
    finally:
        sandbox.close()


@dataclass
class _Iteration:
    """One iteration's inputs, shared by its stages (`stages` runs them in order)."""

    config: RestGRPOConfig
    resume: bool
    spec: AlgorithmSpec
    problems: list[Problem]
    paths: RunPaths
    state: Any  # accelerate's PartialState: which process is the main one
    weights: ResolvedWeights
    tokenizer: Any
    rewarder: TestRewarder
    timings: dict[str, float] = field(default_factory=dict)
    stats: CurationStats | None = None
    rollouts: str | None = None  # GRPO: who generated the completions (engine | trainer)
    weight_sync: str | None = None  # engine rollouts: how the trainer's weights reached the engine (adapter | merged)

    @property
    def mode(self) -> PromptMode:
        return self.weights.prompt_mode

    @property
    def by_id(self) -> dict[str, Problem]:
        return {p.id: p for p in self.problems}

    def stages(self) -> Path:
        if self.state.is_main_process:
            self.paths.root.mkdir(parents=True, exist_ok=True)
            _write_config(self.paths, self.config, resume=self.resume)
            if not (self.resume and self.paths.curated.exists()):
                write_jsonl_rows(self.paths.curated, self.training_rows())
        self.state.wait_for_everyone()
        rows = read_jsonl_rows(self.paths.curated)
        trainer, result, reward = self.UPDATES[self.spec.update](self, rows)
        out = self.paths.final
        if self.state.is_main_process:
            out = self.finish(trainer, result, rows, reward)
        self.state.wait_for_everyone()
        return out

    def training_rows(self) -> list[dict[str, Any]]:
        """What the update trains on: rendered prompts (GRPO) or preference pairs (DPO)."""
        if self.spec.update == "dpo":
            from training.rest_dpo import pair_rows

            t0 = time.perf_counter()
            samples = self.samples()
            self.timings["sample_and_reward_s"] = time.perf_counter() - t0
            rows = pair_rows(samples, self.by_id, self.tokenizer, self.mode, pairs=self.config.dpo.pairs_per_problem)
            if not rows:
                raise TrainingDataError(
                    f"no preference pair: every one of {len(self.problems)} problems' {self.config.sampling.n} programs"
                    " scored the same; use more or other problems or a larger sampling.n"
                )
            return rows
        return curated_rows(self.curate(), self.by_id, self.tokenizer, self.mode)

    def fits(self, problem_id: str, state_text: str) -> bool:
        prompt = render_prompt(self.tokenizer, self.by_id[problem_id], state_text, self.mode)
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= self.config.partial_states.max_prompt_tokens

    def curate(self) -> list[CuratedPrompt]:
        """Steps 1-4 (those the algorithm runs): the curated prompt set."""
        if not self.spec.sample:
            return base_prompts(self.problems, self.mode)
        t0 = time.perf_counter()
        samples = self.samples()
        self.timings["sample_and_reward_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        curated, self.stats = curate_for(self.spec, samples, self.config, self.fits)
        self.timings["curate_s"] = time.perf_counter() - t1
        if not curated:
            raise TrainingDataError(
                f"the curated prompt set is empty: every one of {len(self.problems)} problems was filtered out"
                f" (sigma_0={self.config.filter.sigma_0}); use more or harder/easier problems, a larger sampling.n, or"
                " a lower filter.sigma_0"
            )
        return curated

    def samples(self) -> list[ProblemSamples]:
        """Steps 1-2, or their file when resuming."""
        if self.resume and self.paths.samples.exists():
            return [ProblemSamples(r["problem_id"], r["root"], tuple(r["completions"]), tuple(r["rewards"]))
                    for r in read_jsonl_rows(self.paths.samples)]
        n = self.config.grpo.num_generations if self.spec.screen_zero_std else self.config.sampling.n
        samples = sample_and_score(self.problems, n=n, config=self.config, mode=self.mode, tokenizer=self.tokenizer,
                                   rewarder=self.rewarder)
        write_jsonl_rows(self.paths.samples, [asdict(s) for s in samples])
        return samples

    def update_grpo(self, rows: list[dict[str, Any]]) -> tuple[Any, Any, SandboxReward]:
        """Step 5: the GRPO update, its rollouts from the engine or the trainer (``grpo.rollouts``)."""
        needed = self.config.grpo.max_steps * self.config.prompts_per_step
        if len(rows) < needed:
            logger.info("curated set has %d prompts for %d prompt slots: the trainer cycles through it", len(rows), needed)
        reward = SandboxReward(self.rewarder, self.by_id, groups_log=self.paths.groups if self.state.is_main_process else None)
        timer = StepTimer()
        rollouts = None
        if engine_rollouts(self.config, self.weights):
            rollouts = EngineRollouts(self.config.policy, adapter_root=self.paths.root / "rollout_adapters", timer=timer,
                                      weight_sync=rollout_weight_sync(self.config))
        self.rollouts = "engine" if rollouts else "trainer"
        try:
            if rollouts is not None:
                t0 = time.perf_counter()
                rollouts.start()
                self.timings["rollout_engine_start_s"] = time.perf_counter() - t0
                self.weight_sync = rollouts.sync_mode
            logger.info("GRPO rollouts: %s", f"the vLLM engine (weight sync: {self.weight_sync})" if rollouts
                        else "the trainer (transformers)")
            trainer = build_trainer(self.config, weights=self.weights, rows=rows, reward=reward, paths=self.paths,
                                    tokenizer=self.tokenizer, rollouts=rollouts, timer=timer)
            trainer, result = self.train(trainer)
        finally:
            if rollouts is not None:
                rollouts.close()
        return trainer, result, reward

    def update_dpo(self, rows: list[dict[str, Any]]) -> tuple[Any, Any, None]:
        """The ReST-DPO update on the pairs (`training.rest_dpo`)."""
        from training.rest_dpo import build_dpo_trainer

        timer = StepTimer()
        trainer = build_dpo_trainer(self.config, weights=self.weights, rows=rows, trainer_dir=self.paths.trainer,
                                    tokenizer=self.tokenizer,
                                    callbacks=[step_timer_callback(timer), _metrics_callback(self.paths.metrics, timer)])
        trainer, result = self.train(trainer)
        return trainer, result, None

    UPDATES: ClassVar[dict[str, Callable[[_Iteration, list[dict[str, Any]]], tuple[Any, Any, SandboxReward | None]]]] = {
        "grpo": update_grpo,
        "dpo": update_dpo,
    }

    def train(self, trainer: Any) -> tuple[Any, Any]:
        """Run ``trainer`` (from the last saved step when resuming); (trainer, result)."""
        paths = self.paths
        checkpoint = last_checkpoint(paths.trainer) if self.resume else None
        if checkpoint is not None:
            step = int(checkpoint.name.split("-")[-1])
            logger.info("resuming the update from %s (step %d)", checkpoint, step)
            if self.state.is_main_process:
                _trim_metrics(paths.metrics, step)
                if paths.groups.exists():
                    write_jsonl_rows(paths.groups, [r for r in read_jsonl_rows(paths.groups) if (r.get("step") or 0) < step])
        elif self.state.is_main_process:
            for stale in (paths.metrics, paths.groups):
                stale.unlink(missing_ok=True)
        t2 = time.perf_counter()
        if checkpoint is not None and int(checkpoint.name.split("-")[-1]) >= trainer.args.max_steps:
            # finished already: transformers' Trainer would run one step past max_steps when resumed here
            from transformers.trainer_callback import TrainerState
            from transformers.trainer_utils import TrainOutput

            logger.info("%s is at max_steps=%d: nothing left to train, exporting it", checkpoint, trainer.args.max_steps)
            trainer._load_from_checkpoint(str(checkpoint))
            trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
            self.timings["update_s"] = 0.0
            return trainer, TrainOutput(trainer.state.global_step, float("nan"), {})
        try:
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except KeyboardInterrupt:
            logger.warning(
                "interrupted: the last saved trainer step is under %s; continue with `restrl train policy --config FILE --resume`",
                paths.trainer,
            )
            raise
        self.timings["update_s"] = time.perf_counter() - t2
        return trainer, result

    def finish(self, trainer: Any, result: Any, rows: list[dict[str, Any]], reward: SandboxReward | None) -> Path:
        """The checkpoint with its manifest, and ``summary.json``."""
        paths = self.paths
        final_metrics: dict[str, Any] = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        logged = read_jsonl_rows(paths.metrics) if paths.metrics.exists() else []
        final_metrics.update(_step_metrics(logged, int(trainer.state.global_step)))
        if reward is not None:
            final_metrics["sandbox_infra_errors"] = reward.infra_errors
        data_hashes = {"train_file": sha256_path(Path(self.config.data.train_file)), "curated": sha256_path(paths.curated)}
        if paths.samples.exists():
            data_hashes["samples"] = sha256_path(paths.samples)
        out = export_checkpoint(trainer, self.config, paths=paths, weights=self.weights, data_hashes=data_hashes, metrics=final_metrics)
        summary: dict[str, Any] = json.loads(paths.summary.read_text()) if paths.summary.exists() and self.resume else {}
        summary.setdefault("timings", {}).update(self.timings)
        summary.update(algorithm=self.config.algorithm, problems=len(self.problems), curated_prompts=len(rows),
                       curated_kinds={k: sum(r["kind"] == k for r in rows)
                                      for k in (("pair",) if self.spec.update == "dpo" else ("base", "partial"))})
        if self.rollouts is not None:
            summary["rollouts"] = self.rollouts
        if self.weight_sync is not None:
            summary["weight_sync"] = self.weight_sync
        step_times = [r for r in logged if "time/step_s" in r]
        if step_times:  # mean wall-time split of the logged steps
            summary["step_time"] = {k.removeprefix("time/"): sum(r[k] for r in step_times) / len(step_times)
                                    for k in step_times[0] if k.startswith("time/")}
        if self.stats is not None:
            summary["curation"] = {k: v for k, v in asdict(self.stats).items() if not isinstance(v, list)}
        summary["metrics"] = final_metrics
        summary["checkpoint"] = str(out)
        paths.summary.write_text(json.dumps(summary, indent=2))
        return out
