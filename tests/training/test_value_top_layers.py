"""`training.value_top_layers`: the cached states entering the first trained layer (prefix trees, the
CPU default, or padded batches) equal those of a plain forward over each input; the top layers learn
from them in float32 and under bfloat16 autocast."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from training.value_top_layers import (
    FeatureCache,
    TopLayers,
    _tree_groups,
    feature_key,
    predict_cached,
    train_top_layers,
)
from training.value_train import ValueTrainConfig


def _inputs() -> list[list[int]]:
    """Three 'problems': a shared head each, states grown line by line, branches, a duplicate and
    an input that is a prefix of another - the shapes of collect-values rows."""
    rng = random.Random(0)
    out: list[list[int]] = []
    for _ in range(3):
        state = [rng.randrange(1, 50) for _ in range(12)]
        for _ in range(5):
            state = state + [rng.randrange(1, 50) for _ in range(rng.randint(1, 6))]
            out.append(state)
            out.append(state + [rng.randrange(1, 50) for _ in range(rng.randint(1, 4))])
    return out + [out[3], out[0][:-1]]


def _reference(model: LlamaForSequenceClassification, ids: list[int], layer: int) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    handle = model.model.layers[layer].register_forward_pre_hook(lambda _m, args, kw: captured.append(args[0] if args else kw["hidden_states"]),
                                                                 with_kwargs=True)
    with torch.inference_mode():
        model.model(input_ids=torch.tensor([ids]))
    handle.remove()
    return captured[0][0]


def _model() -> LlamaForSequenceClassification:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, pad_token_id=0, num_labels=1)
    return LlamaForSequenceClassification(config).eval()


def test_tree_and_padded_builds_equal_a_plain_forward_and_resume(tmp_path) -> None:
    model = _model()
    inputs = _inputs()
    distinct = {feature_key(ids) for ids in inputs}
    groups = list(_tree_groups(sorted(((feature_key(i), i) for i in inputs), key=lambda kv: kv[1]), 40))
    assert len(groups) > 3  # the three heads split the trees, and 40 tokens split a head's tree again

    padded = FeatureCache(tmp_path / "padded", layer=2, hidden=32, dtype="float32")
    assert padded.build(model, inputs, pack=0, batch_tokens=64) == len(distinct)
    tree = FeatureCache(tmp_path / "tree", layer=2, hidden=32, dtype="float32")
    first = tree.build(model, inputs[:9], pack=7, tree_tokens=40)  # passes of 7 nodes: ancestors in earlier passes
    tree = FeatureCache(tmp_path / "tree", layer=2, hidden=32, dtype="float32")  # reopened: the index says what is there
    assert tree.build(model, inputs, pack=7, tree_tokens=40) == len(distinct) - first
    assert tree.build(model, inputs, pack=7) == 0
    bf16 = FeatureCache(tmp_path / "bf16", layer=2, hidden=32, dtype="bfloat16")  # stored as bfloat16 bits, read as float32
    bf16.build(model, inputs, pack=7)
    for ids in inputs:
        want = _reference(model, ids, 2)
        assert tree.get(ids).shape == (len(ids), 32)
        assert torch.allclose(tree.get(ids), want, atol=1e-5) and torch.allclose(padded.get(ids), want, atol=1e-5)
        assert bf16.get(ids).dtype == torch.float32 and torch.equal(bf16.get(ids), want.to(torch.bfloat16).float())


def test_top_layers_learn_from_the_cache_in_float32_and_bf16(tmp_path) -> None:
    """A learnable target (the parity of the last token): the training MSE falls well below the
    untrained model's in both precisions (padded batches in float32, packed trees in bf16), and
    only the top layers, norm and head moved."""
    inputs = _inputs()
    cache = FeatureCache(tmp_path / "cache", layer=2, hidden=32, dtype="float32")
    cache.build(_model(), inputs, pack=7)
    rows = [{"problem_id": f"p{i // 12}", "target": float(ids[-1] % 2)} for i, ids in enumerate(inputs)]
    data = [{"input_ids": ids, "labels": r["target"], "group": i // 12} for i, (ids, r) in enumerate(zip(inputs, rows, strict=True))]

    def mse(preds: list[float]) -> float:
        return sum((p - d["labels"]) ** 2 for p, d in zip(preds, data, strict=True)) / len(data)

    for bf16 in (False, True):
        backbone = _model()
        frozen = [p.detach().clone() for p in backbone.model.layers[:2].parameters()]
        model = TopLayers(backbone, 2)
        before = mse(predict_cached(model, cache, data, "cpu"))
        cfg = ValueTrainConfig(learning_rate=3e-3, max_steps=30, batch_size=8, bf16=bf16, rank_weight=0.5, problems_per_batch=2)
        result = train_top_layers(cfg, model, cache, rows, data, "cpu", packed=bf16)  # padded in float32, packed in bf16
        after = mse(predict_cached(model, cache, data, "cpu", packed=bf16))
        assert result.global_step == 30 and after < 0.5 * before, (bf16, before, after)
        assert all(torch.equal(a, b) for a, b in zip(frozen, backbone.model.layers[:2].parameters(), strict=True))


def test_packed_rows_score_and_train_like_padded_rows(tmp_path) -> None:
    """One prefix tree per problem (the CPU training path) is the padded batch's computation:
    the same scores and the same gradients in float32, fewer positions."""
    from training.value_top_layers import _packed, _scores, _stack

    inputs = _inputs()
    cache = FeatureCache(tmp_path / "cache", layer=2, hidden=32, dtype="float32")
    cache.build(_model(), inputs, pack=7)
    data = [{"input_ids": ids, "labels": 0.5, "group": i // 12} for i, ids in enumerate(inputs)]
    idx = list(range(0, len(inputs), 2))[:10]  # rows of two problems, branches and prefixes among them
    x, _, _, _ = _packed(cache, data, idx, "cpu")
    padded_positions = int(_stack(cache, data, idx, "cpu")[1].max()) * len(idx)
    assert x.shape[0] == 2 and x.shape[0] * x.shape[1] < padded_positions

    model = TopLayers(_model(), 2)
    grads = []
    for packed in (False, True):
        for p in model.parameters():
            p.grad = None
        scores = _scores(model, cache, data, idx, "cpu", packed=packed)
        (scores * torch.arange(1, len(idx) + 1)).sum().backward()
        grads.append((scores.detach(), [p.grad.clone() for p in model.parameters()]))
    (pad_scores, pad_grads), (tree_scores, tree_grads) = grads
    assert torch.allclose(pad_scores, tree_scores, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(pad_grads, tree_grads, strict=True))
    assert predict_cached(model, cache, data, "cpu", packed=True) == pytest.approx(predict_cached(model, cache, data, "cpu"), abs=1e-5)


def test_a_warm_start_keeps_the_sources_lora_and_full_modules_below_the_top() -> None:
    from peft import LoraConfig

    from models.value import top_layers_adapter_config, value_lora_config, warm_top_layers_adapter_config

    def top_names(lo: int, hi: int) -> list[str]:
        return [f"model.layers.{i}" for i in range(lo, hi)]

    shipped = warm_top_layers_adapter_config(value_lora_config(r=8, alpha=16), 30, 2)  # LoRA everywhere: kept on 0-27
    assert shipped.layers_to_transform == list(range(28)) and shipped.r == 8 and shipped.lora_alpha == 16
    assert set(shipped.modules_to_save) >= {"score", "model.norm", *top_names(28, 30)}
    one = warm_top_layers_adapter_config(LoraConfig(r=4, target_modules=["q_proj"], layers_to_transform=29), 30, 2)
    assert one.layers_to_transform == [27] and one.r == 1  # an int source layer inside the top: the inert target below it
    deep = warm_top_layers_adapter_config(top_layers_adapter_config(30, 8), 30, 2)  # layers 22-27 stay in full, its LoRA on 21
    assert deep.layers_to_transform == [21] and set(top_names(22, 30)) <= set(deep.modules_to_save)
    shallow = warm_top_layers_adapter_config(top_layers_adapter_config(30, 2), 30, 4)  # its LoRA (layer 27) is now in the top
    assert shallow.layers_to_transform == [25] and shallow.r == 1 and set(top_names(26, 30)) <= set(shallow.modules_to_save)
    with pytest.raises(ValueError, match="between 1 and 29"):
        warm_top_layers_adapter_config(value_lora_config(), 30, 30)
