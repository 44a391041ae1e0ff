"""`restrl train value`: regression of the value model on collected (problem, state, target) rows.

In: ``rows.jsonl`` and ``problems.jsonl`` written by `training.value_data` (collect-values). The
rows are split *by problem* (never by row: a held-out problem contributes no row to training);
each row's input is tokenized by `models.value.encode_value_inputs`, the function serving uses,
with the serving ``max_length``, so training and serving see identical tokens. The model is
`AutoModelForSequenceClassification(num_labels=1)` on ``value.base`` - by default the base of the
policy whose rollouts the rows come from (the one the collect-values run recorded), any causal LM
transformers can load as a sequence classifier; a smaller one is allowed - (`build_value_backbone`)
with a LoRA adapter on every projection and the ``score`` head trained in full
(`value_lora_config`: ``modules_to_save``); HF `Trainer` minimises the MSE (transformers'
regression loss for one float label). Batches are right-padded without an attention mask, as
in `HFValueModel._forward`.

Out, in ``output_dir``: ``final/`` - the adapter + head with its `restrl.json` manifest (metrics
included; ``base`` = the value model's base, ``policy`` = the base of the policy it was trained for,
which the server matches against the policy it serves), loadable by ``restrl serve --value DIR`` and checked here by loading it back through
`HFValueModel.load` and re-scoring held-out rows; ``metrics.json`` - held-out MSE,
accuracy@0.05 (|clip(pred) - target| < 0.05, RESTRL_SPEC.md section 3), the MSE of predicting the
training mean (the bar to beat), Pearson r, per-kind figures, and the same on the training rows;
``predictions.jsonl`` (held-out rows with predictions); ``calibration.png`` - predicted vs
observed (binned means and every row).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.config import (
    EngineConfig,
    ValueConfig,
    move_renamed_keys,
    over_job_defaults,
    resolve_device,
    use_bf16,
)
from models.default import DEFAULT_MODEL_BASE, canonical_base, is_default_base
from models.loading import ResolvedWeights, resolve_weights
from models.value import (
    HFValueModel,
    _torch_dtype,
    build_value_backbone,
    cpu_threads,
    encode_value_inputs,
    resolve_value_base,
    save_value_checkpoint,
    top_layers_adapter_config,
    value_lora_config,
    warm_top_layers_adapter_config,
)
from search.stack import trained_for_match, value_match
from tasks import Problem
from tasks.humaneval import check_trainable
from tasks.jsonl import load_jsonl
from training.value_data import CollectConfig, RowKind, dedupe_rows, read_rows, select_problems

logger = logging.getLogger(__name__)

ACCURACY_TOLERANCE = 0.05


# keys of earlier releases -> their nested place (still read, with a warning)
RENAMED: dict[str, tuple[str, ...]] = {"max_length": ("value.max_length",), "device": ("value.device",)}


class ValueTrainConfig(BaseModel):
    """Data, split, adapter and optimiser of one value-model training run."""

    model_config = ConfigDict(extra="forbid")
    renamed_keys: ClassVar[dict[str, tuple[str, ...]]] = RENAMED  # flat keys of earlier releases -> their place now

    rows_file: str | list[str] = Field(
        default="runs/value_data/rows.jsonl", description="rows written by collect-values; a list trains on their union (a"
        " ReST iteration's rows with the earlier ones), a state in two of them merged by its rollouts (`dedupe_rows`)",
    )
    problems_file: str | list[str] = Field(
        default="runs/value_data/problems.jsonl", description="the problems those rows refer to (a list: each collection's)"
    )
    output_dir: str = Field(default="runs/value_model", description="folder for final/, metrics.json, predictions, plot")
    policy: EngineConfig | None = Field(
        default=None,
        description="the policy whose rollouts the rows come from; None = the one the collect-values run recorded"
        " (config.json beside rows_file)",
    )
    value: ValueConfig = Field(
        default_factory=ValueConfig,
        description="the value model trained: base (None = the policy's base; a smaller one is allowed), max_length (tokens"
        " per input, the serving one: identical tokens) and device; the head starts from `seed`",
    )
    kinds: tuple[RowKind, ...] = Field(default=("expanded", "program", "child"), description="row kinds to train on")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1, description="share of problems held out for evaluation")
    holdout_exclude: str | None = Field(
        default=None, description="problems never held out (they train): a collect-values config (YAML) or a problems JSONL, e.g."
        " the data an earlier value model trained on, so that its held-out figures compare with a new model's fairly",
    )
    split_seed: int = Field(default=0, ge=0, description="seed of the problem split")
    target: Literal["reward", "solved"] = Field(
        default="reward", description="what the model learns of a row: reward = the mean pass fraction of the rollouts behind"
        " it (RESTRL_SPEC.md section 3); solved = the share of them that pass every test (our extension: the final choice is"
        " pass or fail, and states whose rollouts pass some tests are mostly dead ends). Held-out MSE and r are against it;"
        " pair accuracy and the top-1 choice are the same under both (a program passes or not)",
    )
    lora_r: int = Field(default=8, ge=1, le=256)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int = Field(default=-1, ge=-1, description="optimizer steps; -1 = epochs decide")
    batch_size: int = Field(default=16, ge=1)
    eval_batch_size: int = Field(default=32, ge=1)
    bf16: bool | None = Field(default=None, description="bf16 autocast; null = on where it trains on a CUDA GPU with bf16, off on a CPU")
    seed: int = Field(default=0, ge=0, description="seed of the head init, LoRA init and data order")
    max_train_rows: int | None = Field(default=None, ge=1, description="cap on training rows (a seeded sample), for quick runs")
    rank_weight: float = Field(
        default=0.0, ge=0, description="weight of a within-problem pairwise ranking term added to the MSE (0 = MSE alone)"
    )
    rank_temperature: float = Field(default=0.1, gt=0, description="ranking term: softplus(-(s_hi - s_lo) / T) per same-problem pair")
    problems_per_batch: int = Field(
        default=0, ge=0, description="0 = shuffled rows; n = each batch holds rows of n problems (same-problem pairs for the ranking term)"
    )
    lora_layers: int | None = Field(default=None, ge=1, description="LoRA only on the top n decoder layers (cheaper backward); None = every layer")
    init_from: str | None = Field(
        default=None, description="continue training this value checkpoint instead of a fresh adapter + head: with LoRA its"
        " LoRA settings are kept; with top_layers the frozen layers below are the checkpoint's (its LoRA merged) and the top"
        " layers, norm and head start from its weights, so training starts from the checkpoint's predictions",
    )
    top_layers: int | None = Field(
        default=None, ge=1,
        description="instead of LoRA: fine-tune the top n decoder layers, the final norm and the head in full on hidden"
        " states of the frozen layers below, computed once per row in the serving dtype and cached (feature_cache_dir);"
        " each epoch then costs n/L of a forward and backward (`training.value_top_layers`); None = LoRA",
    )
    evaluate_checkpoint: str | None = Field(
        default=None, description="no training: score the held-out rows with this value checkpoint (a folder or hub id) in"
        " the serving dtype and write metrics.json as a trained run would (a study's baseline); no final/ is written",
    )
    feature_cache_dir: str | None = Field(
        default=None, description="top_layers: where the cached states live (reused by every run on the same base, layer"
        " and dtype); None = features/ beside rows_file",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return over_job_defaults(cls, move_renamed_keys(data, RENAMED, what="restrl train value"))

    def rows_files(self) -> list[str]:
        return [self.rows_file] if isinstance(self.rows_file, str) else list(self.rows_file)

    def problems_files(self) -> list[str]:
        return [self.problems_file] if isinstance(self.problems_file, str) else list(self.problems_file)

    @model_validator(mode="after")
    def _one_recipe(self) -> ValueTrainConfig:
        if not self.rows_files() or not self.problems_files():
            raise ValueError("rows_file and problems_file name at least one file each")
        if self.top_layers is not None and self.lora_layers:
            raise ValueError("top_layers (full fine-tune of the top layers) does not combine with lora_layers (a LoRA setting)")
        if self.evaluate_checkpoint and (self.top_layers is not None or self.init_from or self.lora_layers):
            raise ValueError("evaluate_checkpoint trains nothing: it does not combine with top_layers, init_from or lora_layers")
        return self


# ------------------------------------------------------------------------------------ data


def split_by_problem(rows: Sequence[dict[str, Any]], *, holdout_fraction: float, seed: int,
                     never: Iterable[str] = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, held-out rows): a seeded draw of whole problems (at least one each side when
    there are two or more problems), ``holdout_fraction`` of all problems, drawn from those not in
    ``never`` (without ``never`` the draw is the same as before it existed)."""
    ids = sorted({r["problem_id"] for r in rows})
    n_hold = round(len(ids) * holdout_fraction)
    if len(ids) >= 2:
        n_hold = min(max(n_hold, 1), len(ids) - 1)
    excluded = set(never)
    ids = [i for i in ids if i not in excluded]
    random.Random(seed).shuffle(ids)
    held = set(ids[:n_hold])
    return [r for r in rows if r["problem_id"] not in held], [r for r in rows if r["problem_id"] in held]


