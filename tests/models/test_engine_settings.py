"""Engine settings by device (`models.vllm_engine.engine_kwargs`, `models.hardware`): the CPU
build's workarounds apply there only; on CUDA vLLM's defaults hold unless the operator sets a
field; what does not apply on a device is said. Pure functions: both devices are tested here."""

from __future__ import annotations

import pytest

from models.base import ModelError
from models.config import EngineConfig, ValueConfig
from models.hardware import GPU, GiB, Hardware, scaled_defaults
from models.vllm_engine import engine_kwargs

CPU_ONLY_KEYS = {"enable_chunked_prefill", "max_num_batched_tokens", "max_num_seqs", "enforce_eager", "kv_cache_memory_bytes"}
GPU_ONLY_KEYS = {"gpu_memory_utilization", "tensor_parallel_size", "pipeline_parallel_size"}


def kwargs_of(cfg: EngineConfig, *, on_gpu: bool) -> tuple[dict, list[str]]:
    return engine_kwargs(cfg, model_dir="/m", on_gpu=on_gpu, bf16=True)


def test_cpu_build_gets_its_workarounds():
    kwargs, notes = kwargs_of(EngineConfig(max_model_len=2048), on_gpu=False)
    assert kwargs["enable_chunked_prefill"] is False
    assert kwargs["max_num_batched_tokens"] == 2048 and kwargs["max_num_seqs"] == 256
    assert kwargs["enforce_eager"] is True and kwargs["kv_cache_memory_bytes"] == GiB
    assert not GPU_ONLY_KEYS & kwargs.keys() and notes == []
    assert kwargs["dtype"] == "bfloat16" and kwargs["enable_prefix_caching"] is True


def test_cuda_keeps_vllms_defaults():
    kwargs, notes = kwargs_of(EngineConfig(max_model_len=2048), on_gpu=True)
    assert not CPU_ONLY_KEYS & kwargs.keys(), "CPU workarounds leaked into the CUDA engine"
    assert kwargs["gpu_memory_utilization"] == 0.85 and kwargs["tensor_parallel_size"] == 1
    assert kwargs["dtype"] == "bfloat16" and notes == []


def test_cuda_passes_what_the_operator_sets():
    cfg = EngineConfig(enable_chunked_prefill=False, max_num_batched_tokens=1024, max_num_seqs=512, max_model_len=2048)
    kwargs, _ = kwargs_of(cfg, on_gpu=True)
    assert (kwargs["enable_chunked_prefill"], kwargs["max_num_batched_tokens"], kwargs["max_num_seqs"]) == (False, 1024, 512)
    assert "enforce_eager" not in kwargs


def test_settings_that_do_not_apply_are_said():
    _, notes = kwargs_of(EngineConfig(kv_cache_gib=4), on_gpu=True)
    assert len(notes) == 1 and "kv_cache_gib=4.0 does not apply on CUDA" in notes[0]
    _, notes = kwargs_of(EngineConfig(tensor_parallel_size=2, gpu_memory_utilization=0.5), on_gpu=False)
    assert sorted(n.split("=")[0] for n in notes) == ["gpu_memory_utilization", "tensor_parallel_size"]
    assert all("does not apply on vLLM's CPU build" in n for n in notes)


def test_cpu_build_refuses_a_token_budget_below_the_model_length_and_says_what_to_change():
    with pytest.raises(ModelError, match="raise it to at least max_model_len"):
        kwargs_of(EngineConfig(max_model_len=4096, max_num_batched_tokens=2048), on_gpu=False)
    kwargs, notes = kwargs_of(EngineConfig(max_model_len=4096, max_num_batched_tokens=2048, enable_chunked_prefill=True), on_gpu=False)
    assert kwargs["enable_chunked_prefill"] is True and "own seed crashes the engine" in notes[0]


def test_scaled_defaults_by_hardware():
    cpu = scaled_defaults(Hardware(cpus=2))
    assert (cpu.max_concurrent_searches, cpu.max_queued, cpu.value_batch_max, cpu.value_batch_size, cpu.hf_max_batch) == (4, 16, 32, 16, 64)
    h200 = scaled_defaults(Hardware(gpus=(GPU(0, 139 * GiB, 141 * GiB, "H200"),), cpus=16))
    assert (h200.max_concurrent_searches, h200.max_queued, h200.value_batch_max, h200.value_batch_size, h200.hf_max_batch) == (32, 128, 256, 64, 256)
    assert "H200" in h200.reason
    small = scaled_defaults(Hardware(gpus=(GPU(0, 20 * GiB, 24 * GiB),)))
    assert (small.max_concurrent_searches, small.max_queued) == (16, 64)


def test_batch_sizes_follow_the_device_unless_set():
    assert (ValueConfig().resolved_batch_size("cpu"), ValueConfig().resolved_batch_max("cpu")) == (16, 32)
    assert (ValueConfig().resolved_batch_size("cuda:0"), ValueConfig().resolved_batch_max("cuda:0")) == (64, 256)
    assert ValueConfig(batch_size=8, batch_max=12).resolved_batch_max("cuda") == 12
    assert EngineConfig(engine="hf").resolved_hf_max_batch("cpu") == 64
    assert EngineConfig(engine="hf").resolved_hf_max_batch("cuda") == 256
    assert EngineConfig(engine="hf", hf_max_batch=8).resolved_hf_max_batch("cuda") == 8


def test_server_admission_limits_scale_unless_set():
    from server.settings import Settings

    gpu = Hardware(gpus=(GPU(0, 139 * GiB, 141 * GiB),))
    assert Settings().admission_limits(Hardware(cpus=2))[:2] == (4, 16)
    assert Settings().admission_limits(gpu)[:2] == (32, 128)
    assert Settings(max_concurrent_searches=3).admission_limits(gpu)[:2] == (3, 128)
    assert Settings(max_concurrent_searches=3, max_queued=0).admission_limits(gpu) == (3, 0, "set")


def test_training_bf16_defaults_to_the_device():
    from models.config import use_bf16
    from training.config import GRPOUpdateConfig

    assert GRPOUpdateConfig().bf16 is None
    assert use_bf16(None, "cuda", native=True) and not use_bf16(None, "cuda", native=False) and not use_bf16(None, "cpu")
    assert use_bf16(True, "cpu") and not use_bf16(False, "cuda:0", native=True)  # set: it wins


def test_socket_folders_of_dead_processes_are_swept(tmp_path, monkeypatch):
    """A CPU engine's socket folder is named after its process; the next engine start removes those
    whose process is gone (a killed job), and keeps live ones and folders of another naming."""
    import subprocess
    import sys
    import tempfile

    from models.vllm_engine import RPC_DIR_PREFIX, make_rpc_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    stale = tmp_path / f"{RPC_DIR_PREFIX}{dead.stdout.strip()}-abc"
    live = tmp_path / f"{RPC_DIR_PREFIX}1-abc"  # pid 1 is alive
    other = tmp_path / f"{RPC_DIR_PREFIX}xyz"
    for d in (stale, live, other):
        d.mkdir()
    (stale / "socket").touch()
    mine = make_rpc_dir()
    assert not stale.exists() and live.exists() and other.exists()
    assert mine.startswith(str(tmp_path / f"{RPC_DIR_PREFIX}{__import__('os').getpid()}-"))
