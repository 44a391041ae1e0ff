"""Checkpoint directories and their `restrl.json` manifest.

A checkpoint is a directory holding either a full transformers model (``format="full"``) or a PEFT
LoRA adapter (``format="lora"``, naming its ``base``), plus ``restrl.json``: what it is (``kind``
policy or value), where it came from (``base``, ``parent``, ``job``, ``config``), how good it was
(``metrics``) and the sha256 of every file in the directory. `write_manifest` hashes the files;
`verify_checkpoint` is what every loader calls before touching weights: only ``.safetensors``
weights are accepted (pickled ``.bin``/``.pt`` files can execute code when loaded), a symbolic link leading
outside the directory is refused (nothing outside a checkpoint is read as part of it), and a missing,
extra or altered file, bad JSON or the wrong kind raises `CheckpointError` naming the file and field.
`locate_checkpoint` turns a path a client sent (the admin API) into a checkpoint directory,
confined to an optional root; `model_folder` turns a model source (a folder, or a Hugging Face Hub
id) into a local folder.

Hashing is the cost of verification: files hash in parallel threads (hashlib releases the GIL), and
a file's digest is remembered for the process while its inode, size, mtime and ctime stay the same
(any write changes them), so loading a base twice (a policy and a value model on it) hashes it once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.base import CheckpointError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "restrl.json"
CheckpointKind = Literal["policy", "value"]
CheckpointFormat = Literal["full", "lora"]

# Weight files that unpickle (and so may run code) when loaded: refused everywhere.
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_HASH_CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 16 << 20


class Manifest(BaseModel):
    """The content of ``restrl.json``."""

    model_config = ConfigDict(extra="forbid")

    kind: CheckpointKind = Field(description="policy (causal LM) or value (scalar-head scorer)")
    format: CheckpointFormat = Field(description="full transformers folder, or a PEFT LoRA adapter")
    base: str = Field(min_length=1, description="the base model (name or path) the weights derive from")
    policy: str | None = Field(
        default=None,
        description="value checkpoints: the base model of the policy whose rollouts trained it (a policy's"
        " `base_model`); None = unknown (older manifests: taken to be `base`)",
    )
    parent: str | None = Field(default=None, description="the checkpoint this one was trained from")
    created: str = Field(description="ISO-8601 UTC time of writing")
    job: str | None = Field(default=None, description="the training job that wrote it")
    config: dict[str, Any] = Field(default_factory=dict, description="the job's configuration")
    metrics: dict[str, Any] = Field(default_factory=dict, description="evaluation results")
    files: dict[str, str] = Field(description="relative path -> sha256 of every file except restrl.json")

    def digest(self) -> str:
        """A stable hash of the weights and configuration files (not of the metadata)."""
        blob = json.dumps(sorted(self.files.items())).encode()
        return hashlib.sha256(blob).hexdigest()


_digests: dict[tuple[str, int, int, int, int, int], str] = {}  # (path, dev, inode, size, mtime, ctime) -> sha256
_digests_lock = threading.Lock()
_HASH_THREADS = 4


def sha256_file(path: Path) -> str:
    """The file's sha256 (remembered while the file is unchanged: see the module doc)."""
    info = path.stat()
    key = (str(path.resolve()), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    with _digests_lock:
        known = _digests.get(key)
    if known is not None:
        return known
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    with _digests_lock:
        _digests[key] = digest
    return digest


def _hash_all(root: Path, names: list[str]) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, max(1, len(names)))) as pool:
        return dict(zip(names, pool.map(lambda name: sha256_file(root / name), names), strict=True))


def _refuse_outward_link(path: Path, real_root: Path) -> None:
    if path.is_symlink() and not path.resolve().is_relative_to(real_root):
        raise CheckpointError(f"{path}: a symbolic link leading outside the checkpoint directory (refused)")


