"""`restrl train ...` and `restrl report ...`.

``train`` is a group: each entry of `TRAIN_SUBCOMMANDS` adds one job (``policy`` now; value-data
collection and value training register here too). ``report`` is a group likewise
(`REPORT_SUBCOMMANDS`). Heavy imports happen inside the handlers.

Multi-GPU: ``accelerate launch -m restrl train policy --config FILE`` (or ``accelerate launch
restrl.py train policy ...``); the job reads its devices from accelerate and never hard-codes CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def _train_policy(args: argparse.Namespace) -> int:
    from training.config import ConfigError, load_config
    from training.rest_grpo import TrainingDataError, export_saved_step, run_iteration

    overrides: dict[str, Any] = {}
    for item in args.set or []:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    try:
        config = load_config(args.config, overrides=overrides)
        if args.export_step is not None:
            out = export_saved_step(config, step=args.export_step or None)
        else:
            out = run_iteration(config, resume=args.resume)
    except (ConfigError, TrainingDataError, FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: resume with restrl train policy --config {args.config} --resume", file=sys.stderr)
        return 130
    except ValueError as exc:  # DatasetError and config/run mismatches
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _register_policy(sub: Any) -> None:
    p = sub.add_parser("policy", help="one ReST-GRPO (or GRPO / DAPO baseline) iteration")
    p.add_argument("--config", required=True, help="YAML or JSON RestGRPOConfig (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same output_dir")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. grpo.max_steps=2")
    p.add_argument(
        "--export-step",
        type=int,
        nargs="?",
        const=0,
        metavar="STEP",
        help="no training: export saved trainer step STEP (default: the last) of this run to final/ with its manifest",
    )
    p.set_defaults(func=_train_policy)


def _report_training(args: argparse.Namespace) -> int:
    from training.report import report_training

    written = report_training(args.run_dirs, out_dir=args.out, labels=args.label)
    for path in written:
        print(path)
    return 0


def _register_report_training(sub: Any) -> None:
    p = sub.add_parser("training", help="plots comparing policy-training runs (PNG)")
    p.add_argument("run_dirs", nargs="+", help="run directories written by `restrl train policy`")
    p.add_argument("--out", default="bench/plots", help="folder for the PNG files")
    p.add_argument("--label", action="append", help="a label per run (default: the folder names)")
    p.set_defaults(func=_report_training)


TRAIN_SUBCOMMANDS: dict[str, Callable[[Any], None]] = {"policy": _register_policy}
REPORT_SUBCOMMANDS: dict[str, Callable[[Any], None]] = {"training": _register_report_training}


def register(subparsers: Any) -> None:
    train = subparsers.add_parser("train", help="offline training jobs")
    train_sub = train.add_subparsers(dest="train_command", metavar="JOB")
    for add in TRAIN_SUBCOMMANDS.values():
        add(train_sub)
    train.set_defaults(func=lambda a: (train.print_help(), 2)[1])
    report = subparsers.add_parser("report", help="plots and tables from finished runs")
    report_sub = report.add_subparsers(dest="report_command", metavar="WHAT")
    for add in REPORT_SUBCOMMANDS.values():
        add(report_sub)
    report.set_defaults(func=lambda a: (report.print_help(), 2)[1])
