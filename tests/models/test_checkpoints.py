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


# --- issue 24: nothing outside a checkpoint is read as part of it; client paths are confined ---


def _manifest_with(ckpt, name: str, digest: str) -> None:
    raw = json.loads((ckpt / MANIFEST_NAME).read_text())
    raw["files"][name] = digest
    (ckpt / MANIFEST_NAME).write_text(json.dumps(raw))


def test_a_symlink_leading_outside_is_refused_even_when_the_manifest_lists_it(ckpt, tmp_path):
    secret = tmp_path / "secret.txt"  # stands for /etc/shadow
    secret.write_text("root:x:0:0")
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").symlink_to(secret)
    from models.checkpoints import sha256_file

    _manifest_with(ckpt, "model.safetensors", sha256_file(secret))  # a manifest made to match
    with pytest.raises(CheckpointError, match=r"model\.safetensors: a symbolic link leading outside") as err:
        verify_checkpoint(ckpt)
    assert str(secret) not in str(err.value)
    with pytest.raises(CheckpointError, match="symbolic link leading outside"):
        inspect_directory(ckpt, kind="policy")
    (ckpt / MANIFEST_NAME).unlink()  # the unverified path (startup folders without a manifest) refuses it too
    with pytest.raises(CheckpointError, match="symbolic link leading outside"):
        inspect_directory(ckpt, kind="policy")


def test_a_symlinked_folder_or_manifest_leading_outside_is_refused(ckpt, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "restrl.json").write_text("{}")
    (ckpt / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(CheckpointError, match=r"linked: a symbolic link leading outside"):
        verify_checkpoint(ckpt)
    (ckpt / "linked").unlink()
    manifest = ckpt / MANIFEST_NAME
    manifest.rename(outside / "real.json")
    manifest.symlink_to(outside / "real.json")
    with pytest.raises(CheckpointError, match=r"restrl\.json: a symbolic link leading outside"):
        verify_checkpoint(ckpt)


def test_a_symlink_inside_the_checkpoint_is_fine(ckpt):
    (ckpt / "config.json").rename(ckpt / "config.real.json")
    (ckpt / "config.json").symlink_to("config.real.json")
    write_manifest(ckpt, kind="policy", format="full", base="base-model")
    assert {"config.json", "config.real.json"} <= set(verify_checkpoint(ckpt).files)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../x"])
def test_manifest_names_outside_the_directory_are_refused(ckpt, name):
    _manifest_with(ckpt, name, "0" * 64)
    with pytest.raises(CheckpointError, match="not a path inside the checkpoint directory"):
        verify_checkpoint(ckpt)


def test_locate_checkpoint_confines_client_paths(ckpt, tmp_path):
    from models.checkpoints import locate_checkpoint

    root = tmp_path
    assert locate_checkpoint(str(ckpt), root=None) == ckpt.resolve()
    assert locate_checkpoint("ckpt", root=root) == ckpt.resolve()
    assert locate_checkpoint(str(ckpt), root=root) == ckpt.resolve()
    (tmp_path / "latest").symlink_to(ckpt, target_is_directory=True)  # a link inside the root is fine
    assert locate_checkpoint("latest", root=root) == ckpt.resolve()
    inner = tmp_path / "inner-root"
    inner.mkdir()
    (inner / "escape").symlink_to(ckpt, target_is_directory=True)
    (ckpt / "plain").mkdir()
    refused = {
        ("", None): "empty checkpoint path",
        ("ckpt", None): "not an absolute path",
        ("../../", root): "no checkpoint directory at this path under the checkpoint root",
        ("/usr", root): "no checkpoint directory at this path under the checkpoint root",
        ("escape", inner): "no checkpoint directory at this path under the checkpoint root",  # a link leaving the root
        ("missing", root): "no checkpoint directory at this path under the checkpoint root",
        ("ckpt/model.safetensors", root): "no checkpoint directory",
        ("bad\0name", root): "no checkpoint directory",
        ("/usr", None): "no restrl.json in this directory",
        ("ckpt/plain", root): "no restrl.json in this directory",
    }
    for (path, where), message in refused.items():
        with pytest.raises(CheckpointError) as err:
            locate_checkpoint(path, root=where)
        assert message in str(err.value), (path, str(err.value))
        assert str(err.value).startswith(repr(path)) and str(tmp_path) not in str(err.value).replace(repr(path), "")