def _listed_files(directory: Path) -> list[str]:
    """Every regular file under ``directory`` (manifest and ``__pycache__`` aside). Symbolic links
    that stay inside the directory are fine (linked folders are not entered); one leading outside
    it raises `CheckpointError`, so that no file outside a checkpoint is ever read as part of it."""
    real_root = directory.resolve()
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):  # followlinks=False
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in (*dirnames, *filenames):
            _refuse_outward_link(here / name, real_root)
        names.extend((here / name).relative_to(directory).as_posix() for name in filenames
                     if name != MANIFEST_NAME and (here / name).is_file())
    return sorted(names)


def _refuse_unsafe(directory: Path, names: list[str]) -> None:
    for name in names:
        if name.endswith(UNSAFE_SUFFIXES):
            raise CheckpointError(
                f"{directory / name}: pickled weight files are refused (they can run code when loaded);"
                " save the model with safetensors (save_pretrained(..., safe_serialization=True))"
            )


def hash_files(directory: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 of every file under ``directory`` except the manifest."""
    root = Path(directory)
    return _hash_all(root, _listed_files(root))


def write_manifest(
    directory: str | os.PathLike[str],
    *,
    kind: CheckpointKind,
    format: CheckpointFormat,
    base: str,
    policy: str | None = None,
    parent: str | None = None,
    job: str | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Manifest:
    """Hash the directory's files and write ``restrl.json`` atomically. Call it last, after every
    other file of the checkpoint is written."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory")
    names = _listed_files(root)
    _refuse_unsafe(root, names)
    if not any(n.endswith(".safetensors") for n in names):
        raise CheckpointError(f"{root}: no .safetensors weights to describe")
    manifest = Manifest(
        kind=kind,
        format=format,
        base=base,
        policy=policy,
        parent=parent,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        job=job,
        config=config or {},
        metrics=metrics or {},
        files=_hash_all(root, names),
    )
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".restrl.", suffix=".json.tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(manifest.model_dump_json(indent=2))
    os.replace(tmp, root / MANIFEST_NAME)
    return manifest


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Parse ``restrl.json`` without checking the files (see `verify_checkpoint`)."""
    path = Path(directory) / MANIFEST_NAME
    try:
        _refuse_outward_link(path, Path(directory).resolve())
        info = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (every checkpoint directory needs its manifest)") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path}: not a regular file")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{path}: {info.st_size} bytes, more than a manifest's {MAX_MANIFEST_BYTES}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise CheckpointError(f"{path}: field '{field}': {err['msg']}") from None


def verify_checkpoint(
    directory: str | os.PathLike[str],
    *,
    kind: CheckpointKind | None = None,
    check_hashes: bool = True,
) -> Manifest:
    """Validate a checkpoint directory against its manifest and return the manifest.

    Raises `CheckpointError` (naming the file and field) when: the directory or manifest is missing,
    the JSON is bad or a field invalid, ``kind`` differs, a pickled weight file is present, there
    are no safetensors weights, a listed file is missing, an unlisted file is present, or a hash
    differs.
    """
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint directory does not exist")
    manifest = read_manifest(root)
    mpath = root / MANIFEST_NAME
    if kind is not None and manifest.kind != kind:
        raise CheckpointError(f"{mpath}: field 'kind' is '{manifest.kind}' but a '{kind}' checkpoint is needed")
    for name in manifest.files:
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or ".." in parts or "\\" in name:
            raise CheckpointError(f"{mpath}: field 'files' names {name!r}, which is not a path inside the checkpoint directory")
    present = _listed_files(root)
    _refuse_unsafe(root, present)
    if not any(n.endswith(".safetensors") for n in manifest.files):
        raise CheckpointError(f"{mpath}: field 'files' lists no .safetensors weights")
    missing = sorted(set(manifest.files) - set(present))
    if missing:
        raise CheckpointError(f"{root / missing[0]}: listed in {MANIFEST_NAME} field 'files' but missing")
    extra = sorted(set(present) - set(manifest.files))
    if extra:
        raise CheckpointError(f"{root / extra[0]}: present but not listed in {MANIFEST_NAME} field 'files'")
    if check_hashes:
        actual_files = _hash_all(root, list(manifest.files))
        for name, expected in manifest.files.items():
            actual = actual_files[name]
            if actual != expected:
                raise CheckpointError(
                    f"{root / name}: sha256 {actual[:12]}... does not match {MANIFEST_NAME} field"
                    f" 'files.{name}' ({expected[:12]}...): the file changed after the manifest was written"
                )
    return manifest


def inspect_directory(directory: str | os.PathLike[str], *, kind: CheckpointKind) -> tuple[Manifest | None, str]:
    """For loaders: verify a checkpoint with a manifest, or accept a plain HF/PEFT folder without
    one (safetensors only, logged as unverified). Returns the manifest (or None) and an 8-hex hash
    identifying the weights for version strings."""
    root = Path(directory)
    if (root / MANIFEST_NAME).exists():
        manifest = verify_checkpoint(root, kind=kind)
        return manifest, manifest.digest()[:8]
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint directory does not exist")
    names = _listed_files(root)
    _refuse_unsafe(root, names)
    if not any(n.endswith(".safetensors") for n in names):
        raise CheckpointError(f"{root}: no .safetensors weights found")
    logger.warning("%s has no %s: loading it unverified", root, MANIFEST_NAME)
    digest = hashlib.sha256(json.dumps(sorted(hash_files(root).items())).encode()).hexdigest()
    return None, digest[:8]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def model_folder(source: str) -> Path:
    """The local folder of a model ``source``: an existing folder, or a Hugging Face Hub id
    (``org/name``) taken from the local hub cache, or downloaded where the hub is reachable (never
    when ``HF_HUB_OFFLINE`` is set). `CheckpointError` saying what to do otherwise."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists() or not _HUB_ID.match(source) or source.startswith((".", "~")):
        raise CheckpointError(f"{source}: not a model folder")
    from huggingface_hub import snapshot_download

    try:
        try:
            folder = snapshot_download(source, local_files_only=True)
        except Exception:  # not in the local cache: ask the hub (huggingface_hub honours HF_HUB_OFFLINE)
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
                raise
            folder = snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as exc:
        raise CheckpointError(
            f"{source}: not a local folder, and the Hugging Face Hub could not provide it ({type(exc).__name__}: {exc})."
            " Pass a local model folder, or download it first where the hub is reachable"
            f" (huggingface-cli download {source}) and run with that cache (HF_HOME)"
        ) from None
    return Path(folder)


