"""Multi-process training: the processes that do not sample wait for the main one at a barrier, as
long as `RestGRPOConfig.distributed_timeout_s` allows (issue 21 item 6). Two real processes on a
gloo process group (the CPU stand-in for NCCL): the timeout given is the one the group applies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RANK = """
import sys, time
from training.rest_grpo import distributed_state
state = distributed_state(float(sys.argv[1]), cpu=True)
assert state.num_processes == 2, state.num_processes
if state.is_main_process:
    time.sleep(float(sys.argv[2]))  # the sampling stage
try:
    state.wait_for_everyone()
    print("joined", flush=True)
except Exception as exc:
    print("timed out:", type(exc).__name__, flush=True)
    sys.exit(3)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(timeout_s: float, main_busy_s: float) -> list[tuple[int, str]]:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, "-c", RANK, str(timeout_s), str(main_busy_s)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=180)
        out.append((p.returncode, text))
    return out


@pytest.mark.timeout(400)
def test_waiting_ranks_outlast_a_main_stage_longer_than_the_default_wait_but_not_the_configured_one():
    (rc_main, out_main), (rc_other, out_other) = _two_ranks(timeout_s=60, main_busy_s=6)
    assert rc_main == 0 and "joined" in out_main, out_main[-2000:]
    assert rc_other == 0 and "joined" in out_other, out_other[-2000:]

    _, (rc_other, out_other) = _two_ranks(timeout_s=2, main_busy_s=6)  # the same wait with a short timeout fails
    assert rc_other != 0 and "joined" not in out_other, out_other[-2000:]


def test_the_trainer_waits_as_long_as_the_process_group(tmp_path):
    from training.config import RestGRPOConfig
    from training.rest_grpo import load_trainable, resolve_policy

    config = RestGRPOConfig.model_validate({"output_dir": str(tmp_path / "run"), "data": {"train_file": "x.jsonl"},
                                            "distributed_timeout_s": 7200})
    _, _, shared = load_trainable(config, resolve_policy(config))  # the TrainingArguments fields every update shares
    assert shared["ddp_timeout"] == 7200
    default = RestGRPOConfig.model_validate({"output_dir": "runs/x", "data": {"train_file": "x.jsonl"}})
    assert default.distributed_timeout_s == 6 * 3600  # above NCCL's 10 min default
    with pytest.raises(ValueError, match="distributed_timeout_s"):
        RestGRPOConfig.model_validate({"output_dir": "runs/x", "data": {"train_file": "x.jsonl"}, "distributed_timeout_s": 5})