def load_problems(*paths: str | Path) -> dict[str, Problem]:
    """The trainable problems of every file, by id; one id defined two ways is refused."""
    out: dict[str, Problem] = {}
    for path in paths:
        for p in check_trainable(load_jsonl(path)):
            if p.id in out and out[p.id] != p:
                raise ValueError(f"problems_file: {path} defines {p.id} otherwise than an earlier file")
            out[p.id] = p
    return out


def encode_rows(rows: Sequence[dict[str, Any]], problems: dict[str, Problem], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """``{"input_ids", "labels"}`` per row, tokenized exactly as serving tokenizes."""
    out = []
    group = {pid: i for i, pid in enumerate(sorted({r["problem_id"] for r in rows}))}
    for r in rows:
        ids = encode_value_inputs(tokenizer, problems[r["problem_id"]], [r["state"]], max_length)[0]
        out.append({"input_ids": ids, "labels": float(r["target"]), "group": group[r["problem_id"]]})
    return out


def problem_batches(rows: Sequence[dict[str, Any]], *, batch_size: int, problems_per_batch: int, seed: int) -> list[list[int]]:
    """Row indices in batches of ``problems_per_batch`` problems each (``batch_size`` // that many
    rows per problem, drawn without replacement, seeded), so that the ranking term sees pairs of
    one problem; every row is used once per epoch."""
    rng = random.Random(seed)
    per = max(1, batch_size // max(1, problems_per_batch))
    chunks: list[list[int]] = []
    by_problem: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_problem.setdefault(r["problem_id"], []).append(i)
    for idx in by_problem.values():
        rng.shuffle(idx)
        chunks.extend(idx[j : j + per] for j in range(0, len(idx), per))
    rng.shuffle(chunks)
    return [sum(chunks[j : j + problems_per_batch], []) for j in range(0, len(chunks), problems_per_batch)]


def ranking_loss(scores: Any, targets: Any, groups: Any, *, temperature: float) -> Any:
    """Mean over same-group pairs with different targets of softplus(-(s_hi - s_lo) / T): the
    higher-target row should score higher (RankNet's logistic loss); 0 when a batch has no pair."""
    import torch

    same = groups[:, None] == groups[None, :]
    higher = targets[:, None] > targets[None, :]
    mask = same & higher
    if not bool(mask.any()):
        return scores.sum() * 0.0
    diff = (scores[:, None] - scores[None, :]) / temperature
    return torch.nn.functional.softplus(-diff[mask]).mean()


class _Collator:
    """Right-pads with the pad id and no attention mask (as `HFValueModel._forward` scores)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for i, b in enumerate(batch):
            ids[i, : len(b["input_ids"])] = torch.tensor(b["input_ids"], dtype=torch.long)
        out = {"input_ids": ids, "labels": torch.tensor([b["labels"] for b in batch], dtype=torch.float32)}
        if "group" in batch[0]:
            out["group"] = torch.tensor([b["group"] for b in batch], dtype=torch.long)
        return out


# ------------------------------------------------------------------------------------ metrics


def regression_metrics(preds: Sequence[float], targets: Sequence[float], *, train_mean: float | None = None) -> dict[str, Any]:
    """MSE, accuracy@0.05 of the clipped predictions, Pearson r, and the MSE of a constant
    prediction (the training mean) for comparison."""
    n = len(preds)
    if n == 0:
        return {"rows": 0}
    p = [min(1.0, max(0.0, x)) for x in preds]
    mse = sum((a - b) ** 2 for a, b in zip(p, targets, strict=True)) / n
    acc = sum(abs(a - b) < ACCURACY_TOLERANCE for a, b in zip(p, targets, strict=True)) / n
    out: dict[str, Any] = {"rows": n, "mse": mse, "accuracy_at_0.05": acc, "mean_target": sum(targets) / n, "mean_pred": sum(p) / n}
    mp, mt = sum(p) / n, sum(targets) / n
    sp = math.sqrt(sum((a - mp) ** 2 for a in p))
    st = math.sqrt(sum((b - mt) ** 2 for b in targets))
    out["pearson_r"] = sum((a - mp) * (b - mt) for a, b in zip(p, targets, strict=True)) / (sp * st) if sp > 0 and st > 0 else None
    if train_mean is not None:
        out["constant_mse"] = sum((train_mean - b) ** 2 for b in targets) / n
        out["constant_accuracy_at_0.05"] = sum(abs(train_mean - b) < ACCURACY_TOLERANCE for b in targets) / n
    return out


def _pair_accuracy(rows: Sequence[dict[str, Any]], preds: Sequence[float], keys_of: Callable[[dict[str, Any]], list[str]]) -> dict[str, Any]:
    """How often, within one problem, a passing program (target 1) is scored above a failing one
    (target < 1; ties count half), tallied under every key ``keys_of(failing row)`` names."""
    by_problem: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for r, p in zip(rows, preds, strict=True):
        if r["kind"] == "program":
            by_problem.setdefault(r["problem_id"], []).append((r, p))
    tallies: dict[str, list[float]] = {}
    for items in by_problem.values():
        passing = [p for r, p in items if r["target"] >= 1.0]
        for r, p_fail in items:
            if r["target"] >= 1.0:
                continue
            keys = keys_of(r)
            for p_pass in passing:
                score = 1.0 if p_pass > p_fail else 0.5 if p_pass == p_fail else 0.0
                for k in keys:
                    tallies.setdefault(k, []).append(score)
    return {k: {"pairs": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(tallies.items())}


def pair_accuracy_by_depth(rows: Sequence[dict[str, Any]], preds: Sequence[float], *, max_depth: int = 4) -> dict[str, Any]:
    """Pair accuracy (`_pair_accuracy`) by the depth the failing program was sampled at (its row's
    ``depth``; ``max_depth`` gathers the deeper ones) - the comparison a search's final choice makes,
    and where deep near-duplicates of the states the model likes go wrong. ``"2+"`` pools depth >= 2."""

    def keys(r: dict[str, Any]) -> list[str]:
        d = min(int(r.get("depth", 0)), max_depth)
        return [str(d) if d < max_depth else f"{max_depth}+", "all"] + (["2+"] if d >= 2 else [])

    return _pair_accuracy(rows, preds, keys)


def pair_accuracy_by_failing_reward(rows: Sequence[dict[str, Any]], preds: Sequence[float]) -> dict[str, Any]:
    """Pair accuracy (`_pair_accuracy`) by how much of the tests the failing program passes, from
    its ``reward`` (the pass fraction; a row trained on ``solved`` keeps it): ``zero``, ``some``
    (under half) or ``most`` (half or more, not all) - the near-misses a final choice must still reject."""

    def keys(r: dict[str, Any]) -> list[str]:
        reward = r.get("reward", r["target"])
        return ["zero" if reward <= 0 else "some" if reward < 0.5 else "most"]

    return _pair_accuracy(rows, preds, keys)


def top1_choice(rows: Sequence[dict[str, Any]], preds: Sequence[float]) -> dict[str, Any]:
    """Best-of-N's final choice on the held-out rows: per problem with both passing (target 1) and
    failing programs, whether the program the model scores highest passes (ties: the passing share
    of the tied top). Pair accuracy counts every (passing, failing) pair; the choice needs the
    passing program above *all* failing ones, so it is the stricter yardstick. ``expected`` is a
    random choice's rate (the passing share of each problem's programs), the bar."""
    by_problem: dict[str, list[tuple[float, bool]]] = {}
    for r, p in zip(rows, preds, strict=True):
        if r["kind"] == "program":
            by_problem.setdefault(r["problem_id"], []).append((p, r["target"] >= 1.0))
    chosen, expected = [], []
    for items in by_problem.values():
        passing = sum(ok for _, ok in items)
        if 0 < passing < len(items):
            best = max(p for p, _ in items)
            top = [ok for p, ok in items if p == best]
            chosen.append(sum(top) / len(top))
            expected.append(passing / len(items))
    n = len(chosen)
    return {"problems": n, "accuracy": sum(chosen) / n if n else None, "expected": sum(expected) / n if n else None}


def calibration_bins(preds: Sequence[float], targets: Sequence[float], *, bins: int = 10) -> list[dict[str, float]]:
    """Rows grouped by clipped prediction into equal-width bins: mean predicted vs mean observed."""
    groups: list[list[tuple[float, float]]] = [[] for _ in range(bins)]
    for a, b in zip(preds, targets, strict=True):
        a = min(1.0, max(0.0, a))
        groups[min(bins - 1, int(a * bins))].append((a, b))
    return [
        {"lo": i / bins, "hi": (i + 1) / bins, "rows": len(g), "mean_pred": sum(x for x, _ in g) / len(g), "mean_target": sum(y for _, y in g) / len(g)}
        for i, g in enumerate(groups)
        if g
    ]


def calibration_plot(preds: Sequence[float], targets: Sequence[float], path: str | Path, *, title: str) -> Path | None:
    """Predicted vs observed: every held-out row (jittered) and the binned means. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no calibration plot")
        return None
    rng = random.Random(0)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter([min(1.0, max(0.0, x)) for x in preds], [t + rng.uniform(-0.01, 0.01) for t in targets], s=6, alpha=0.3, label="rows")
    cb = calibration_bins(preds, targets)
    ax.plot([b["mean_pred"] for b in cb], [b["mean_target"] for b in cb], "o-", color="C3", label="binned mean")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect")
    ax.set_xlabel("predicted value (clipped)")
    ax.set_ylabel("observed target")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ the job


def trained_policy(cfg: ValueTrainConfig) -> EngineConfig:
    """The policy the rows come from: ``cfg.policy``, else the one the collect-values run beside
    ``rows_file`` recorded (the embedded default when there is no record)."""
    if cfg.policy is not None:
        return cfg.policy
    found: list[tuple[str, EngineConfig]] = []
    for rows_file in cfg.rows_files():
        recorded = Path(rows_file).parent / "config.json"
        if recorded.exists():
            found.append((rows_file, CollectConfig.model_validate(json.loads(recorded.read_text())).policy))
        else:
            logger.warning("%s: no collect-values config beside the rows; taking them for the default policy's", recorded)
            found.append((rows_file, EngineConfig()))
    first_file, first = found[0]
    for rows_file, policy in found[1:]:  # the weights and the prompt format; how the engine ran does not matter
        if (policy.model, policy.adapter, policy.prompt_mode) != (first.model, first.adapter, first.prompt_mode):
            raise ValueError(f"rows_file: {rows_file} was collected with another policy ({policy.model}) than {first_file}"
                             f" ({first.model}): one value model learns one policy's rollouts")
    return first


class ProblemBatchSampler:
    """`problem_batches`, drawn again (new seed) at every epoch: a torch batch sampler."""

    def __init__(self, rows: Sequence[dict[str, Any]], *, batch_size: int, problems_per_batch: int, seed: int) -> None:
        self.rows, self.batch_size, self.problems_per_batch, self.seed = rows, batch_size, problems_per_batch, seed
        self.epoch = 0

    def __iter__(self) -> Any:
        batches = problem_batches(self.rows, batch_size=self.batch_size, problems_per_batch=self.problems_per_batch, seed=self.seed + self.epoch)
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(problem_batches(self.rows, batch_size=self.batch_size, problems_per_batch=self.problems_per_batch, seed=self.seed))


def _value_trainer(cfg: ValueTrainConfig, train_rows: Sequence[dict[str, Any]], **kwargs: Any) -> Any:
    """HF `Trainer` minimising the MSE (+ ``rank_weight`` x `ranking_loss`), with problem-grouped
    batches when ``problems_per_batch`` is set."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import Trainer

    class ValueTrainer(Trainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            groups = inputs.pop("group", None)
            labels = inputs.pop("labels")
            outputs = model(input_ids=inputs["input_ids"])
            scores = outputs.logits.squeeze(-1).float()
            loss = torch.nn.functional.mse_loss(scores, labels.float())
            if cfg.rank_weight and groups is not None:
                loss = loss + cfg.rank_weight * ranking_loss(scores, labels, groups, temperature=cfg.rank_temperature)
            return (loss, outputs) if return_outputs else loss

        def get_train_dataloader(self) -> Any:
            if not cfg.problems_per_batch:
                return super().get_train_dataloader()
            sampler = ProblemBatchSampler(train_rows, batch_size=cfg.batch_size, problems_per_batch=cfg.problems_per_batch, seed=cfg.seed)
            return self.accelerator.prepare(DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator))  # type: ignore[arg-type]

    return ValueTrainer(**kwargs)


def _value_model(cfg: ValueTrainConfig, base_dir: Path) -> tuple[Any, Any]:
    """The model to train: a fresh LoRA adapter + seeded head on the base, or ``init_from``'s
    adapter and head, trainable."""
    from peft import PeftModel, get_peft_model

    backbone, tokenizer = build_value_backbone(base_dir, dtype="float32", seed=cfg.seed)
    if cfg.init_from:
        return PeftModel.from_pretrained(backbone, cfg.init_from, is_trainable=True), tokenizer
    n = backbone.config.num_hidden_layers
    layers = list(range(n - cfg.lora_layers, n)) if cfg.lora_layers else None
    return get_peft_model(backbone, value_lora_config(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, layers=layers)), tokenizer


def value_base(cfg: ValueTrainConfig, policy: ResolvedWeights) -> tuple[Path, str]:
    """(folder, name for the manifest) of the value model's base: ``value.base``, else the policy's."""
    if cfg.value.base is not None:
        return resolve_value_base(cfg.value.base), canonical_base(cfg.value.base)
    if is_default_base(policy.base_model):
        return resolve_value_base(None), DEFAULT_MODEL_BASE
    return Path(policy.model_dir), policy.base_model


def _predict(model: Any, tokenizer: Any, problems: dict[str, Problem], rows: Sequence[dict[str, Any]], cfg: ValueTrainConfig, device: str) -> list[float]:
    """Scores through `HFValueModel` itself: the serving code path (clamped to [0, 1])."""
    vcfg = ValueConfig(batch_size=cfg.eval_batch_size, max_length=cfg.value.max_length, device=device, dtype="float32")
    scorer = HFValueModel(model=model, tokenizer=tokenizer, config=vcfg, version="training", trained=True)
    model.eval()
    return scorer.score_pairs_sync([(problems[r["problem_id"]], r["state"]) for r in rows])


def excluded_problems(source: str | Path) -> set[str]:
    """Problem ids of ``holdout_exclude``: a collect-values config (its problem selection) or a problems JSONL."""
    path = Path(source)
    if not path.exists():
        raise ValueError(f"holdout_exclude: {path} does not exist (a collect-values config or a problems JSONL)")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return {p.id for p in select_problems(CollectConfig.model_validate(yaml.safe_load(path.read_text()) or {}))}
    return {p.id for p in load_jsonl(path)}


def _split_rows(cfg: ValueTrainConfig, problems: dict[str, Problem]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, held-out rows) of the configured kinds, split by problem (``holdout_exclude``'s never held out)."""
    every = dedupe_rows(r for f in cfg.rows_files() for r in read_rows(f))  # one file's rows are unique already: unchanged
    rows = [r for r in every if r["kind"] in cfg.kinds and r["problem_id"] in problems]
    if not rows:
        raise ValueError(f"{cfg.rows_file}: no rows of kinds {list(cfg.kinds)} for the problems in {cfg.problems_file}")
    if cfg.target == "solved":
        if any("solved" not in r for r in rows):
            raise ValueError(f"target solved: {cfg.rows_file} has rows without `solved` (written by an older release): rebuild it"
                             " from its traces with `restrl train collect-values --config <its config> --resume`")
        rows = [{**r, "target": r["solved"], "reward": r["target"]} for r in rows]
    never = excluded_problems(cfg.holdout_exclude) if cfg.holdout_exclude else set()
    if never:
        logger.info("value training: %d problems of %s are never held out (%d of them have rows)", len(never), cfg.holdout_exclude,
                    len(never & {r["problem_id"] for r in rows}))
    train_rows, held_rows = split_by_problem(rows, holdout_fraction=cfg.holdout_fraction, seed=cfg.split_seed, never=never)
    if cfg.max_train_rows is not None and len(train_rows) > cfg.max_train_rows:
        train_rows = random.Random(cfg.seed).sample(train_rows, cfg.max_train_rows)
    logger.info(
        "value training: %d rows (%d train from %d problems, %d held out from %d problems)",
        len(rows), len(train_rows), len({r["problem_id"] for r in train_rows}), len(held_rows), len({r["problem_id"] for r in held_rows}),
    )
    return train_rows, held_rows


def _train(cfg: ValueTrainConfig, model: Any, tokenizer: Any, train_rows: list[dict[str, Any]], train_data: list[dict[str, Any]],
           device: str, out: Path) -> tuple[Any, Any, float]:
    """Fit the adapter and head with `_value_trainer`; (unwrapped model, train result, seconds)."""
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type="cosine",
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=device == "cpu",
        bf16=use_bf16(cfg.bf16, device),
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = _value_trainer(cfg, train_rows, model=model, args=args, train_dataset=train_data, data_collator=_Collator(tokenizer.pad_token_id))
    t_train = time.monotonic()
    result = trainer.train()
    # Unwrapped: with bf16 the accelerator leaves an autocast wrapper on forward; predictions and
    # the saved weights must be those of the plain float32 model that serving loads.
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False), result, time.monotonic() - t_train


