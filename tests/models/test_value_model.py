"""`HFValueModel`: batched scoring in [0, 1], order and batch independence, truncation, and the
LoRA adapter + head save/load round trip through a verified checkpoint."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from models import CheckpointError, ValueConfig, ValueModel, load_value_model, verify_checkpoint
from models.value import HFValueModel, encode_value_inputs, save_value_checkpoint, value_lora_config
from tasks import Problem

PROBLEM = Problem(id="add", prompt="Write a function add(a, b) that returns a + b.", starter_code="def add(a, b):\n")
STATES = ["", "def add(a, b):\n", "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n", "import os\n" * 30]


async def test_scores_in_unit_interval_and_version(value_model):
    assert isinstance(value_model, ValueModel)
    scores = await value_model.score(PROBLEM, STATES)
    assert len(scores) == len(STATES) and all(0.0 <= s <= 1.0 for s in scores)
    if not value_model.trained:
        assert "untrained" in value_model.version
    assert await value_model.score(PROBLEM, []) == []


async def test_order_and_batch_independent(value_model):
    scores = await value_model.score(PROBLEM, STATES)
    reversed_scores = await value_model.score(PROBLEM, STATES[::-1])
    assert reversed_scores[::-1] == pytest.approx(scores, abs=1e-4)
    singles = [(await value_model.score(PROBLEM, [s]))[0] for s in STATES]
    assert singles == pytest.approx(scores, abs=1e-4)  # right padding does not leak into the score
    pairs = await value_model.score_pairs([(PROBLEM, s) for s in STATES])
    assert pairs == pytest.approx(scores, abs=1e-4)


@pytest.fixture(scope="module")
def untrained_value(default_model_dir):
    """The seeded untrained head on the default base (what `restrl train value` starts from)."""
    return HFValueModel.load(ValueConfig(batch_size=8, max_length=512, use_shipped=False, dtype="float32"))


def test_untrained_head_is_seeded(untrained_value):
    value_model = untrained_value
    assert not value_model.trained and "untrained" in value_model.version
    again = HFValueModel.load(ValueConfig(seed=value_model.config.seed, batch_size=4, max_length=128, use_shipped=False, dtype="float32"))
    assert again.version == value_model.version and f"seed{value_model.config.seed}" in again.version
    assert again.score_sync(PROBLEM, STATES[:3]) == pytest.approx(value_model.score_sync(PROBLEM, STATES[:3]), abs=1e-5)


def test_raw_outputs_are_clamped(untrained_value):
    import torch

    value_model = untrained_value
    head = value_model.model.score
    saved = head.weight.detach().clone()
    try:
        with torch.no_grad():
            head.weight.mul_(1000.0)
        scores = value_model.score_sync(PROBLEM, STATES)
        assert all(s in (0.0, 1.0) for s in scores)  # raw outputs far outside [0, 1]
        with torch.no_grad():
            head.weight.copy_(-saved * 1000.0)
        flipped = value_model.score_sync(PROBLEM, STATES)
        assert flipped == [1.0 - s for s in scores]  # each side clamps to its own bound
    finally:
        with torch.no_grad():
            head.weight.copy_(saved)


def test_truncation_keeps_problem_and_end_of_state(value_model):
    tok = value_model.tokenizer
    state = "".join(f"line_{i} = {i}\n" for i in range(400)) + "final_marker = 1\n"
    [ids] = encode_value_inputs(tok, PROBLEM, [state], 128)
    assert len(ids) == 128
    text = tok.decode(ids)
    assert text.startswith("Problem:\nWrite a function add") and text.endswith("final_marker = 1\n")


def test_lora_round_trip(tmp_path, default_model_dir, value_model):
    import torch
    from peft import get_peft_model

    cfg = ValueConfig(batch_size=4, max_length=256, seed=1, use_shipped=False, dtype="float32")
    base = HFValueModel.load(cfg)
    peft_model = get_peft_model(base.model, value_lora_config(r=4))
    with torch.no_grad():  # a trained adapter in miniature: change the LoRA B matrices and the head
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or ("score" in name and p.requires_grad):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    trained = HFValueModel(model=peft_model.eval(), tokenizer=base.tokenizer, config=cfg, version="in-memory", trained=True)
    expected = trained.score_sync(PROBLEM, STATES)
    out = tmp_path / "value-adapter"
    manifest = save_value_checkpoint(peft_model, base.tokenizer, out, base=str(default_model_dir), job="test")
    assert manifest.kind == "value" and manifest.format == "lora"
    assert all(name.endswith((".safetensors", ".json", ".md")) for name in manifest.files)
    verify_checkpoint(out, kind="value")
    loaded = HFValueModel.load(ValueConfig(model=str(out), batch_size=4, max_length=256, seed=99, dtype="float32"))
    assert loaded.trained and loaded.version.startswith("value-value-adapter@")
    assert loaded.score_sync(PROBLEM, STATES) == pytest.approx(expected, abs=1e-5)
    # a tampered adapter is refused before loading
    weights = next(out.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="sha256"):
        HFValueModel.load(ValueConfig(model=str(out)))


def test_store_in_bfloat16_halves_the_full_layers_and_serves_the_same_scores(tmp_path, default_model_dir):
    """`restrl models store DIR --dtype bfloat16`: a top-layers adapter's full modules are rewritten in
    bfloat16 (LoRA kept), the manifest re-hashed; loaded in bfloat16 (the CPU serving dtype) it
    scores exactly as the float32-stored one, in float32 within bfloat16 rounding."""
    import torch
    from peft import get_peft_model

    from models.value import build_value_backbone, top_layers_adapter_config
    from restrl import main

    backbone, tokenizer = build_value_backbone(default_model_dir, dtype="float32", seed=1)
    adapter = get_peft_model(backbone, top_layers_adapter_config(backbone.config.num_hidden_layers, 1))
    with torch.no_grad():  # a trained top layer in miniature
        for name, p in adapter.named_parameters():
            if p.requires_grad and "lora_" not in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.01)
    out = tmp_path / "top1"
    save_value_checkpoint(adapter, tokenizer, out, base=str(default_model_dir), job="test")
    before = {dtype: HFValueModel.load(ValueConfig(model=str(out), batch_size=4, max_length=256, dtype=dtype)).score_sync(PROBLEM, STATES)
              for dtype in ("bfloat16", "float32")}
    size = (out / "adapter_model.safetensors").stat().st_size
    assert main(["models", "store", str(out), "--dtype", "bfloat16"]) == 0
    manifest = verify_checkpoint(out, kind="value")
    assert manifest.config["stored_dtype"] == "bfloat16" and manifest.job == "test"
    assert (out / "adapter_model.safetensors").stat().st_size < 0.55 * size
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as fh:
        dtypes = {k: fh.get_tensor(k).dtype for k in fh.keys()}  # noqa: SIM118
    assert {d for k, d in dtypes.items() if "lora_" in k} == {torch.float32}
    assert {d for k, d in dtypes.items() if "lora_" not in k} == {torch.bfloat16}
    after = {dtype: HFValueModel.load(ValueConfig(model=str(out), batch_size=4, max_length=256, dtype=dtype)).score_sync(PROBLEM, STATES)
             for dtype in ("bfloat16", "float32")}
    assert after["bfloat16"] == before["bfloat16"]
    assert after["float32"] == pytest.approx(before["float32"], abs=2e-2)


async def test_policy_checkpoint_is_refused_as_value(default_model_dir):
    with pytest.raises(CheckpointError, match="field 'kind'"):
        await load_value_model(ValueConfig(model=str(default_model_dir)))


def test_prefix_cache_scores_equal_full_inputs(value_model):
    """Reusing a problem's cached head changes no score: states whose first tokens merge with the
    head's last ones, an empty state, a state cut to ``max_length``, and two problems in one batch
    all score as the full input does (no cache, padded), and the head runs once per problem."""
    cached = value_model.sharing_weights(max_length=128)
    full = cached.sharing_weights(prefix_cache_mb=0, pack_tokens=0)
    assert full.model is cached.model and full.version == value_model.version
    other = Problem(id="neg", prompt="Return -x.", starter_code="def neg(x):\n")
    parent = "def add(a, b):\n    total = 0\n    for x in (a, b):\n"
    expansion = [parent + "        total += x", parent + "        total += x\n    return total\n", parent + "        total = total + x",
                 parent + "        total = total + x\n    return total\n", parent + "        pass"]  # children and their rollouts
    states = [*STATES, "    return a+b", " \n\n  x", "".join(f"v{i} = {i}\n" for i in range(60)), *expansion, expansion[0]]
    pairs = [(PROBLEM, s) for s in states] + [(other, s) for s in states[:4]]
    expected = full.score_pairs_sync(pairs)
    assert full.prefix_misses == 0 and not full._prefix_cache
    assert cached.score_pairs_sync(pairs) == pytest.approx(expected, abs=1e-4)
    assert cached.score_sync(PROBLEM, states) == pytest.approx(expected[: len(states)], abs=1e-4)
    assert cached.prefix_hits >= 1 and cached.prefix_misses == 2  # one head per problem, however a state starts
    cached.clear_prefix_cache()
    assert not cached._prefix_cache and cached.score_sync(other, states[:4]) == pytest.approx(expected[len(states) :], abs=1e-4)


def test_prepare_fills_the_head_cache_scoring_then_reuses(value_model):
    """`prepare` computes a problem's head once; states whose first tokens merge with the head's
    last token and states that do not both reuse it (a slice), and score as full inputs do."""
    cached = value_model.sharing_weights()
    full = cached.sharing_weights(prefix_cache_mb=0, pack_tokens=0)
    states = ["    return a + b\n", "def add(a, b):\n    return a + b\n", ""]
    cached.prepare_sync(PROBLEM)
    cached.prepare_sync(PROBLEM)  # already cached: nothing recomputed
    assert (cached.prefix_hits, cached.prefix_misses, len(cached._prefix_cache)) == (0, 1, 1)
    assert cached.score_sync(PROBLEM, states) == pytest.approx(full.score_sync(PROBLEM, states), abs=1e-4)
    assert cached.prefix_misses == 1 and cached.prefix_hits >= 2 and len(cached._prefix_cache) == 1
    full.prepare_sync(PROBLEM)  # no cache, nothing to warm
    assert not full._prefix_cache and full.prefix_misses == 0


def test_packed_prefix_tree_scores_as_padded_batches(value_model):
    """Packing states as a prefix tree (one sequence, each token attending to its ancestors; no
    padding, shared tokens once) changes no float32 score: with the cached head and without it,
    several passes per call (pack_tokens=40), a state longer than a pass alone, a child inside its
    own rollout, a duplicate. The default packs on a CPU and pads on a GPU."""
    from models.config import DEFAULT_PACK_TOKENS, ValueConfig

    parent = "def add(a, b):\n    total = 0\n    for x in (a, b):\n"
    states = [parent + "        total += x\n", parent + "        total += x\n    return total\n", parent + "        pass",
              parent + "        total += x\n", "    total = a\n" * 9 + "    return total\n", "", "    x = 1\n    y = 2\n"]
    padded = value_model.sharing_weights(pack_tokens=0)
    expected = padded.score_sync(PROBLEM, states)
    assert padded.tokens_padding > 0
    for cache_mb in (256, 0):
        packed = value_model.sharing_weights(pack_tokens=40, prefix_cache_mb=cache_mb)
        assert packed.score_sync(PROBLEM, states) == pytest.approx(expected, abs=1e-4)
        assert packed.tokens_padding == 0 and packed.tokens_computed > 0
        if cache_mb:
            assert packed.tokens_computed < padded.tokens_computed + padded.tokens_padding
    assert padded.sharing_weights(pack_tokens=None).config.resolved_pack_tokens() == DEFAULT_PACK_TOKENS
    assert ValueConfig(device="cuda:1").resolved_pack_tokens() == 0 and ValueConfig(pack_tokens=64).resolved_pack_tokens("cuda") == 64


def test_share_plan_reads_prefixes_off_longer_rows():
    from models.value import MIN_SHARED_STATE_TOKENS, _share_plan

    state = list(range(100, 100 + MIN_SHARED_STATE_TOKENS))
    encoded = [
        [1, 2, 3, *state, 7],  # 0: a child ...
        [1, 2, 3, *state, 7, 8, 9],  # 1: ... and its rollout
        [1, 2, 3, *state, 5, 5],  # 2: a sibling rollout
        [1, 2, 3, 4],  # 3: another state of the problem
        [1, 2, 3, *state, 7],  # 4: a duplicate of 0
    ]
    plan = _share_plan(encoded, list(range(5)), 3)
    rows = {carrier: reads for _, cluster in plan for carrier, reads in cluster}
    assert sorted(rows) == [1, 2, 3]  # 0 and 4 run inside 1's row
    assert sorted(rows[1]) == [(0, 3 + len(state)), (1, 5 + len(state)), (4, 3 + len(state))]
    lengths = {carrier: length for length, cluster in plan for carrier, _ in cluster}
    assert lengths[1] == lengths[2] == 3 + len(state)  # the shared state runs once for both
    assert lengths[3] == 3
    for length, cluster in plan:  # every read lies past its cluster's shared prefix
        assert all(pos >= length for _, reads in cluster for _, pos in reads)


def test_prefix_cache_is_bounded(value_model):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="prefix_cache_mb"):
        value_model.sharing_weights(prefix_cache_mb=-1)
    small = value_model.sharing_weights(prefix_cache_mb=2)
    problems = [Problem(id=f"p{i}", prompt=f"Return {i}.", starter_code="def f():\n") for i in range(6)]
    for p in problems:
        small.score_sync(p, ["    return 1\n"])
    entry = small._prefix_cache_bytes // len(small._prefix_cache)
    assert 0 < small._prefix_cache_bytes <= 2 * 2**20 and len(small._prefix_cache) == 2 * 2**20 // entry < len(problems)
    small.score_sync(problems[-1], ["    return 2\n"])  # the newest head is still cached, the oldest is gone
    small.score_sync(problems[0], ["    return 2\n"])
    assert (small.prefix_hits, small.prefix_misses) == (1, len(problems) + 1)


def test_cpu_threads_default_leaves_cores_to_the_policy(default_model_dir):
    import os

    import torch

    from models.value import cpu_threads

    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(0) == max(1, cores // 2) and cpu_threads(3) == 3
    assert cpu_threads(0, exclusive=True) == cores and cpu_threads(3, exclusive=True) == 3  # batches that pause the engine
    before = torch.get_num_threads()
    try:
        value = HFValueModel.load(ValueConfig(threads=1, use_shipped=False, batch_size=2, max_length=64))
        assert torch.get_num_threads() == 1 and value.threads == 1

        def on_another_thread() -> int:  # torch's thread count is per OS thread: each call sets it
            torch.set_num_threads(2)
            value.score_sync(Problem(id="t", prompt="Add.", starter_code="def f():\n"), ["    return 1\n"])
            return torch.get_num_threads()

        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(on_another_thread).result() == 1
    finally:
        torch.set_num_threads(before)


def test_auto_dtype_is_bf16_only_on_bf16_hardware_and_ranks_like_float32(value_model):
    """The default dtype: bfloat16 where the CPU has AVX512-BF16/AMX (emulated bf16 would be slower
    than float32), float32 elsewhere; explicit dtypes are kept. Where it is bfloat16, its scores stay
    close to float32's and keep their order on clearly separated states."""
    from models.config import cpu_flags, native_bf16

    assert ValueConfig(dtype="float32").resolved_dtype() == "float32"
    assert ValueConfig(dtype="bfloat16").resolved_dtype() == "bfloat16"
    hardware = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert native_bf16("cpu") == hardware
    auto = ValueConfig(batch_size=8, max_length=512)
    assert auto.resolved_dtype() == ("bfloat16" if hardware else "float32")
    if not hardware:
        pytest.skip("this CPU has no native bfloat16: auto is float32, covered by every other test")
    import torch

    bf16 = HFValueModel.load(auto)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    exact = value_model.score_sync(PROBLEM, STATES)
    fast = bf16.score_sync(PROBLEM, STATES)
    assert fast == pytest.approx(exact, abs=0.05)
    for i in range(len(STATES)):
        for j in range(len(STATES)):
            if exact[i] > exact[j] + 0.1:
                assert fast[i] > fast[j]
