"""`HFValueModel`: the value model on transformers (`AutoModelForSequenceClassification`, one label).

In: a `ValueConfig` naming a value checkpoint (a full sequence-classification folder, or a PEFT
LoRA adapter whose saved modules include the ``score`` head), or nothing: then the project's
shipped adapter in ``models/default/value/`` when present, else an *untrained* head on the default
base, initialised from ``ValueConfig.seed`` (its version says ``untrained``). Out: `score(problem,
states)` -> one float in [0, 1] per state: the raw regression output on the last non-pad token,
clamped.

The input text is `models.prompting.value_input(problem, state)`; `encode_value_inputs` tokenizes it
and, when it is longer than ``max_length``, cuts the *state* from the left (its end, where the
search acts, is kept) and keeps the problem (cut from the right only if the problem alone
overflows half the budget). Training uses the same function, so both see identical tokens.
Batches are right-padded, sorted by length, run in a worker thread under a lock.
`save_value_checkpoint` writes weights + `restrl.json` for the training job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.base import CheckpointError
from models.checkpoints import Manifest, inspect_directory, verify_checkpoint, write_manifest
from models.config import ValueConfig
from models.default import DEFAULT_MODEL_BASE, DEFAULT_MODEL_NAME, SHIPPED_VALUE_DIR, prepare_default_model
from models.prompting import value_input
from tasks import Problem

logger = logging.getLogger(__name__)

HEAD_INIT_STD = 0.02


def encode_value_inputs(tokenizer: Any, problem: Problem, states: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of `value_input(problem, state)` for each state, at most ``max_length`` each."""
    head_ids = tokenizer(value_input(problem, ""), add_special_tokens=False)["input_ids"]
    head_keep = min(len(head_ids), max_length // 2)
    encoded = []
    for state in states:
        ids = tokenizer(value_input(problem, state), add_special_tokens=False)["input_ids"]
        if len(ids) > max_length:
            tail = max_length - head_keep
            ids = head_ids[:head_keep] + ids[len(ids) - tail :]
        encoded.append(ids)
    return encoded


def _resolve_base(name: str | None) -> Path:
    if name is None or name in (DEFAULT_MODEL_BASE, DEFAULT_MODEL_NAME) or Path(name).name == DEFAULT_MODEL_NAME:
        return prepare_default_model()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"value base model '{name}' is not a folder here: set ValueConfig.base to its folder")
    inspect_directory(path, kind="policy")
    return path.resolve()


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def build_value_backbone(base_dir: str | Path, *, dtype: str = "float32", seed: int = 0) -> tuple[Any, Any]:
    """A sequence-classification model (one label) on ``base_dir`` with a freshly initialised,
    seeded ``score`` head, and its tokenizer (pad token set). The training job starts here."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    from transformers.utils import logging as hf_logging

    # transformers reports the score head as MISSING ("consider training..."): it is, by design -
    # it is initialised just below, and a checkpoint's trained head replaces it.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=_torch_dtype(dtype))
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head = model.score.weight
        head.copy_(torch.randn(head.shape, generator=gen, dtype=torch.float32).to(head.dtype) * HEAD_INIT_STD)
    return model, tokenizer


def value_lora_config(*, r: int = 8, alpha: int = 16, dropout: float = 0.0) -> Any:
    """The PEFT LoRA configuration of a value adapter: attention and MLP projections, with the
    ``score`` head saved in full (``modules_to_save``)."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="SEQ_CLS",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
        modules_to_save=["score"],
    )