def warm_source_tag(cfg: ValueTrainConfig, base_name: str, policy: ResolvedWeights) -> str:
    """``init_from`` with ``top_layers``: refuse a checkpoint of another base or policy; return a
    tag of its weights (the feature cache of its frozen layers is its own)."""
    from models.checkpoints import read_manifest

    assert cfg.init_from is not None
    if not Path(cfg.init_from).is_dir():
        raise ValueError(f"init_from: {cfg.init_from} is not a folder (with top_layers: a value checkpoint folder with its restrl.json)")
    manifest = read_manifest(cfg.init_from)
    if manifest.kind != "value" or manifest.format != "lora":
        raise ValueError(f"init_from: {cfg.init_from} is a {manifest.kind} {manifest.format} checkpoint, not a value adapter")
    if canonical_base(manifest.base) != canonical_base(base_name):
        raise ValueError(f"init_from: {cfg.init_from} is a value model on {manifest.base}, not on {base_name}")
    match = trained_for_match(policy.base_model, manifest.policy, cfg.init_from, any_policy=cfg.value.any_policy)  # serving's rule
    if not match.allowed:
        raise ValueError(f"init_from: {match.message} (value.any_policy: true to start from it anyway)")
    digest = manifest.files.get("adapter_model.safetensors") or "".join(sorted(manifest.files.values()))
    return digest[:8]


