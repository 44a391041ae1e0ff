"""`restrl models prepare` and `restrl models info` (in-process, through `restrl.main`)."""

from __future__ import annotations

import json

from models import write_manifest
from restrl import main


def test_prepare_prints_the_folder(default_model_dir, capsys):
    assert main(["models", "prepare"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(default_model_dir))


def test_info_verifies_and_prints(tmp_path, capsys):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"w")
    write_manifest(tmp_path, kind="value", format="lora", base="b")
    assert main(["models", "info", str(tmp_path), "--kind", "value"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kind"] == "value" and len(printed["digest"]) == 8
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")
    assert main(["models", "info", str(tmp_path)]) == 1
    assert "sha256" in capsys.readouterr().err
