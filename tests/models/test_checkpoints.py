"""Manifest writing and load-time validation of checkpoint directories (tiny files, no model)."""

from __future__ import annotations

import json

import pytest

from models.base import CheckpointError
from models.checkpoints import (
    MANIFEST_NAME,
    inspect_directory,
    read_manifest,
    verify_checkpoint,
    write_manifest,
)


@pytest.fixture
def ckpt(tmp_path):
    d = tmp_path / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights-v1")
    (d / "config.json").write_text('{"a": 1}')
    (d / "sub" / "extra.json").write_text("{}")
    write_manifest(d, kind="policy", format="full", base="base-model", job="job-1", metrics={"pass1": 0.1})
    return d


def test_round_trip_lists_every_file_with_its_hash(ckpt):
    m = verify_checkpoint(ckpt, kind="policy")
    assert set(m.files) == {"model.safetensors", "config.json", "sub/extra.json"}
    assert m.kind == "policy" and m.format == "full" and m.base == "base-model" and m.metrics == {"pass1": 0.1}
    assert len(m.digest()) == 64


def test_digest_changes_with_weights(ckpt, tmp_path):
    before = read_manifest(ckpt).digest()
    (ckpt / "model.safetensors").write_bytes(b"weights-v2")
    after = write_manifest(ckpt, kind="policy", format="full", base="base-model").digest()
    assert before != after


def test_changed_file_is_named(ckpt):
    (ckpt / "config.json").write_text('{"a": 2}')
    with pytest.raises(CheckpointError, match=r"config\.json.*sha256.*files\.config\.json"):
        verify_checkpoint(ckpt)


def test_missing_file_is_named(ckpt):
    (ckpt / "sub" / "extra.json").unlink()
    with pytest.raises(CheckpointError, match=r"sub/extra\.json.*missing"):
        verify_checkpoint(ckpt)


def test_extra_file_is_named(ckpt):
    (ckpt / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"notes\.txt.*not listed"):
        verify_checkpoint(ckpt)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.pt", "x.pkl"])
def test_pickled_weights_are_refused(ckpt, name):
    (ckpt / name).write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickled"):
        verify_checkpoint(ckpt)


def test_pickled_weights_refused_when_writing(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"w")
    (tmp_path / "pytorch_model.bin").write_bytes(b"w")
    with pytest.raises(CheckpointError, match="pickled"):
        write_manifest(tmp_path, kind="policy", format="full", base="b")


def test_wrong_kind(ckpt):
    with pytest.raises(CheckpointError, match=r"field 'kind' is 'policy'.*'value'"):
        verify_checkpoint(ckpt, kind="value")


def test_bad_json_names_line(ckpt):
    (ckpt / MANIFEST_NAME).write_text('{"kind": "policy",\n  oops}')
    with pytest.raises(CheckpointError, match=r"restrl\.json: invalid JSON at line 2"):
        verify_checkpoint(ckpt)


def test_bad_field_is_named(ckpt):
    raw = json.loads((ckpt / MANIFEST_NAME).read_text())
    raw["format"] = "gguf"
    (ckpt / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"field 'format'"):
        verify_checkpoint(ckpt)


def test_unknown_field_is_named(ckpt):
    raw = json.loads((ckpt / MANIFEST_NAME).read_text())
    raw["surprise"] = 1
    (ckpt / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"field 'surprise'"):
        verify_checkpoint(ckpt)


def test_missing_manifest_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        verify_checkpoint(tmp_path / "nope")
    (tmp_path / "model.safetensors").write_bytes(b"w")
    with pytest.raises(CheckpointError, match=r"restrl\.json: missing"):
        verify_checkpoint(tmp_path)


def test_no_safetensors_listed(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no .safetensors"):
        write_manifest(tmp_path, kind="value", format="lora", base="b")


def test_plain_folder_without_manifest_is_accepted_unverified(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"w")
    manifest, digest = inspect_directory(tmp_path, kind="policy")
    assert manifest is None and len(digest) == 8
    (tmp_path / "model.bin").write_bytes(b"w")
    with pytest.raises(CheckpointError, match="pickled"):
        inspect_directory(tmp_path, kind="policy")