def merged_value_model(base_dir: Path, source: str, *, dtype: str, seed: int) -> tuple[Any, Any]:
    """The value checkpoint ``source`` as one plain model (its LoRA merged into float32 weights,
    its saved modules in place), in ``dtype``."""
    from peft import PeftModel

    backbone, tokenizer = build_value_backbone(base_dir, dtype="float32", seed=seed)
    return PeftModel.from_pretrained(backbone, source).merge_and_unload().to(_torch_dtype(dtype)), tokenizer


def warm_adapter(base_dir: Path, source: str, trained: Any, num_layers: int, top: int, seed: int) -> Any:
    """A value adapter of ``trained`` (`merged_value_model` of ``source`` with its top layers, norm
    and head trained): the source's LoRA below the top (`warm_top_layers_adapter_config`), the rest in full."""
    import torch
    from peft import PeftConfig, get_peft_model
    from peft.utils import ModulesToSaveWrapper, load_peft_weights

    source_config = PeftConfig.from_pretrained(source)
    config = warm_top_layers_adapter_config(source_config, num_layers, top)
    fresh, _ = build_value_backbone(base_dir, dtype="float32", seed=seed)
    adapter = get_peft_model(fresh, config)
    lower = set(config.layers_to_transform)

    def layer_of(key: str) -> int | None:
        return int(key.split("layers.")[1].split(".")[0]) if "layers." in key else None

    lora = {k.removesuffix(".weight") + ".default.weight": v for k, v in load_peft_weights(source).items()
            if "lora_" in k and layer_of(k) in lower}
    if lora:  # else the inert rank-1 target (`warm_top_layers_adapter_config`)
        params = {n: p for n, p in adapter.named_parameters() if "lora_" in n}
        if set(lora) != set(params):
            raise ValueError(f"init_from: {source}'s LoRA below the top layers does not match the adapter's"
                             f" ({len(lora)} vs {len(params)} tensors)")
        with torch.no_grad():
            for key, value in lora.items():
                params[key].copy_(value)
    wrappers = {n: m for n, m in adapter.base_model.model.named_modules() if isinstance(m, ModulesToSaveWrapper)}
    if missing := {m for m in config.modules_to_save if m != "classifier"} - set(wrappers):
        raise ValueError(f"init_from: the adapter does not save {sorted(missing)}")
    for name, wrapper in wrappers.items():
        wrapper.modules_to_save["default"].load_state_dict(trained.get_submodule(name).state_dict())  # strict: every tensor
    return adapter


