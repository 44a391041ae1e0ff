"""The value pipeline for a user's own policy, end to end through the commands a user runs:
`restrl train collect-values` on the policy -> `restrl train value` (on the policy's base by
default) -> `restrl serve --policy P` (no value model for P yet: searches answer 400 naming
RESTRL_VALUE) -> hot swap of the trained value model -> `vm_mcts` answers.

Two architectures: a tiny Qwen2-style model built here from a config with random weights (and the
default model's tokenizer) - fast, in the default suite - and the embedded SmolLM2 default
(`slow`). Every step runs in its own process, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.tiny_models import save_random_causal_lm

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "any-policy-admin"
SMALL_ENGINE = ["--set", "policy.kv_cache_gib=0.25", "--set", "policy.max_model_len=1024", "--set", "policy.max_num_seqs=32"]
PROBLEM = {"statement": "Return the sum of a and b.", "starter_code": "def add(a, b):\n", "entry_point": "add"}


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """A second architecture: a Qwen2-style causal LM (2 layers, hidden 128) with seeded random
    weights, saved as a plain transformers folder (no restrl.json) with SmolLM2's tokenizer."""
    return save_random_causal_lm(tmp_path_factory.mktemp("models") / "tiny-qwen2", default_model_dir, "qwen2",
                                 hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, max_position_embeddings=4096)


def _restrl(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "restrl", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@contextmanager
def _serve(policy: str | None, log_path: Path) -> Iterator[str]:
    """`restrl serve` on ``policy`` (None: the default) on a free port; yields its URL once ready."""
    env = {**os.environ, "RESTRL_ADMIN_TOKEN": ADMIN}
    args = ["--port", "0", "--policy.kv-cache-gib", "0.25", "--policy.max-model-len", "1024", "--policy.max-num-seqs", "32",
            "--max-new-tokens", "48", "--ready-cache-s", "0", "--drain-timeout-s", "5", "--sandbox.workers", "1"]
    if policy is not None:
        args += ["--policy", policy]
    log = log_path.open("w+")
    server = subprocess.Popen([sys.executable, "-m", "restrl", "serve", *args], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        url = None
        while url is None and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.5)
            match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log_path.read_text())
            url = match.group(1) if match else None
        assert url, log_path.read_text()[-3000:]
        while time.monotonic() < deadline:
            ready = httpx.get(f"{url}/ready", timeout=300)
            if ready.status_code == 200:
                break
            assert "load failed" not in ready.text, ready.text
            time.sleep(1)
        assert ready.status_code == 200, ready.text
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _pipeline(policy: str | None, tmp_path: Path) -> None:
    data, trained = tmp_path / "value_data", tmp_path / "value_model"
    policy_set = ["--set", f"policy.model={policy}"] if policy is not None else []
    _restrl("train", "collect-values", *policy_set, *SMALL_ENGINE, "--set", f"output_dir={data}", "--set", "max_problems=3",
            "--set", "gym_tiers=[1]", "--set", "gym_n_per_tier=20", "--set", "search.budget.samples=5", "--set", "search.max_tokens=48",
            "--set", "concurrency=3", "--set", "sandbox.workers=1")
    summary = json.loads((data / "summary.json").read_text())
    assert summary["problems_searched"] == 3 and summary["rows"] > 0
    _restrl("train", "value", "--set", f"rows_file={data / 'rows.jsonl'}", "--set", f"problems_file={data / 'problems.jsonl'}",
            "--set", f"output_dir={trained}", "--set", "max_steps=2", "--set", "batch_size=2", "--set", "eval_batch_size=8",
            "--set", "value.max_length=256", "--set", "value.device=cpu", "--set", "holdout_fraction=0.34")
    manifest = json.loads((trained / "final" / "restrl.json").read_text())
    # the value model's base is the policy's base, and it names the policy whose rollouts trained it
    expected = str(Path(policy).resolve()) if policy is not None else "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert manifest["base"] == expected and manifest["policy"] == expected, manifest
    assert manifest["config"]["policy_base"] == summary["policy_base"] == expected

    with _serve(policy, tmp_path / "serve.log") as url, httpx.Client(base_url=url, timeout=600) as client:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        body = {"problem": PROBLEM, "strategy": "vm_mcts", "budget": {"samples": 4}, "k": 2, "max_tokens": 24, "seed": 0}
        if policy is not None:  # no value model for this policy yet: said, not silently replaced by SmolLM2's
            ready = client.get("/ready").json()
            assert ready["value_match"]["status"] == "none" and not ready["value_match"]["allowed"]
            refused = client.post("/v1/solve", json=body)
            assert refused.status_code == 400 and "RESTRL_VALUE" in refused.json()["error"]["message"]
        swapped = client.post("/admin/models", json={"value": str(trained / "final")}, headers=auth)
        assert swapped.status_code == 200, swapped.text
        active = swapped.json()["active"]
        assert (active["value_match"], active["searches_allowed"], active["value_trained_for"]) == ("matches", True, expected)
        solved = client.post("/v1/solve", json=body)
        assert solved.status_code == 200, solved.text
        out = solved.json()
        assert out["strategy"] == "vm_mcts" and out["usage"]["samples"] >= 1 and out["usage"]["value_calls"] >= 1
        assert out["value_version"].startswith("value-final@") and "trained for" not in out["value_version"]


@pytest.mark.vllm
def test_value_pipeline_for_a_tiny_qwen2_policy(tiny_qwen2: Path, tmp_path: Path) -> None:
    _pipeline(str(tiny_qwen2), tmp_path)


@pytest.mark.slow
@pytest.mark.vllm
def test_value_pipeline_for_the_default_policy(default_model_dir: Path, tmp_path: Path) -> None:
    _pipeline(None, tmp_path)
