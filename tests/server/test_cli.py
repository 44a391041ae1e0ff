"""`restrl serve` / `restrl solve`: flags mirror the settings; the end-to-end run from a fresh
process (engine start included) is `slow`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import restrl
from server.cli import _problem_body, settings_overrides
from server.settings import setting_rows

ROOT = Path(__file__).resolve().parents[2]


def test_serve_has_a_flag_per_setting_except_secrets() -> None:
    parser = restrl.build_parser()
    args = parser.parse_args(["serve", "--port", "0", "--max-samples", "7", "--policy.engine", "hf", "--engine", "vllm"])
    assert settings_overrides(args) == {"port": 0, "max_samples": 7, "policy": {"engine": "hf"}, "engine": "vllm"}
    help_text = subprocess.run([sys.executable, "-m", "restrl", "serve", "--help"], capture_output=True, text=True,
                               cwd=ROOT, check=True).stdout
    for key, _ in setting_rows():
        flag = {"policy.model": "--policy", "value.model": "--value"}.get(key, f"--{key.replace('_', '-')}")
        assert (flag in help_text) == (key not in ("admin_token", "api_keys")), flag
    assert "--kv-cache-gib" not in help_text  # the flat flags of earlier releases parse, unlisted
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--policy.engine", "tgi"])


def test_solve_accepts_bodies_problems_and_jsonl_records() -> None:
    assert _problem_body({"problem": {"statement": "s"}, "strategy": "greedy"})["strategy"] == "greedy"
    assert _problem_body({"statement": "s"}) == {"problem": {"statement": "s"}}
    record = {"id": "p1", "prompt": "Add.", "starter_code": "def add(a, b):\n", "entry_point": "add",
              "tests": [{"kind": "call", "args": [1, 2], "expected": 3}], "public_tests": []}
    assert _problem_body(record) == {"problem": {"id": "p1", "statement": "Add.", "starter_code": "def add(a, b):\n",
                                                 "entry_point": "add", "public_tests": []}}
    with pytest.raises(ValueError, match="problem"):
        _problem_body({"question": "?"})


@pytest.mark.slow
def test_serve_and_solve_end_to_end(tmp_path: Path) -> None:
    """A fresh `restrl serve --port 0` on the default model; `restrl solve -` prints a program;
    SIGTERM drains and exits."""
    env = {**os.environ, "RESTRL_ADMIN_TOKEN": "e2e-secret", "RESTRL_KV_CACHE_GIB": "0.5", "RESTRL_MAX_MODEL_LEN": "2048"}
    log = (tmp_path / "serve.log").open("w+")
    server = subprocess.Popen([sys.executable, "-m", "restrl", "serve", "--port", "0", "--drain-timeout-s", "10"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 300
        while url is None and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.5)
            match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", Path(log.name).read_text())
            url = match.group(1) if match else None
        assert url, Path(log.name).read_text()[-3000:]
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        while time.monotonic() < deadline:
            ready = httpx.get(f"{url}/ready", timeout=120)
            if ready.status_code == 200:
                break
            assert "load failed" not in ready.text, ready.text
            time.sleep(2)
        assert ready.status_code == 200, ready.text
        problem = {"statement": "Return the sum of a and b.", "starter_code": "def add(a, b):\n", "entry_point": "add"}
        solved = subprocess.run([sys.executable, "-m", "restrl", "solve", "-", "--url", url, "--strategy", "best_of_n",
                                 "--samples", "2", "--json"], input=json.dumps(problem), capture_output=True,
                                text=True, cwd=ROOT, timeout=300)
        assert solved.returncode == 0, solved.stderr
        result = json.loads(solved.stdout)
        assert result["program"].startswith("def add(a, b):") and result["usage"]["samples"] == 2
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        assert "e2e-secret" not in Path(log.name).read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