def _train_top(cfg: ValueTrainConfig, top: int, base_dir: Path, base_name: str, policy: ResolvedWeights, problems: dict[str, Problem],
               train_rows: list[dict[str, Any]], held_rows: list[dict[str, Any]], probe: list[dict[str, Any]], device: str) -> tuple[Any, ...]:
    """The ``top_layers`` recipe (`training.value_top_layers`): cache the frozen layers' states of
    every row in the serving dtype, fit the top layers + norm + head, and wrap the result as a value
    adapter. Predictions come from the cache; a sample is re-scored through the serving path and
    the largest difference reported (``serving_max_abs_diff``). With ``init_from`` every module
    comes from that checkpoint (`merged_value_model`) and the result keeps its LoRA below the top
    (`warm_adapter`)."""
    import gc

    from peft import get_peft_model

    from training.value_top_layers import (
        FeatureCache,
        TopLayers,
        check_backbone,
        predict_cached,
        train_top_layers,
    )

    dtype = cfg.value.resolved_dtype()
    t_cache = time.monotonic()
    tag = f"-from-{warm_source_tag(cfg, base_name, policy)}" if cfg.init_from else ""

    def load(dtype: str) -> tuple[Any, Any]:  # the checkpoint's model, or the base with a fresh head
        if cfg.init_from:
            return merged_value_model(base_dir, cfg.init_from, dtype=dtype, seed=cfg.seed)
        return build_value_backbone(base_dir, dtype=dtype, seed=cfg.seed)

    cacher, tokenizer = load(dtype)
    n_layers = check_backbone(cacher, top)
    layer = n_layers - top
    root = Path(cfg.feature_cache_dir) if cfg.feature_cache_dir else Path(cfg.rows_files()[0]).parent / "features"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in base_name + tag)
    cache = FeatureCache(root / f"{name}-layer{layer}-{dtype}-len{cfg.value.max_length}", layer=layer,
                         hidden=int(cacher.config.hidden_size), dtype=dtype)
    data = {key: encode_rows(rows, problems, tokenizer, cfg.value.max_length) for key, rows in
            (("train", train_rows), ("held", held_rows), ("probe", probe))}
    pack = cfg.value.resolved_pack_tokens(device)  # prefix trees where value scoring packs them (the CPU), else padded batches
    computed = cache.build(cacher.to(device), [d["input_ids"] for part in data.values() for d in part], pack=pack)
    cache_s = time.monotonic() - t_cache
    logger.info("feature cache %s: %d rows computed now (%.0f s), %d cached in all", cache.dir, computed, cache_s, len(cache.index))
    del cacher
    gc.collect()
    backbone, tokenizer = load("float32")
    backbone.to(device)
    for p in backbone.parameters():
        p.requires_grad_(False)
    model = TopLayers(backbone, top)
    t_train = time.monotonic()
    packed = pack > 0  # a problem's rows as one prefix tree in training too, where scoring packs them (the CPU)
    result = train_top_layers(cfg, model, cache, train_rows, data["train"], device, packed=packed)
    train_s = time.monotonic() - t_train
    held_preds = predict_cached(model, cache, data["held"], device, batch_size=cfg.eval_batch_size, packed=packed)
    train_preds = predict_cached(model, cache, data["probe"], device, batch_size=cfg.eval_batch_size, packed=packed)
    if cfg.init_from:
        adapter = warm_adapter(base_dir, cfg.init_from, backbone, n_layers, top, cfg.seed).to(device)
    else:
        adapter = get_peft_model(backbone, top_layers_adapter_config(n_layers, top))  # copies the trained modules
    check_rows = held_rows[:32] or probe[:32]
    served = _predict(adapter, tokenizer, problems, check_rows, cfg, device)
    cached = (held_preds if held_rows else train_preds)[: len(check_rows)]
    extra = {"feature_cache": {"dir": str(cache.dir), "layer": layer, "dtype": dtype, "rows": len(cache.index), "tokens": cache.tokens,
                               "computed_now": computed, "build_s": cache_s, "pack_tokens": pack},
             "packed_training": packed,
             "epoch_losses": result.epoch_losses,
             "serving_max_abs_diff": max((abs(a - b) for a, b in zip(cached, served, strict=True)), default=0.0)}
    return adapter, tokenizer, result, train_s, held_preds, train_preds, extra


