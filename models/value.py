"""`HFValueModel`: the value model on transformers (`AutoModelForSequenceClassification`, one label).

In: a `ValueConfig` naming a value checkpoint (a full sequence-classification folder, or a PEFT
LoRA adapter whose saved modules include the ``score`` head), or nothing: then the project's
shipped adapter in ``models/default/value/`` when present, else an *untrained* head on the default
base, initialised from ``ValueConfig.seed`` (its version says ``untrained``). Out: `score(problem,
states)` -> one float in [0, 1] per state: the raw regression output on the state's last token,
clamped.

The input text is `models.prompting.value_input(problem, state)`; `encode_value_inputs` tokenizes it
and, when it is longer than ``max_length``, cuts the *state* from the left (its end, where the
search acts, is kept) and keeps the problem (cut from the right only if the problem alone
overflows half the budget). Training uses the same function, so both see identical tokens.
Scoring runs in a worker thread under a lock. The states of one problem share its head (problem
text and starter code): the decoder's keys and values over that head are computed once and kept in
an LRU cache (``ValueConfig.prefix_cache_mb``), so each state costs only its own tokens (the
problem text is usually most of a value input); `prepare` fills the cache when a search starts,
while the policy samples its first expansion. On a CPU (``ValueConfig.pack_tokens``) a batch's
states of one problem then run as one prefix tree (`_run_tree`): every token two states share (an
expansion's state, a first-line child inside its own rollout, a duplicate) is one node computed
once, nothing is padded, and a block mask lets each node see the head and its ancestors. On a GPU
they run in right-padded batches sorted by length, where a state that is a token prefix of
another is read off the longer one's pass and an expansion's shared state runs once
(`_share_plan`). All of it is exact under causal attention. A LoRA adapter is merged into the
weights at load; on a CPU each scoring call runs on ``ValueConfig.threads`` torch threads (default:
half the cores, the policy engine takes the rest; all of them where value batches pause the
engine, `cpu_threads`).
`save_value_checkpoint` writes weights + `restrl.json` for the training job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from models.base import CheckpointError
from models.checkpoints import (
    Manifest,
    inspect_directory,
    model_folder,
    read_manifest,
    verify_checkpoint,
    write_manifest,
)
from models.config import ValueConfig
from models.default import (
    DEFAULT_MODEL_NAME,
    SHIPPED_VALUE_DIR,
    canonical_base,
    is_default_base,
    prepare_default_model,
)
from models.prompting import value_input
from tasks import Problem

logger = logging.getLogger(__name__)

HEAD_INIT_STD = 0.02


def encode_value_inputs(
    tokenizer: Any, problem: Problem, states: Sequence[str], max_length: int, head_ids: list[int] | None = None
) -> list[list[int]]:
    """Token ids of `value_input(problem, state)` for each state, at most ``max_length`` each
    (``head_ids``: the tokens of `value_input(problem, "")`, when the caller has them)."""
    if head_ids is None:
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


def cpu_threads(requested: int = 0, *, exclusive: bool = False) -> int:
    """Torch threads for a CPU value model: ``requested``, or (0) all the CPUs this process may use
    when its batches have them to themselves (``exclusive``: they pause the policy engine,
    `search.batcher.pauses_engine`), else half of them. With both of 2 cores busy (`python -m
    bench.value --contend`), shared scoring took 14.8 s on two threads and 11.3 s on one: two
    processes' OpenMP threads wait on each other."""
    if requested > 0:
        return requested
    import os

    cpus = len(os.sched_getaffinity(0))
    return cpus if exclusive else max(1, cpus // 2)


def resolve_value_base(name: str | None) -> Path:
    """The folder of a value model's base (None or the default's names: the embedded default; a
    folder or a hub id otherwise), verified."""
    if is_default_base(name) or (name is not None and Path(name).name == DEFAULT_MODEL_NAME):
        return prepare_default_model()
    assert name is not None
    try:
        path = model_folder(name)
    except CheckpointError as exc:
        raise CheckpointError(f"value base model: {exc} (set ValueConfig.base to its folder)") from None
    inspect_directory(path, kind="policy")
    return path


def shipped_value_dir(cfg: ValueConfig) -> Path | None:
    """The shipped value adapter ``cfg`` means with ``model`` None (None: an untrained head)."""
    if cfg.model is None and cfg.use_shipped and SHIPPED_VALUE_DIR.joinpath("restrl.json").exists():
        return SHIPPED_VALUE_DIR
    return None


def trained_policy_base(manifest: Manifest) -> str:
    """The base model of the policy whose rollouts trained a value checkpoint (older manifests name
    none: every value model so far was trained on its own base's rollouts)."""
    return canonical_base(manifest.policy or manifest.base)


def value_policy_base(cfg: ValueConfig) -> str | None:
    """`trained_policy_base` of the checkpoint ``cfg`` names, read from its manifest without
    loading or hashing anything; None for an untrained head or a checkpoint without a manifest."""
    source = Path(cfg.model).expanduser() if cfg.model is not None else shipped_value_dir(cfg)
    if source is None or not (source / "restrl.json").exists():
        return None
    return trained_policy_base(read_manifest(source))


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


def value_lora_config(*, r: int = 8, alpha: int = 16, dropout: float = 0.0, layers: list[int] | None = None) -> Any:
    """The PEFT LoRA configuration of a value adapter: attention and MLP projections (of every
    decoder layer, or of ``layers`` only), with the ``score`` head saved in full (``modules_to_save``)."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="SEQ_CLS",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
        layers_to_transform=layers,
        modules_to_save=["score"],
    )


def top_layers_adapter_config(num_layers: int, top: int) -> Any:
    """The PEFT configuration that carries a value model whose top ``top`` decoder layers, final
    norm and ``score`` head were fine-tuned in full (`restrl train value` with ``top_layers``): those
    modules travel as ``modules_to_save`` (the format and loader of every value adapter). PEFT needs
    one LoRA target: a rank-1 LoRA on the ``q_proj`` of the layer below them, initialised to zero and
    never trained, so it changes nothing."""
    from peft import LoraConfig

    if not 1 <= top < num_layers:
        raise ValueError(f"top_layers must be between 1 and {num_layers - 1} (the model has {num_layers} decoder layers), got {top}")
    return LoraConfig(
        task_type="SEQ_CLS",
        r=1,
        lora_alpha=1,
        target_modules=["q_proj"],
        layers_to_transform=[num_layers - top - 1],
        modules_to_save=["score", "model.norm", *(f"model.layers.{i}" for i in range(num_layers - top, num_layers))],
    )


def warm_top_layers_adapter_config(source: Any, num_layers: int, top: int) -> Any:
    """The PEFT configuration of a value model whose top ``top`` layers, final norm and head were
    fine-tuned in full starting from the value adapter ``source`` (its `LoraConfig`; ``top_layers``
    with ``init_from``): the layers below keep the source's LoRA and any module it saved in full,
    the rest travel in full as in `top_layers_adapter_config`."""
    from peft import LoraConfig

    if not 1 <= top < num_layers:
        raise ValueError(f"top_layers must be between 1 and {num_layers - 1} (the model has {num_layers} decoder layers), got {top}")
    if source.rank_pattern or source.alpha_pattern or source.use_dora:
        raise ValueError("init_from with top_layers: the source adapter uses rank/alpha patterns or DoRA, not supported")
    lower = range(num_layers - top)
    src_layers = source.layers_to_transform
    layers = list(lower) if src_layers is None else sorted(({src_layers} if isinstance(src_layers, int) else set(src_layers)) & set(lower))
    top_names = [f"model.layers.{i}" for i in range(num_layers - top, num_layers)]
    kept = [m for m in (source.modules_to_save or []) if m not in ("score", "classifier", "model.norm")
            and not any(m == t or m.startswith(t + ".") for t in top_names)]  # modules the source saved in full below the top
    saved = list(dict.fromkeys(["score", "model.norm", *kept, *top_names]))
    if not layers:  # the source's LoRA lies in the top layers only: the inert rank-1 target of `top_layers_adapter_config`
        base = top_layers_adapter_config(num_layers, top)
        if f"model.layers.{base.layers_to_transform[0]}" in saved:
            raise ValueError("init_from with top_layers: no layer below the top is free for the adapter's LoRA target")
        return LoraConfig(task_type="SEQ_CLS", r=1, lora_alpha=1, target_modules=["q_proj"], layers_to_transform=base.layers_to_transform,
                          modules_to_save=saved)
    return LoraConfig(task_type="SEQ_CLS", r=source.r, lora_alpha=source.lora_alpha, lora_dropout=source.lora_dropout,
                      target_modules=sorted(source.target_modules), layers_to_transform=layers, modules_to_save=saved)


def save_value_checkpoint(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    base: str,
    policy: str | None = None,
    parent: str | None = None,
    job: str | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Manifest:
    """Save a value model (a PEFT model -> adapter + head, else the full model and tokenizer) as
    safetensors and write its manifest (``policy``: the base model of the policy whose rollouts
    trained it)."""
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
        policy=policy,
        parent=parent,
        job=job,
        config=config,
        metrics=metrics,
    )


def store_value_weights(folder: str | Path, dtype: str = "bfloat16") -> Manifest:
    """Rewrite a value checkpoint's full weights in ``dtype`` and re-hash its manifest
    (``config.stored_dtype`` records it). LoRA matrices stay as they are: they are small, and a
    load merges them in float32. In bfloat16 the full layers of a top-layers adapter take half their
    float32 bytes; a model loaded in bfloat16 (the CPU serving dtype) casts them to that on load
    anyway, so its scores there do not change."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    root = Path(folder)
    manifest = verify_checkpoint(root, kind="value")
    target = _torch_dtype(dtype)
    for path in sorted(root.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is no mapping
        cast = {k: t.to(target) if torch.is_floating_point(t) and "lora_" not in k else t for k, t in tensors.items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(cast, str(tmp), metadata=metadata)
        tmp.replace(path)
    return write_manifest(root, kind="value", format=manifest.format, base=manifest.base, policy=manifest.policy,
                          parent=manifest.parent, job=manifest.job, config={**manifest.config, "stored_dtype": dtype},
                          metrics=manifest.metrics)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _kv_bytes(kv: list[tuple[Any, Any]]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


MIN_SHARED_STATE_TOKENS = 8  # a cluster's shared state tokens worth one extra (batch-1) pass


def _share_plan(
    encoded: list[list[int]], members: list[int], computed: int
) -> list[tuple[int, list[tuple[int, list[tuple[int, int]]]]]]:
    """How to score ``members`` (items whose first ``computed`` tokens are already cached):
    ``[(length, rows)]`` - per cluster, the absolute length of the prefix its rows share, and its
    rows ``(carrier item, [(item, position of its last token), ...])``. An item that is a token
    prefix of another is read off the longer one's row; rows that share at least
    ``MIN_SHARED_STATE_TOKENS`` tokens past ``computed`` form one cluster. Every read position
    lies past the cluster's shared prefix, so it is computed in the row pass."""
    order = sorted(members, key=lambda i: encoded[i])  # a prefix sorts right before its extensions
    carrier: dict[int, int] = {}
    for j in range(len(order) - 1, -1, -1):
        i = order[j]
        after = order[j + 1] if j + 1 < len(order) else None
        longer = after is not None and len(encoded[i]) <= len(encoded[after]) and encoded[after][: len(encoded[i])] == encoded[i]
        carrier[i] = carrier[after] if longer and after is not None else i
    reads: dict[int, list[tuple[int, int]]] = {}
    for i in order:
        reads.setdefault(carrier[i], []).append((i, len(encoded[i]) - 1))
    carriers = [i for i in order if carrier[i] == i]
    plan: list[tuple[int, list[tuple[int, list[tuple[int, int]]]]]] = []
    cluster, shared = [carriers[0]], None
    for a, b in zip(carriers, carriers[1:], strict=False):
        common = _common_prefix(encoded[a], encoded[b])
        if common >= computed + MIN_SHARED_STATE_TOKENS:
            cluster.append(b)
            shared = common if shared is None else min(shared, common)
            continue
        plan.append(_cluster(cluster, shared, computed, reads))
        cluster, shared = [b], None
    plan.append(_cluster(cluster, shared, computed, reads))
    return plan


def _cluster(
    carriers: list[int], shared: int | None, computed: int, reads: dict[int, list[tuple[int, int]]]
) -> tuple[int, list[tuple[int, list[tuple[int, int]]]]]:
    length = computed
    if shared is not None:
        length = max(computed, min(shared, *(pos for c in carriers for _, pos in reads[c])))
    return length, [(c, reads[c]) for c in carriers]


def prefix_tree(seqs: Sequence[Sequence[int]]) -> tuple[list[int], list[int], list[int]]:
    """The token tree of ``seqs``: one node per distinct prefix, in insertion order (a parent precedes
    its children). Returns (each node's token, its parent node or -1 at the root, the node each
    sequence ends at)."""
    nodes: dict[tuple[int, int], int] = {}
    tokens: list[int] = []
    parents: list[int] = []
    ends: list[int] = []
    for seq in seqs:
        node = -1
        for t in seq:
            nxt = nodes.get((node, t))
            if nxt is None:
                nxt = nodes[(node, t)] = len(tokens)
                tokens.append(t)
                parents.append(node)
            node = nxt
        ends.append(node)
    return tokens, parents, ends


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Each `prefix_tree` node's depth (0 at a root child; parents precede children)."""
    depth = [0] * len(parents)
    for i, parent in enumerate(parents):
        if parent >= 0:
            depth[i] = depth[parent] + 1
    return depth


def tree_path(parents: Sequence[int], node: int) -> list[int]:
    """The nodes from the root down to ``node``: the positions of the sequence that ends there."""
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def run_prefix_tree(
    decoder: Any, tokens: list[int], parents: list[int], *, kv: Any = None, skip: int = 0, device: Any = "cpu", pack: int = 384
) -> Iterator[tuple[int, int, Any]]:
    """Run ``decoder`` (``LlamaModel`` & co.) over a `prefix_tree` hanging off a prefix of ``skip``
    tokens whose keys and values ``kv`` holds (None with ``skip`` 0), in passes of ``pack`` nodes in
    node order; yields ``(a, b, output)`` per pass, the output's states row 0 holding nodes a..b-1.
    A node attends to the cached prefix and to its ancestors - those of earlier passes through their
    kept keys and values - at position ``skip`` + its depth: each node's states are those of a causal
    forward over its own path. The masks are per pass (``pack`` x nodes so far)."""
    import torch
    from transformers import DynamicCache

    n = len(tokens)
    depth = tree_depths(parents)
    done: list[tuple[Any, Any]] = []  # per layer: keys/values of the nodes computed so far
    for a in range(0, n, pack):
        b = min(a + pack, n)
        sees = torch.zeros(b - a, b, dtype=torch.bool)  # this pass's nodes see their ancestors and themselves
        for i in range(a, b):
            parent = parents[i]
            if parent >= a:
                sees[i - a] = sees[parent - a]
            else:  # the ancestors lie in earlier passes (or it hangs off the cached prefix)
                while parent >= 0:
                    sees[i - a, parent] = True
                    parent = parents[parent]
            sees[i - a, i] = True
        needed = sees[:, :a].any(dim=0).nonzero()[:, 0]  # ancestors from earlier passes
        past = None
        if kv is not None or len(needed):
            layers = []
            for layer in range(len(kv) if kv is not None else len(done)):
                parts_k = [kv[layer][0]] if kv is not None else []
                parts_v = [kv[layer][1]] if kv is not None else []
                if len(needed):
                    parts_k.append(done[layer][0][:, :, needed])
                    parts_v.append(done[layer][1][:, :, needed])
                layers.append((torch.cat(parts_k, dim=2), torch.cat(parts_v, dim=2)))
            past = DynamicCache(ddp_cache_data=layers)
        mask = torch.cat([torch.ones(b - a, skip, dtype=torch.bool), sees[:, needed], sees[:, a:b]], dim=1)  # kv None <=> skip 0
        out = decoder(
            input_ids=torch.tensor([tokens[a:b]], dtype=torch.long, device=device),
            attention_mask=mask[None, None].to(device),
            position_ids=torch.tensor([[skip + d for d in depth[a:b]]], dtype=torch.long, device=device),
            past_key_values=past if past is not None else DynamicCache(),
            use_cache=True,
        )
        if b < n:  # keep this pass's keys and values for later passes
            new = [(layer[0][:, :, -(b - a) :], layer[1][:, :, -(b - a) :]) for layer in out.past_key_values]
            done = new if not done else [(torch.cat([dk, k], dim=2), torch.cat([dv, v], dim=2)) for (dk, dv), (k, v) in zip(done, new, strict=True)]
        yield a, b, out


class HFValueModel:
    """A `ValueModel` on transformers. Build with `HFValueModel.load(cfg)` or `await load_value_model(cfg)`."""

    engine_name = "hf"

    def __init__(self, *, model: Any, tokenizer: Any, config: ValueConfig, version: str, trained: bool,
                 policy_base: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.version = version
        self.trained = trained
        self.policy_base = policy_base  # the base of the policy whose rollouts trained it (None: unknown/untrained)
        self._lock = threading.Lock()
        self._closed = False
        self.startup_s = 0.0
        # problem head tokens -> the decoder's keys/values over them (LRU, bounded by prefix_cache_mb)
        self._prefix_cache: OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = OrderedDict()
        self._prefix_cache_bytes = 0
        self.prefix_hits = 0
        self.prefix_misses = 0
        # decoder positions computed: real tokens and padding (statistics for benches)
        self.tokens_computed = 0
        self.tokens_padding = 0
        self.threads: int | None = None  # torch threads on a CPU (None: leave torch's setting)

    def _use_threads(self) -> None:
        """Set the calling thread's torch threads to `threads`: the count is per OS thread (OpenMP),
        and calls arrive on whichever worker thread `asyncio.to_thread` picks."""
        if self.threads is not None:
            import torch

            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)

    @classmethod
    def load(cls, cfg: ValueConfig) -> HFValueModel:
        """Resolve, verify and load the value model ``cfg`` names (see the module doc)."""
        t0 = time.perf_counter()
        cfg = cfg.model_copy(update={"device": cfg.resolved_device()})  # "auto" -> the device it runs on
        shipped = shipped_value_dir(cfg)
        source = Path(cfg.model).expanduser().resolve() if cfg.model is not None else shipped
        policy_base = None
        if source is None:
            base_dir = prepare_default_model()
            base_hash = verify_checkpoint(base_dir, kind="policy", check_hashes=False).digest()[:8]
            model, tokenizer = build_value_backbone(base_dir, dtype=cfg.resolved_dtype(), seed=cfg.seed)
            version = f"{DEFAULT_MODEL_NAME}@{base_hash}+untrained-head@seed{cfg.seed}"
            trained = False
        else:
            model, tokenizer, version, policy_base = cls._load_checkpoint(source, cfg)
            trained = True
        model.to(cfg.device)
        model.eval()
        value = cls(model=model, tokenizer=tokenizer, config=cfg, version=version, trained=trained, policy_base=policy_base)
        if str(cfg.device).startswith("cpu"):
            value.threads = cpu_threads(cfg.threads)
            value._use_threads()
        value.startup_s = time.perf_counter() - t0
        if not trained:
            logger.warning("value model %s is UNTRAINED: its scores carry no information", version)
        logger.info("value model %s (%s on %s) ready in %.1f s", version, cfg.resolved_dtype(), cfg.device, value.startup_s)
        return value

    @staticmethod
    def _load_checkpoint(path: Path, cfg: ValueConfig) -> tuple[Any, Any, str, str | None]:
        manifest, digest = inspect_directory(path, kind="value")
        policy_base = trained_policy_base(manifest) if manifest is not None else None
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
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=_torch_dtype(cfg.resolved_dtype()))
            model.config.pad_token_id = tokenizer.pad_token_id
            return model, tokenizer, f"value-{name}@{digest}", policy_base
        from peft import PeftModel

        base_name = cfg.base or (manifest.base if manifest is not None else None)
        base_dir = resolve_value_base(base_name)
        model, tokenizer = build_value_backbone(base_dir, dtype=cfg.resolved_dtype(), seed=cfg.seed)
        # served, not trained: fold the LoRA deltas into the weights (one matmul per projection)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
        return model, tokenizer, f"value-{name}@{digest}", policy_base

    def sharing_weights(self, **config_updates: Any) -> HFValueModel:
        """Another `HFValueModel` on the same weights with some `ValueConfig` fields changed
        (``batch_size``, ``max_length``, ``prefix_cache_mb``, ``pack_tokens``, ``threads``) and its own
        prefix cache."""
        cfg = self.config.model_copy(update=config_updates)
        ValueConfig.model_validate(cfg.model_dump())
        other = HFValueModel(model=self.model, tokenizer=self.tokenizer, config=cfg, version=self.version, trained=self.trained,
                             policy_base=self.policy_base)
        if self.threads is not None:
            other.threads = cpu_threads(cfg.threads) if "threads" in config_updates else self.threads
        return other

    def _parts(self) -> tuple[Any, Any]:
        """The decoder (``LlamaModel`` & co.) and the ``score`` head of the sequence classifier,
        through a PEFT wrapper if there is one (its LoRA layers and saved head stay active)."""
        seqcls = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return getattr(seqcls, seqcls.base_model_prefix), seqcls.score

    def clear_prefix_cache(self) -> None:
        """Forget cached problem prefixes (call after changing the weights in place)."""
        with self._lock:
            self._prefix_cache.clear()
            self._prefix_cache_bytes = 0

    def _head_kv(self, head: tuple[int, ...], upto: int, device: Any) -> list[tuple[Any, Any]]:
        """Keys and values of the decoder over ``head[:upto]`` (``head``: a problem's head). The
        cache holds each head in full, so states whose first tokens merge with the head's last
        ones (a shorter common prefix) and `prepare` share one entry: keys and values over a
        prefix are a slice of those over the whole head (causal attention). Called under the lock."""
        kv = self._prefix_cache.get(head)
        if kv is not None:
            self._prefix_cache.move_to_end(head)
            self.prefix_hits += 1
        else:
            self.prefix_misses += 1
            kv = self._extend(None, list(head), device)
            budget = self.config.prefix_cache_mb * 2**20
            if _kv_bytes(kv) <= budget:
                self._prefix_cache[head] = kv
                self._prefix_cache_bytes += _kv_bytes(kv)
                while self._prefix_cache_bytes > budget:
                    _, old = self._prefix_cache.popitem(last=False)
                    self._prefix_cache_bytes -= _kv_bytes(old)
        if upto == len(head):
            return kv
        return [(k[:, :, :upto], v[:, :, :upto]) for k, v in kv]

    def _forward(self, encoded: list[list[int]], heads: list[list[int]] | None = None) -> list[float]:
        """Scores of token sequences (under the lock, in inference mode).

        With ``heads`` (item i's problem head: the tokens of `value_input(problem, "")`) and
        ``prefix_cache_mb > 0``, the problem head comes from the LRU cache and the rest of each
        problem's items runs packed as a prefix tree (`_run_tree`, ``pack_tokens``) or, with
        packing off, in padded rows where an item that is a token prefix of another (a first-line
        child of its own rollout, a duplicate) is read off the longer one's pass and items that
        share a state prefix beyond the head (the continuations of one expansion) run on one
        extension of it (`_share_plan`). Without the cache, packed items still share tokens
        within the call and padded ones are computed in full. All exact under causal attention."""
        import torch

        device = next(self.model.parameters()).device
        scores = [0.0] * len(encoded)
        pack = self.config.resolved_pack_tokens(str(device))
        with self._lock, torch.inference_mode():
            self._use_threads()
            if heads is None or self.config.prefix_cache_mb == 0:
                if pack:  # nothing kept between calls; within this one, shared tokens still run once
                    self._run_tree(None, 0, list(range(len(encoded))), encoded, scores, device, pack)
                    return scores
                rows = [(i, [(i, len(encoded[i]) - 1)]) for i in range(len(encoded))]
                self._run_rows(None, 0, rows, encoded, scores, device)
                return scores
            groups: dict[tuple[tuple[int, ...], int], list[int]] = {}  # items by head and tokens shared with it
            for i, item in enumerate(encoded):
                shared = min(_common_prefix(heads[i], item), len(item) - 1)  # at least one token is computed
                groups.setdefault((tuple(heads[i]), shared), []).append(i)
            for (head, shared), members in groups.items():
                kv = self._head_kv(head, shared, device) if shared else None
                if pack:
                    self._run_tree(kv, shared, members, encoded, scores, device, pack)
                    continue
                for length, rows in _share_plan(encoded, members, shared):
                    ext = kv
                    if length > shared:  # the cluster's shared state tokens, once
                        ext = self._extend(kv, encoded[rows[0][0]][shared:length], device)
                    self._run_rows(ext, length, rows, encoded, scores, device)
        return scores

    def _extend(self, kv: list[tuple[Any, Any]] | None, ids: list[int], device: Any) -> list[tuple[Any, Any]]:
        """Keys and values over (the prefix ``kv`` covers) + ``ids``."""
        import torch
        from transformers import DynamicCache

        backbone, _ = self._parts()
        self.tokens_computed += len(ids)
        cache = DynamicCache(ddp_cache_data=kv) if kv is not None else None
        out = backbone(input_ids=torch.tensor([ids], dtype=torch.long, device=device), past_key_values=cache, use_cache=True)
        return [(layer[0], layer[1]) for layer in out.past_key_values]

    def _run_tree(
        self, kv: Any, skip: int, members: list[int], encoded: list[list[int]], scores: list[float], device: Any, pack: int
    ) -> None:
        """Score ``members`` (items whose first ``skip`` tokens the cached ``kv`` covers) as one
        prefix tree (`run_prefix_tree`): a token shared by several items (the state of one
        expansion, a first-line child inside its own rollout, a duplicate) is computed once, and
        nothing is padded. Exact under causal attention."""
        order = sorted(members, key=lambda i: encoded[i][skip:])
        tokens, parents, ends = prefix_tree([encoded[i][skip:] for i in order])
        reads_by_pass: dict[int, list[tuple[int, int, int]]] = {}
        for item, node in zip(order, ends, strict=True):
            reads_by_pass.setdefault(node // pack, []).append((0, item, node % pack))
        backbone, _ = self._parts()
        for a, b, out in run_prefix_tree(backbone, tokens, parents, kv=kv, skip=skip, device=device, pack=pack):
            self.tokens_computed += b - a
            if a // pack in reads_by_pass:
                self._read(out.last_hidden_state, reads_by_pass[a // pack], scores)

    def _run_rows(
        self,
        kv: list[tuple[Any, Any]] | None,
        skip: int,
        rows: list[tuple[int, list[tuple[int, int]]]],
        encoded: list[list[int]],
        scores: list[float],
        device: Any,
    ) -> None:
        """Padded passes (packing off): one per ``batch_size`` rows over ``encoded[row][skip:]``
        after the cached ``kv`` (which covers the first ``skip`` tokens); each row's reads ``(item,
        position)`` set ``scores[item]`` from the head on the hidden state at that absolute
        position. Right padding under causal attention: no real token attends to a pad after it,
        so no mask is needed (masked batches ran 2.6-6x slower on an H100)."""
        import torch
        from transformers import DynamicCache

        backbone, _ = self._parts()
        order = sorted(rows, key=lambda r: len(encoded[r[0]]))
        size = self.config.resolved_batch_size(str(device))
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            width = max(len(encoded[c]) for c, _ in chunk) - skip
            real = sum(len(encoded[c]) - skip for c, _ in chunk)
            self.tokens_computed += real
            self.tokens_padding += len(chunk) * width - real
            batch = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            for r, (c, _) in enumerate(chunk):
                batch[r, : len(encoded[c]) - skip] = torch.tensor(encoded[c][skip:], dtype=torch.long)
            cache = None
            if kv is not None:
                n = len(chunk)
                cache = DynamicCache(ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv])
            hidden = backbone(input_ids=batch.to(device), past_key_values=cache, use_cache=cache is not None).last_hidden_state
            self._read(hidden, [(r, item, pos - skip) for r, (_, rs) in enumerate(chunk) for item, pos in rs], scores)

    def _read(self, hidden: Any, reads: list[tuple[int, int, int]], scores: list[float]) -> None:
        """``scores[item]`` from the head on ``hidden[row, position]`` for each ``(row, item, position)``."""
        import torch

        _, head_layer = self._parts()
        at_rows = torch.tensor([r for r, _, _ in reads], device=hidden.device)
        at_pos = torch.tensor([p for _, _, p in reads], device=hidden.device)
        values = head_layer(hidden[at_rows, at_pos])[:, 0].float().clamp(0.0, 1.0).cpu().tolist()
        for (_, item, _), v in zip(reads, values, strict=True):
            scores[item] = v

    def _head_ids(self, problem: Problem) -> list[int]:
        return self.tokenizer(value_input(problem, ""), add_special_tokens=False)["input_ids"]

    def score_sync(self, problem: Problem, states: Sequence[str]) -> list[float]:
        """Blocking `score` (training and benchmarks)."""
        head = self._head_ids(problem)
        encoded = encode_value_inputs(self.tokenizer, problem, states, self.config.max_length, head)
        return self._forward(encoded, [head] * len(encoded))

    def score_pairs_sync(self, pairs: Sequence[tuple[Problem, str]]) -> list[float]:
        """Blocking scoring of states from several problems in one set of batches."""
        heads: dict[int, list[int]] = {}
        encoded, item_heads = [], []
        for problem, state in pairs:
            if id(problem) not in heads:
                heads[id(problem)] = self._head_ids(problem)
            encoded.append(encode_value_inputs(self.tokenizer, problem, [state], self.config.max_length, heads[id(problem)])[0])
            item_heads.append(heads[id(problem)])
        return self._forward(encoded, item_heads)

    def prepare_sync(self, problem: Problem) -> None:
        """Compute and cache ``problem``'s head now (blocking; see `prepare`)."""
        if self.config.prefix_cache_mb == 0:
            return
        import torch

        head = tuple(self._head_ids(problem))
        device = next(self.model.parameters()).device
        with self._lock, torch.inference_mode():
            if head not in self._prefix_cache:
                self._head_kv(head, len(head), device)

    async def prepare(self, problem: Problem) -> None:
        """Warm the head cache for ``problem`` before its first states arrive: a search calls it
        when it starts, so the head runs while the policy samples the first expansion instead of
        delaying that expansion's values."""
        if self._closed:
            raise RuntimeError("value model closed")
        await asyncio.to_thread(self.prepare_sync, problem)

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