def locate_checkpoint(path: str, *, root: str | os.PathLike[str] | None) -> Path:
    """The directory a client-sent checkpoint ``path`` (the admin API) names, symbolic links resolved.

    Without ``root`` the path must be absolute; with one, a relative path is taken under ``root``
    and the directory must lie under it (after resolving links: ``..`` or a link cannot leave it).
    The directory must exist and hold a ``restrl.json`` manifest. Nothing is listed or read here:
    a wrong path costs a few ``stat`` calls. `CheckpointError` otherwise; its message names
    ``path`` as sent and nothing else of the file system (not the root, not where a link leads).
    """
    shown = repr(path)
    if not path.strip():
        raise CheckpointError(f"{shown}: empty checkpoint path")
    candidate = Path(path).expanduser() if root is None else Path(root) / path
    if root is None and not candidate.is_absolute():
        raise CheckpointError(f"{shown}: not an absolute path (relative paths need a checkpoint root: RESTRL_CHECKPOINT_ROOT)")
    where = " under the checkpoint root" if root is not None else ""
    try:
        real = candidate.resolve(strict=True)
        inside = root is None or real.is_relative_to(Path(root).resolve(strict=True))
        is_dir = real.is_dir()
    except (OSError, ValueError, RuntimeError):  # missing, a link loop, a NUL byte, a name too long
        inside = is_dir = False
    if not (inside and is_dir):
        raise CheckpointError(f"{shown}: no checkpoint directory at this path{where}")
    manifest = real / MANIFEST_NAME
    if not manifest.is_file():
        raise CheckpointError(f"{shown}: no {MANIFEST_NAME} in this directory (checkpoints are loaded with their manifest only)")
    return real