def _metrics(cfg: ValueTrainConfig, held_rows: list[dict[str, Any]], held_preds: list[float], train_rows: list[dict[str, Any]],
             probe: list[dict[str, Any]], train_preds: list[float]) -> dict[str, Any]:
    train_mean = sum(r["target"] for r in train_rows) / len(train_rows)
    held_targets = [r["target"] for r in held_rows]
    return {
        "held_out": regression_metrics(held_preds, held_targets, train_mean=train_mean),
        "held_out_by_kind": {
            kind: regression_metrics(
                [p for p, r in zip(held_preds, held_rows, strict=True) if r["kind"] == kind],
                [r["target"] for r in held_rows if r["kind"] == kind],
                train_mean=train_mean,
            )
            for kind in cfg.kinds
        },
        "held_out_pair_accuracy_by_depth": pair_accuracy_by_depth(held_rows, held_preds),
        "held_out_pair_accuracy_by_failing_reward": pair_accuracy_by_failing_reward(held_rows, held_preds),
        "held_out_top1_choice": top1_choice(held_rows, held_preds),
        "train_sample": regression_metrics(train_preds, [r["target"] for r in probe], train_mean=train_mean),
        "calibration": calibration_bins(held_preds, held_targets),
        "train_rows": len(train_rows),
        "held_out_rows": len(held_rows),
        "train_problems": len({r["problem_id"] for r in train_rows}),
        "held_out_problems": sorted({r["problem_id"] for r in held_rows}),
    }