def save_value_checkpoint(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    base: str,
    parent: str | None = None,
    job: str | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Manifest:
    """Save a value model (a PEFT model -> adapter + head, else the full model and tokenizer) as
    safetensors and write its manifest."""
    from peft import PeftModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_lora = isinstance(model, PeftModel)
    model.save_pretrained(out, safe_serialization=True)
    if not is_lora:
        tokenizer.save_pretrained(out)
    return write_manifest(
        out,
        kind="value",
        format="lora" if is_lora else "full",
        base=base,
        parent=parent,
        job=job,
        config=config,
        metrics=metrics,
    )


class HFValueModel:
    """A `ValueModel` on transformers. Build with `HFValueModel.load(cfg)` or `await load_value_model(cfg)`."""

    engine_name = "hf"

    def __init__(self, *, model: Any, tokenizer: Any, config: ValueConfig, version: str, trained: bool) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.version = version
        self.trained = trained
        self._lock = threading.Lock()
        self._closed = False
        self.startup_s = 0.0

    @classmethod
    def load(cls, cfg: ValueConfig) -> HFValueModel:
        """Resolve, verify and load the value model ``cfg`` names (see the module doc)."""
        t0 = time.perf_counter()
        source = cfg.model
        if source is None and cfg.use_shipped and SHIPPED_VALUE_DIR.joinpath("restrl.json").exists():
            source = str(SHIPPED_VALUE_DIR)
        if source is None:
            base_dir = prepare_default_model()
            base_hash = verify_checkpoint(base_dir, kind="policy", check_hashes=False).digest()[:8]
            model, tokenizer = build_value_backbone(base_dir, dtype=cfg.dtype, seed=cfg.seed)
            version = f"{DEFAULT_MODEL_NAME}@{base_hash}+untrained-head@seed{cfg.seed}"
            trained = False
        else:
            model, tokenizer, version = cls._load_checkpoint(Path(source).expanduser().resolve(), cfg)
            trained = True
        model.to(cfg.device)
        model.eval()
        value = cls(model=model, tokenizer=tokenizer, config=cfg, version=version, trained=trained)
        value.startup_s = time.perf_counter() - t0
        if not trained:
            logger.warning("value model %s is UNTRAINED: its scores carry no information", version)
        logger.info("value model %s ready in %.1f s", version, value.startup_s)
        return value

    @staticmethod
    def _load_checkpoint(path: Path, cfg: ValueConfig) -> tuple[Any, Any, str]:
        manifest, digest = inspect_directory(path, kind="value")
        is_lora = (path / "adapter_config.json").exists()
        if manifest is not None and manifest.format != ("lora" if is_lora else "full"):
            raise CheckpointError(f"{path}/restrl.json: field 'format' is '{manifest.format}' but the folder holds {'an adapter' if is_lora else 'a full model'}")
        name = path.name.lower()
        if not is_lora:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "right"
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=_torch_dtype(cfg.dtype))
            model.config.pad_token_id = tokenizer.pad_token_id
            return model, tokenizer, f"value-{name}@{digest}"
        from peft import PeftModel

        base_name = cfg.base or (manifest.base if manifest is not None else None)
        base_dir = _resolve_base(base_name)
        model, tokenizer = build_value_backbone(base_dir, dtype=cfg.dtype, seed=cfg.seed)
        model = PeftModel.from_pretrained(model, path)
        return model, tokenizer, f"value-{name}@{digest}"

    def _forward(self, encoded: list[list[int]]) -> list[float]:
        import torch

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        scores = [0.0] * len(encoded)
        bs = self.config.batch_size
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
                # Right padding under causal attention: no real token attends to a pad after it,
                # so no attention mask is needed (masked batches ran 2.6-6x slower on an H100)
                # and the head pools the last non-pad token.
                logits = self.model(input_ids=ids.to(device)).logits
                values = logits[:, 0].float().clamp(0.0, 1.0).cpu().tolist()
                for row, i in enumerate(idx):
                    scores[i] = values[row]
        return scores

    def score_sync(self, problem: Problem, states: Sequence[str]) -> list[float]:
        """Blocking `score` (training and benchmarks)."""
        return self._forward(encode_value_inputs(self.tokenizer, problem, states, self.config.max_length))

    def score_pairs_sync(self, pairs: Sequence[tuple[Problem, str]]) -> list[float]:
        """Blocking scoring of states from several problems in one set of batches."""
        encoded = [
            encode_value_inputs(self.tokenizer, problem, [state], self.config.max_length)[0] for problem, state in pairs
        ]
        return self._forward(encoded)

    async def score(self, problem: Problem, states: Sequence[str]) -> list[float]:
        if self._closed:
            raise RuntimeError("value model closed")
        if not states:
            return []
        return await asyncio.to_thread(self.score_sync, problem, states)

    async def score_pairs(self, pairs: Sequence[tuple[Problem, str]]) -> list[float]:
        """Score states of several problems in shared batches (for cross-search batchers)."""
        if self._closed:
            raise RuntimeError("value model closed")
        if not pairs:
            return []
        return await asyncio.to_thread(self.score_pairs_sync, pairs)

    async def close(self) -> None:
        self._closed = True


async def load_value_model(cfg: ValueConfig | None = None) -> HFValueModel:
    """Load the value model ``cfg`` names in a worker thread (see `HFValueModel.load`)."""
    return await asyncio.to_thread(HFValueModel.load, cfg or ValueConfig())
