"""Value training that fits in CPU hours: the top decoder layers, final norm and head fine-tuned in
full on cached hidden states (`restrl train value` with ``top_layers: n``).

LoRA on every layer (the default recipe) pays a forward and a backward pass through the whole
model for every row in every epoch: on two CPU cores, 20,000 rows are a day per setting. Here the
frozen layers below the top ``n`` run once per row, in the dtype serving runs them (`FeatureCache`:
the hidden states entering layer ``L - n`` of every token, memory-mapped, keyed by the row's token
ids so that any later run on the same base, layer and dtype reuses them); every epoch then costs
``n / L`` of a forward and backward. A training study over learning rates, epochs, losses and ``n``
(the issue's "full fine-tune of the head + top layers") reuses one cache per ``n``.

The model trained is the backbone's own modules (`TopLayers` shares them), so the result is saved
and served like every value adapter: `models.value.top_layers_adapter_config` carries the trained
modules as PEFT ``modules_to_save``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# Backbones whose decoder stack takes the hidden states as they leave the layer below (inputs_embeds
# unscaled). Gemma-style models multiply inputs_embeds inside their forward: not supported here.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def feature_key(ids: Sequence[int]) -> str:
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


class _Stop(Exception):
    """Raised by the capture hook: nothing above the cached layer needs to run."""


class FeatureCache:
    """The hidden states entering decoder layer ``layer`` for every token of every cached input, in
    ``directory``: ``features.bin`` (rows appended, float32 or bfloat16 bits as int16) and
    ``index.json`` (key -> first token, tokens). Data is written before the index that points into
    it, so an interrupted build resumes where it stopped."""

    def __init__(self, directory: str | Path, *, layer: int, hidden: int, dtype: str) -> None:
        self.dir = Path(directory)
        self.layer, self.hidden, self.dtype = layer, hidden, dtype
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"layer": layer, "hidden": hidden, "dtype": dtype}
        meta_path = self.dir / "meta.json"
        if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
            raise ValueError(f"{self.dir}: a feature cache of {json.loads(meta_path.read_text())}, not {meta}; use another directory")
        meta_path.write_text(json.dumps(meta))
        index_path = self.dir / "index.json"
        self.index: dict[str, list[int]] = json.loads(index_path.read_text()) if index_path.exists() else {}
        self._np_dtype = np.float32 if dtype == "float32" else np.int16
        self._data: np.memmap | None = None

    @property
    def tokens(self) -> int:
        return max((start + n for start, n in self.index.values()), default=0)

    def build(self, backbone: Any, inputs: Sequence[Sequence[int]], *, pack: int = 0, batch_tokens: int = 4096,
              tree_tokens: int = 8192, desc: str = "features") -> int:
        """Run the frozen layers below ``layer`` over every input not cached yet; returns how many
        were computed. With ``pack`` > 0 (the CPU default of value scoring) inputs that share a
        prefix - one problem's rows share its prompt, and a state's rows its earlier lines - run as
        prefix trees of at most about ``tree_tokens`` distinct tokens (`models.value.run_prefix_tree`
        in passes of ``pack``): every distinct prefix once, nothing padded. With 0, padded batches of
        about ``batch_tokens``, inputs sorted by length (the GPU default). Either way each token's
        states are those of a causal forward over its own input."""
        import torch

        todo: dict[str, Sequence[int]] = {}
        for ids in inputs:
            key = feature_key(ids)
            if key not in self.index:
                todo.setdefault(key, ids)
        if not todo:
            return 0
        captured: list[Any] = []

        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            if not pack:
                raise _Stop  # nothing above the cached layer needs to run (a tree's later passes need every layer's keys)

        handle = backbone.model.layers[self.layer].register_forward_pre_hook(hook, with_kwargs=True)
        end = self.tokens
        bar = tqdm(total=len(todo), desc=desc, unit="row")
        data_path = self.dir / "features.bin"
        data_path.touch()
        try:
            with data_path.open("r+b") as fh, torch.inference_mode():
                fh.seek(end * self.hidden * np.dtype(self._np_dtype).itemsize)
                fh.truncate()  # rows an interrupted build wrote but never indexed
                groups = (_tree_groups(sorted(todo.items(), key=lambda kv: list(kv[1])), tree_tokens) if pack
                          else _padded_groups(sorted(todo.items(), key=lambda kv: len(kv[1])), batch_tokens))
                for group in groups:
                    captured.clear()
                    states = (_tree_states(backbone, group, captured, pack) if pack
                              else _padded_states(backbone, group, captured))
                    for (key, ids), rows in zip(group, states, strict=True):
                        raw = rows.float().numpy() if self.dtype == "float32" else rows.to(torch.bfloat16).view(torch.int16).numpy()
                        fh.write(np.ascontiguousarray(raw).tobytes())
                        self.index[key] = [end, len(ids)]
                        end += len(ids)
                    fh.flush()
                    self._write_index()
                    bar.update(len(group))
        finally:
            handle.remove()
            bar.close()
        self._data = None
        return len(todo)

    def _write_index(self) -> None:
        tmp = self.dir / "index.json.tmp"
        tmp.write_text(json.dumps(self.index))
        tmp.replace(self.dir / "index.json")

    def get(self, ids: Sequence[int]) -> Any:
        """The cached states of one input as a float32 tensor [tokens, hidden]."""
        import torch

        start, n = self.index[feature_key(ids)]
        if self._data is None:
            self._data = np.memmap(self.dir / "features.bin", dtype=self._np_dtype, mode="r")
        raw = torch.from_numpy(np.array(self._data[start * self.hidden : (start + n) * self.hidden])).view(n, self.hidden)
        return raw.float() if self.dtype == "float32" else raw.view(torch.bfloat16).float()


Item = tuple[str, Sequence[int]]  # (feature key, token ids)


def _padded_groups(order: Sequence[Item], batch_tokens: int) -> Iterator[list[Item]]:
    """Length-sorted inputs in batches of about ``batch_tokens`` padded tokens."""
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j - i + 1) * len(order[j][1]) <= max(batch_tokens, len(order[j][1])):
            j += 1
        yield list(order[i:j])
        i = j


def _tree_groups(order: Sequence[Item], tree_tokens: int, *, min_shared: int = 8) -> Iterator[list[Item]]:
    """Lexicographically sorted inputs in runs that share at least ``min_shared`` leading tokens,
    each of at most about ``tree_tokens`` distinct tokens (in sorted order an input adds the tokens
    past its common prefix with the one before)."""
    from models.value import _common_prefix

    group: list[Item] = []
    size = 0
    for item in order:
        common = _common_prefix(group[-1][1], item[1]) if group else 0
        if group and (common < min_shared or size + len(item[1]) - common > tree_tokens):
            yield group
            group, size, common = [], 0, 0
        group.append(item)
        size += len(item[1]) - common
    if group:
        yield group


def _padded_states(backbone: Any, group: list[Item], captured: list[Any]) -> list[Any]:
    import torch

    pad = int(backbone.config.pad_token_id or 0)
    width = max(len(ids) for _, ids in group)
    x = torch.full((len(group), width), pad, dtype=torch.long)
    for r, (_, ids) in enumerate(group):
        x[r, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
    try:
        backbone.model(input_ids=x.to(backbone.device), use_cache=False)
    except _Stop:
        pass
    hidden = captured[0].detach().cpu()
    return [hidden[r, : len(ids)] for r, (_, ids) in enumerate(group)]


def _tree_states(backbone: Any, group: list[Item], captured: list[Any], pack: int) -> list[Any]:
    import torch

    from models.value import prefix_tree, run_prefix_tree, tree_path

    tokens, parents, ends = prefix_tree([ids for _, ids in group])
    for _ in run_prefix_tree(backbone.model, tokens, parents, device=backbone.device, pack=pack):
        pass
    hidden = torch.cat([c[0].detach().cpu() for c in captured], dim=0)  # [nodes, hidden]
    return [hidden[torch.tensor(tree_path(parents, end))] for end in ends]


def check_backbone(backbone: Any, top: int) -> int:
    """The number of decoder layers; raises if ``top`` or the architecture does not fit the recipe."""
    kind = getattr(backbone.config, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"top_layers supports {', '.join(SUPPORTED_MODEL_TYPES)} backbones, not {kind!r} (its decoder may rescale"
            " the hidden states it is given); train it with LoRA (top_layers: null)"
        )
    n = int(backbone.config.num_hidden_layers)
    if not 1 <= top < n:
        raise ValueError(f"top_layers must be between 1 and {n - 1} (the value base has {n} decoder layers), got {top}")
    return n


class TopLayers:
    """Scores from cached hidden states: the backbone's top ``top`` decoder layers, final norm and
    ``score`` head - the backbone's own modules, so training them trains the backbone."""

    def __init__(self, backbone: Any, top: int) -> None:
        import torch
        from transformers import AutoModel

        n = check_backbone(backbone, top)
        cfg = copy.deepcopy(backbone.config)
        cfg.num_hidden_layers = top
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = list(cfg.layer_types)[n - top :]
        cfg.vocab_size, cfg.pad_token_id = 1, None  # the shell's embedding is never used: the states come in as inputs_embeds
        self.shell = AutoModel.from_config(cfg)
        self.shell.layers = torch.nn.ModuleList(list(backbone.model.layers)[n - top :])
        self.shell.norm = backbone.model.norm
        self.shell.to(backbone.device, dtype=backbone.dtype)
        self.score = backbone.score
        self.modules = [*self.shell.layers, self.shell.norm, self.score]

    def parameters(self) -> list[Any]:
        return [p for m in self.modules for p in m.parameters()]

    def train(self, mode: bool = True) -> None:
        for m in self.modules:
            m.train(mode)

    def __call__(self, states: Any, lengths: Any) -> Any:
        """``states`` [batch, tokens, hidden] right-padded; the score at each row's last token."""
        import torch

        hidden = self.shell(inputs_embeds=states, use_cache=False).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
        return self.score(last).squeeze(-1).float()

    def packed(self, states: Any, mask: Any, positions: Any, at: Any) -> Any:
        """Scores of rows packed as one prefix tree per problem (`_packed`): ``states`` [trees,
        nodes, hidden], ``mask`` [trees, 1, nodes, nodes] (a node sees its ancestors and itself),
        ``positions`` the nodes' depths, ``at`` [rows, 2] the (tree, node) each row ends at."""
        hidden = self.shell(inputs_embeds=states, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
        return self.score(hidden[at[:, 0], at[:, 1]]).squeeze(-1).float()


@dataclass
class TopResult:
    training_loss: float
    global_step: int
    epoch_losses: list[float]


def _batches(rows: Sequence[dict[str, Any]], *, batch_size: int, problems_per_batch: int, seed: int) -> list[list[int]]:
    from training.value_train import problem_batches

    if problems_per_batch:
        return problem_batches(rows, batch_size=batch_size, problems_per_batch=problems_per_batch, seed=seed)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _stack(cache: FeatureCache, data: Sequence[dict[str, Any]], idx: Sequence[int], device: Any) -> tuple[Any, Any]:
    import torch

    feats = [cache.get(data[i]["input_ids"]) for i in idx]
    lengths = torch.tensor([f.shape[0] for f in feats])
    x = torch.zeros((len(feats), int(lengths.max()), cache.hidden))
    for r, f in enumerate(feats):
        x[r, : f.shape[0]] = f
    return x.to(device), lengths.to(device)


def _packed(cache: FeatureCache, data: Sequence[dict[str, Any]], idx: Sequence[int], device: Any) -> tuple[Any, Any, Any, Any]:
    """The rows ``idx`` as one prefix tree per problem (``group``), right-padded to the largest tree:
    a token shared by several rows of a problem (its prompt, the lines before a state) is one node,
    computed once, whose gradient collects every row's - the same sums as the padded batch, fewer
    positions. Padding nodes see only themselves."""
    import torch

    from models.value import prefix_tree, tree_depths, tree_path

    by_problem: dict[int, list[int]] = {}
    for r, i in enumerate(idx):
        by_problem.setdefault(int(data[i]["group"]), []).append(r)
    trees = []
    for members in by_problem.values():
        tokens, parents, ends = prefix_tree([data[idx[r]]["input_ids"] for r in members])
        trees.append((members, parents, ends))
    width = max(len(parents) for _, parents, _ in trees)
    x = torch.zeros((len(trees), width, cache.hidden))
    mask = torch.zeros((len(trees), width, width), dtype=torch.bool)
    positions = torch.zeros((len(trees), width), dtype=torch.long)
    at = torch.zeros((len(idx), 2), dtype=torch.long)
    for b, (members, parents, ends) in enumerate(trees):
        m = mask[b]
        for node, parent in enumerate(parents):
            if parent >= 0:
                m[node] = m[parent]
            m[node, node] = True
        for node in range(len(parents), width):
            m[node, node] = True
        positions[b, : len(parents)] = torch.tensor(tree_depths(parents))
        for r, end in zip(members, ends, strict=True):
            x[b, torch.tensor(tree_path(parents, end))] = cache.get(data[idx[r]]["input_ids"])
            at[r] = torch.tensor([b, end])
    return x.to(device), mask[:, None].to(device), positions.to(device), at.to(device)


def _scores(model: TopLayers, cache: FeatureCache, data: Sequence[dict[str, Any]], idx: Sequence[int], device: Any, *, packed: bool) -> Any:
    if packed:
        return model.packed(*_packed(cache, data, idx, device))
    return model(*_stack(cache, data, idx, device))


def train_top_layers(cfg: Any, model: TopLayers, cache: FeatureCache, rows: Sequence[dict[str, Any]], data: Sequence[dict[str, Any]],
                     device: Any, *, packed: bool = False) -> TopResult:
    """AdamW with a cosine schedule after a linear warm-up, gradients clipped at 1; MSE plus
    ``rank_weight`` x the within-problem ranking term; batches as the LoRA recipe draws them. With
    ``bf16`` (`models.config.use_bf16`) the forward runs under bfloat16 autocast (the weights stay
    float32, as the LoRA recipe's Trainer does): 1.8x on a CPU with AVX512-BF16 (bench.train_precision)."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from models.config import use_bf16
    from training.value_train import ranking_loss

    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16(cfg.bf16, str(device)))

    params = model.parameters()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    per_epoch = len(_batches(rows, batch_size=cfg.batch_size, problems_per_batch=cfg.problems_per_batch, seed=cfg.seed))
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * per_epoch))
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    model.train(True)
    step, losses, epoch_losses = 0, [], []
    bar = tqdm(total=total, desc="top layers", unit="step")
    epoch = 0
    while step < total:
        batches = _batches(rows, batch_size=cfg.batch_size, problems_per_batch=cfg.problems_per_batch, seed=cfg.seed + epoch)
        seen = []
        for idx in batches:
            if step >= total:
                break
            labels = torch.tensor([data[i]["labels"] for i in idx], dtype=torch.float32, device=device)
            with autocast:
                scores = _scores(model, cache, data, idx, device, packed=packed)  # float32 out (TopLayers)
            loss = torch.nn.functional.mse_loss(scores, labels)
            if cfg.rank_weight:
                groups = torch.tensor([data[i]["group"] for i in idx], device=device)
                loss = loss + cfg.rank_weight * ranking_loss(scores, labels, groups, temperature=cfg.rank_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            seen.append(losses[-1])
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        epoch_losses.append(sum(seen) / max(1, len(seen)))
        epoch += 1
    bar.close()
    model.train(False)
    return TopResult(training_loss=sum(losses) / max(1, len(losses)), global_step=step, epoch_losses=epoch_losses)


def predict_cached(model: TopLayers, cache: FeatureCache, data: Sequence[dict[str, Any]], device: Any, *, batch_size: int = 32,
                   packed: bool = False) -> list[float]:
    """Clamped scores of ``data`` from the cache (the same computation serving runs above the
    cached layer)."""
    import torch

    out: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(data), batch_size):
            idx = list(range(i, min(len(data), i + batch_size)))
            out.extend(min(1.0, max(0.0, float(s))) for s in _scores(model, cache, data, idx, device, packed=packed))
    return out