def _save(cfg: ValueTrainConfig, model: Any, tokenizer: Any, final: Path, *, base: str, policy: ResolvedWeights,
          metrics: dict[str, Any]) -> None:
    """``final/`` with its manifest: the value model's base, and the policy it was trained for."""
    h = metrics["held_out"]
    manifest_metrics = {
        "held_out_mse": h.get("mse"), "held_out_accuracy_at_0.05": h.get("accuracy_at_0.05"),
        "held_out_constant_mse": h.get("constant_mse"), "held_out_pearson_r": h.get("pearson_r"),
        "held_out_rows": metrics["held_out_rows"], "train_rows": metrics["train_rows"],
    }
    config = {**cfg.model_dump(mode="json"), "policy_version": policy.version, "policy_base": policy.base_model}
    save_value_checkpoint(model, tokenizer, final, base=base, policy=policy.base_model, parent=cfg.init_from,
                          job="restrl train value", config=config, metrics=manifest_metrics)


def _write_predictions(out: Path, held_rows: Sequence[dict[str, Any]], held_preds: Sequence[float]) -> None:
    with (out / "predictions.jsonl").open("w") as fh:
        for r, p in zip(held_rows, held_preds, strict=True):
            fh.write(json.dumps({**r, "prediction": p}, ensure_ascii=False) + "\n")


