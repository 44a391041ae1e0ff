"""The monitoring path end to end on loopback: a live `restrl serve` (real engine, real default model),
Debian's real Prometheus scraping it with the repo's own scrape job and alert rules, and every Grafana
dashboard query run through that Prometheus.

One server and one Prometheus per module; two small greedy requests (max_tokens 32), one re-ranked
in the sandbox, and one failed hot swap.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deploy_checks import (
    PROMETHEUS_DIR,
    ROOT,
    SCRAPE_SERIES,
    VENV_BIN,
    alert_exprs,
    dashboard_exprs,
    exported_series,
    load_dashboard,
    promql_metric_names,
)

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus package is not installed (see .ci/run)"),
    pytest.mark.timeout(1500),  # the first test also pays for the module's server start (bounded below)
]

ADMIN_TOKEN = "deploy-test-admin-token"
PROBLEM = {"statement": "Write a function add(a, b) that returns the sum of a and b.",
           "starter_code": "def add(a, b):\n", "entry_point": "add",
           "public_tests": [{"kind": "assert", "code": "assert add(2, 3) == 5"}]}
# Grafana's variables, as a Prometheus query sees them
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m", "$instance": ".*", "$strategy": ".*"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log else ""
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})\n{tail}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def restrl_url(default_model_dir, tmp_path_factory) -> Iterator[str]:
    """`restrl serve` as the image runs it (environment configuration, admin token set) on a free port."""
    port = free_port()
    log = tmp_path_factory.mktemp("restrl-serve") / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTRL_") or k == "RESTRL_CACHE"}
    env.update(RESTRL_HOST="127.0.0.1", RESTRL_PORT=str(port), RESTRL_ADMIN_TOKEN=ADMIN_TOKEN,
               RESTRL_KV_CACHE_GIB="0.5", RESTRL_MAX_MODEL_LEN="2048", RESTRL_SANDBOX_WORKERS="1",
               RESTRL_READY_TIMEOUT_S="300")  # generous: the probe is slow on a shared 2-core machine
    with log.open("wb") as out:
        proc = subprocess.Popen([str(VENV_BIN / "restrl"), "serve"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, timeout=300,
                 what="restrl serve /health", proc=proc, log=log)
        # /health is liveness only; /ready runs a real expansion and value call once the models are loaded
        # (bounds sized for a 2-core machine shared with other test runs; uncontended it takes seconds)
        wait_for(lambda: httpx.get(f"{url}/ready", timeout=300).status_code == 200, timeout=600,
                 what="restrl serve /ready", proc=proc, log=log)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def prometheus_url(restrl_url, tmp_path_factory) -> Iterator[str]:
    """Prometheus with deploy/prometheus's job and rules; only the discovery and intervals are changed."""
    folder = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        if job["job_name"] == "restrl":  # compose's DNS discovery -> the live server
            del job["dns_sd_configs"]
            job["static_configs"] = [{"targets": [restrl_url.removeprefix("http://")]}]
        else:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, timeout=60,
                 what="prometheus /-/ready", proc=proc, log=log)
        yield url
    finally:
        stop(proc)


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
    return body["data"]["result"]


def solve(url: str, **extra: Any) -> dict[str, Any]:
    body = {"problem": PROBLEM, "strategy": "greedy", "max_tokens": 32, "budget": {"deadline_s": 120}, **extra}
    response = httpx.post(f"{url}/v1/solve", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def traffic(restrl_url, prometheus_url, tmp_path_factory) -> dict[str, Any]:
    """Two waves of requests with a scrape between them (rates need two samples of a series), a sandbox
    re-rank and a failed hot swap fanned out by deploy/swap_all.py: a value checkpoint whose weights were
    corrupted after its manifest was written (a path that does not exist is refused before any load
    and is not a swap event)."""
    corrupt = tmp_path_factory.mktemp("corrupt-value") / "value"
    shutil.copytree(ROOT / "models" / "default" / "value", corrupt)
    weights = corrupt / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)
    weights.write_bytes(bytes(data))
    first = solve(restrl_url)
    wait_for(lambda: query(prometheus_url, 'restrl:requests_total{route="/v1/solve"}'), timeout=30,
             what="first wave scraped")
    time.sleep(1.5)
    second = [solve(restrl_url, rerank_with_tests=True)]
    swap = subprocess.run([sys.executable, str(ROOT / "deploy" / "swap_all.py"), "--replica", restrl_url,
                           "--value", str(corrupt), "--timeout", "120"],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "RESTRL_ADMIN_TOKEN": ADMIN_TOKEN})
    time.sleep(3)  # a few 1 s scrapes and rule evaluations
    return {"responses": [first, *second], "swap": swap}


