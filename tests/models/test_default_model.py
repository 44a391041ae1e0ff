"""The embedded default model: converted once, reused, verified; concurrent prepares are safe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.checkpoints import verify_checkpoint
from models.default import DEFAULT_MODEL_NAME, default_model_path, prepare_default_model

REPO = Path(__file__).resolve().parents[2]


def test_prepare_is_idempotent(default_model_dir):
    weights = default_model_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    messages: list[str] = []
    again = prepare_default_model(progress=messages.append)
    assert again == default_model_dir == default_model_path()
    assert weights.stat().st_mtime_ns == mtime and messages == []  # reused, not converted
    manifest = verify_checkpoint(default_model_dir, kind="policy", check_hashes=False)
    assert manifest.format == "full" and "SmolLM2-135M-Instruct" in manifest.base
    assert not list(default_model_dir.glob("*.bin"))


def test_loads_as_plain_transformers_folder(default_model_dir):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(default_model_dir)
    assert cfg.model_type == "llama" and cfg.vocab_size == 49152
    assert getattr(cfg, "quantization_config", None) is None


@pytest.mark.slow
def test_two_processes_prepare_at_once_in_a_fresh_cache(tmp_path):
    env = {**os.environ, "RESTRL_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "restrl", "models", "prepare"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    target = tmp_path / "models" / DEFAULT_MODEL_NAME
    verify_checkpoint(target, kind="policy")  # full re-hash: one complete, consistent copy
    assert sum("dequantising" in o for o in outs) == 1  # converted once, the other waited and reused it
    assert not [p for p in target.parent.iterdir() if p.name.startswith(f".{DEFAULT_MODEL_NAME}.tmp")]


@pytest.mark.slow
def test_corrupt_cache_is_converted_again(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTRL_CACHE", str(tmp_path))
    path = prepare_default_model()
    (path / "config.json").write_text("{}")
    again = prepare_default_model(verify=True)
    verify_checkpoint(again, kind="policy")