def _evaluate_checkpoint(cfg: ValueTrainConfig, checkpoint: str, problems: dict[str, Problem], train_rows: list[dict[str, Any]],
                         held_rows: list[dict[str, Any]], probe: list[dict[str, Any]], policy: ResolvedWeights, device: str,
                         out: Path, t0: float) -> dict[str, Any]:
    """``evaluate_checkpoint``: the checkpoint as serving loads it (`HFValueModel.load`, the
    configured serving dtype) scores the held-out rows and the training probe; ``metrics.json``
    and ``predictions.jsonl`` as a trained run writes them. A checkpoint trained for another
    policy than the one the rows come from is refused."""
    # no policy engine shares this process's CPUs: auto threads (0) take them all, not serving's half
    threads = cfg.value.threads or cpu_threads(exclusive=True)
    vcfg = cfg.value.model_copy(update={"model": checkpoint, "device": device, "batch_size": cfg.eval_batch_size, "threads": threads})
    model = HFValueModel.load(vcfg)
    if not model.trained:
        raise ValueError(f"evaluate_checkpoint: {checkpoint} is not a trained value model")
    match = value_match(policy.base_model, model, any_policy=vcfg.any_policy)  # the rule serving applies
    if not match.allowed:
        raise ValueError(f"evaluate_checkpoint: {match.message}")
    logger.info("value evaluation of %s (%s) on %d held-out rows", checkpoint, model.version, len(held_rows))
    held_preds = model.score_pairs_sync([(problems[r["problem_id"]], r["state"]) for r in held_rows])
    train_preds = model.score_pairs_sync([(problems[r["problem_id"]], r["state"]) for r in probe])
    metrics = _metrics(cfg, held_rows, held_preds, train_rows, probe, train_preds)
    metrics.update(evaluated_checkpoint=checkpoint, value_version=model.version, value_dtype=vcfg.resolved_dtype(), device=device,
                   policy_version=policy.version, policy_base=policy.base_model, steps=0, train_s=0.0,
                   wall_s=time.monotonic() - t0)
    _write_predictions(out, held_rows, held_preds)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.info("value evaluation done: held-out %s", metrics["held_out"])
    return {"checkpoint": checkpoint, **{k: metrics[k] for k in ("held_out", "train_sample", "steps", "value_version", "policy_base")}}


def run_value_training(cfg: ValueTrainConfig) -> dict[str, Any]:
    """Train, evaluate on the held-out problems, save ``final/`` and verify it loads (see the module doc)."""
    import torch

    t0 = time.monotonic()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.value.device)
    policy = resolve_weights(trained_policy(cfg))
    base_dir, base_name = value_base(cfg, policy)
    problems = load_problems(*cfg.problems_files())
    train_rows, held_rows = _split_rows(cfg, problems)
    logger.info("value model on %s for the policy %s, on %s", base_name, policy.version, device)
    torch.manual_seed(cfg.seed)
    probe = random.Random(cfg.seed).sample(train_rows, min(len(train_rows), max(64, len(held_rows))))
    if cfg.evaluate_checkpoint:
        return _evaluate_checkpoint(cfg, cfg.evaluate_checkpoint, problems, train_rows, held_rows, probe, policy, device, out, t0)
    extra: dict[str, Any] = {}
    if cfg.top_layers is not None:
        model, tokenizer, result, train_s, held_preds, train_preds, extra = _train_top(
            cfg, cfg.top_layers, base_dir, base_name, policy, problems, train_rows, held_rows, probe, device)
    else:
        model, tokenizer = _value_model(cfg, base_dir)
        train_data = encode_rows(train_rows, problems, tokenizer, cfg.value.max_length)
        model, result, train_s = _train(cfg, model, tokenizer, train_rows, train_data, device, out)
        held_preds = _predict(model, tokenizer, problems, held_rows, cfg, device)
        train_preds = _predict(model, tokenizer, problems, probe, cfg, device)
    metrics = _metrics(cfg, held_rows, held_preds, train_rows, probe, train_preds)
    metrics.update(train_loss=float(result.training_loss), steps=int(result.global_step), train_s=train_s, device=device,
                   value_base=base_name, policy_version=policy.version, policy_base=policy.base_model, **extra)
    _write_predictions(out, held_rows, held_preds)
    final = out / "final"
    _save(cfg, model, tokenizer, final, base=base_name, policy=policy, metrics=metrics)
    # The saved checkpoint must score like the trained model through the loader serving uses.
    reloaded = HFValueModel.load(ValueConfig(model=str(final), batch_size=cfg.eval_batch_size, max_length=cfg.value.max_length,
                                             device=device, dtype="float32"))
    check = held_rows[:8] or probe[:8]
    again = reloaded.score_pairs_sync([(problems[r["problem_id"]], r["state"]) for r in check])
    first = held_preds[: len(check)] if held_rows else train_preds[: len(check)]
    metrics["reload_max_abs_diff"] = max((abs(a - b) for a, b in zip(first, again, strict=True)), default=0.0)
    metrics["value_version"] = reloaded.version
    metrics["wall_s"] = time.monotonic() - t0
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    h = metrics["held_out"]
    calibration_plot(
        held_preds, [r["target"] for r in held_rows], out / "calibration.png",
        title=f"value model, held-out problems ({len(held_rows)} rows): MSE {h.get('mse', float('nan')):.3f},"
        f" acc@0.05 {h.get('accuracy_at_0.05', float('nan')):.2f}",
    )
    logger.info("value training done: held-out %s; checkpoint %s", h, final)
    return {"checkpoint": str(final), **{k: metrics[k] for k in ("held_out", "train_sample", "steps", "train_s", "reload_max_abs_diff",
                                                                   "value_version", "value_base", "policy_base")}}