def test_the_image_health_check_passes_on_the_live_server(restrl_url) -> None:
    port = restrl_url.rsplit(":", 1)[1]
    script = str(ROOT / "deploy" / "healthcheck.py")
    ok = subprocess.run([sys.executable, script], env={**os.environ, "RESTRL_PORT": port}, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    dead = subprocess.run([sys.executable, script], env={**os.environ, "RESTRL_PORT": str(free_port())},
                          capture_output=True, text=True, timeout=30)
    assert dead.returncode == 1 and "unhealthy" in dead.stderr


def test_prometheus_scrapes_the_server_and_the_target_is_up(prometheus_url, restrl_url) -> None:
    def restrl_target() -> dict | None:
        targets = httpx.get(f"{prometheus_url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        found = [t for t in targets if t["labels"]["job"] == "restrl" and t["health"] == "up"]
        return found[0] if found else None

    target = wait_for(restrl_target, timeout=30, what="restrl target up")
    assert target["scrapeUrl"] == f"{restrl_url}/metrics"
    assert [r["value"][1] for r in query(prometheus_url, 'up{job="restrl"}')] == ["1"]
    rules = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded = {rule["name"]: rule["health"] for group in rules for rule in group["rules"]}
    assert len(loaded) == len(alert_exprs()) and set(loaded.values()) <= {"ok", "unknown"}, loaded


def test_key_series_have_data_after_requests(prometheus_url, traffic) -> None:
    assert all(r["program"] for r in traffic["responses"])
    solve_count = query(prometheus_url, 'sum(restrl:requests_total{route="/v1/solve", strategy="greedy", status="200"})')
    assert float(solve_count[0]["value"][1]) >= 2
    for expr in ('sum(rate(restrl:requests_total{route="/v1/solve"}[1m])) > 0',
                 'sum(restrl:request_latency_seconds_count{strategy="greedy"}) >= 2',
                 'sum(restrl:search_nodes_count{strategy="greedy"}) >= 2',
                 'sum(restrl:search_policy_tokens_sum{strategy="greedy"}) > 0',
                 "restrl:engine_generated_tokens_total > 0",
                 "restrl:engine_prompt_tokens_total > 0",
                 "restrl:queue_depth == 0",
                 "restrl:active_searches == 0",
                 "count(restrl:model_info == 1) == 1",
                 "sum(restrl:sandbox_verdicts_total) >= 1"):
        assert query(prometheus_url, expr), f"no data for {expr!r}"


def test_failed_swap_is_reported_by_the_fan_out_the_metrics_and_the_alert(prometheus_url, restrl_url, traffic) -> None:
    swap = traffic["swap"]
    steps = [json.loads(line) for line in swap.stdout.splitlines()]
    assert swap.returncode == 1, swap.stdout + swap.stderr
    assert steps[0]["step"] == "preflight" and steps[0]["ok"]
    assert steps[-1]["step"] == "swap" and not steps[-1]["ok"] and "corrupt" in steps[-1]["error"]
    assert ADMIN_TOKEN not in swap.stdout + swap.stderr
    assert query(prometheus_url, 'sum(restrl:swap_events_total{result="failed"}) >= 1')
    # the server kept serving the pair it had
    assert httpx.get(f"{restrl_url}/health", timeout=5).status_code == 200

    def swap_alert() -> list:
        alerts = httpx.get(f"{prometheus_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "RestrlSwapFailed" and a["state"] == "firing"]

    wait_for(swap_alert, timeout=20, what="RestrlSwapFailed firing")


def test_dashboard_queries_run_and_reference_live_series(prometheus_url, restrl_url, traffic) -> None:
    live = exported_series(httpx.get(f"{restrl_url}/metrics", timeout=10).text)
    results: dict[str, int] = {}
    for where, expr in dashboard_exprs(load_dashboard()) + alert_exprs():
        missing = promql_metric_names(expr) - live - SCRAPE_SERIES
        assert not missing, f"{where}: {sorted(missing)} not in the live /metrics"
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        results[where] = len(query(prometheus_url, expr))  # also proves the PromQL parses
    empty = sorted(where for where, n in results.items() if n == 0 and where.startswith("panel"))
    # With traffic sent, only panels of events that did not happen may be empty.
    allowed_empty = {"Cancelled searches", "429s and rejections"}
    assert all(any(f"'{title}'" in where for title in allowed_empty) for where in empty), empty


def swap_all(*args: str) -> tuple[int, list[dict[str, Any]]]:
    out = subprocess.run([sys.executable, str(ROOT / "deploy" / "swap_all.py"), *args, "--timeout", "300"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "RESTRL_ADMIN_TOKEN": ADMIN_TOKEN})
    assert ADMIN_TOKEN not in out.stdout + out.stderr
    return out.returncode, [json.loads(line) for line in out.stdout.splitlines()]


def active_pair(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/admin/models", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["active"]


def test_fan_out_touches_nothing_when_a_replica_is_unreachable(restrl_url, traffic) -> None:
    before = active_pair(restrl_url)
    code, steps = swap_all("--replica", restrl_url, "--replica", f"http://127.0.0.1:{free_port()}",
                           "--policy", "/nonexistent/checkpoint")
    assert code == 1
    assert [s["step"] for s in steps] == ["preflight", "preflight"] and steps[0]["ok"] and not steps[1]["ok"]
    assert active_pair(restrl_url)["pair_id"] == before["pair_id"]


@pytest.mark.slow
def test_fan_out_swaps_a_lora_adapter_and_rolls_back(restrl_url, default_model_dir, tmp_path, traffic) -> None:
    """A real adapter (random rank-8 LoRA with its manifest) swapped in through swap_all.py, then undone."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from models.checkpoints import write_manifest

    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    adapter = tmp_path / "policy-lora"
    get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                     init_lora_weights=False)).save_pretrained(adapter)
    write_manifest(adapter, kind="policy", format="lora", base=str(default_model_dir), job="tests/deploy")
    before = active_pair(restrl_url)

    code, steps = swap_all("--replica", restrl_url, "--policy", str(adapter))
    assert code == 0, steps
    swapped = active_pair(restrl_url)
    assert swapped["policy_version"] != before["policy_version"] and steps[-1] == {
        "step": "verify", "ok": True, "versions": {restrl_url: [swapped["policy_version"], swapped["value_version"]]}}
    assert solve(restrl_url)["policy_version"] == swapped["policy_version"]

    code, steps = swap_all("--replica", restrl_url, "--rollback")
    assert code == 0, steps
    assert active_pair(restrl_url)["policy_version"] == before["policy_version"]
