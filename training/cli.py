"""`restrl train ...` and `restrl report ...`.

``train`` is a group: each entry of `TRAIN_SUBCOMMANDS` adds one job (``policy``,
``collect-values``, ``value``); ``eval`` (`register_eval`) runs the strategy x budget evaluation. ``report`` is a group likewise
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
from pathlib import Path
from typing import Any

from models.config import set_key

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
    p = sub.add_parser("policy", help="one ReST-GRPO (or GRPO / DAPO / ReST-DPO baseline) iteration")
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


def load_job_config(cls: Any, path: str | None, overrides: list[str] | None) -> Any:
    """A pydantic job config from an optional YAML/JSON file plus ``KEY=VALUE`` overrides
    (values parsed as JSON when they parse, dotted keys reach nested fields; a flat key of an
    earlier release, ``k=5``, sets its nested place, ``search.k``, with a warning)."""
    data: dict[str, Any] = {}
    if path:
        text = Path(path).read_text()
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    for item in overrides or []:
        key, _, raw = item.partition("=")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        set_key(data, key, value, getattr(cls, "renamed_keys", None), what=f"--set {key}")
    return cls.model_validate(data)


def _job_args(p: Any, default_config: str | None) -> None:
    p.add_argument("--config", default=default_config, help=f"YAML or JSON config (default: {default_config})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. samples=10")


def _run_job(args: argparse.Namespace, cls: Any, job: Callable[[Any], Any]) -> int:
    from pydantic import ValidationError

    try:
        config = load_job_config(cls, args.config, args.set)
        result = job(config)
    except (ValidationError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run again with --resume to continue", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2, default=str))
    return 0


def _collect_values(args: argparse.Namespace) -> int:
    from training.value_data import CollectConfig, run_collect

    return _run_job(args, CollectConfig, lambda cfg: run_collect(cfg, resume=args.resume))


def _register_collect_values(sub: Any) -> None:
    p = sub.add_parser("collect-values", help="value-training rows from MCTS with the tests as evaluator")
    _job_args(p, None)
    p.add_argument("--resume", action="store_true", help="skip problems whose trace is already written")
    p.set_defaults(func=_collect_values)


def _train_value(args: argparse.Namespace) -> int:
    from training.value_train import ValueTrainConfig, run_value_training

    return _run_job(args, ValueTrainConfig, run_value_training)


def _register_value(sub: Any) -> None:
    p = sub.add_parser("value", help="train the value model (LoRA + head, MSE) on collected rows")
    _job_args(p, None)
    p.set_defaults(func=_train_value)


def _eval(args: argparse.Namespace) -> int:
    from training.search_eval import EvalConfig, run_eval

    return _run_job(args, EvalConfig, lambda cfg: run_eval(cfg, resume=args.resume))


def register_eval(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", help="pass@1 of every search strategy x sample budget (HumanEval subset, gym test)")
    _job_args(p, None)
    p.add_argument("--resume", action="store_true", help="reuse finished (dataset, strategy, budget) results in the run folder")
    p.set_defaults(func=_eval)


TRAIN_SUBCOMMANDS: dict[str, Callable[[Any], None]] = {
    "policy": _register_policy,
    "collect-values": _register_collect_values,
    "value": _register_value,
}
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
    register_eval(subparsers)
