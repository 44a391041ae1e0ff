"""One entry point for every dataset: ``load_problems(path_or_name, format=None)``.

`LOADERS` maps a format name to ``loader(path, limit) -> list[Problem]``. The format is sniffed
from the first record's keys when not given; the name ``humaneval`` alone loads the packaged set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from tasks.apps import load_apps
from tasks.bigcodebench import load_bigcodebench
from tasks.humaneval import load_humaneval
from tasks.jsonl import DatasetError, first_record, load_jsonl
from tasks.problem import Problem

DatasetFormat = Literal["restrl", "apps", "bigcodebench", "humaneval"]
Loader = Callable[[Path | None, int | None], list[Problem]]


def _restrl(path: Path | None, limit: int | None) -> list[Problem]:
    assert path is not None
    return load_jsonl(path)[:limit] if limit is not None else load_jsonl(path)


LOADERS: dict[str, Loader] = {
    "restrl": _restrl,
    "apps": lambda path, limit: load_apps(path, limit=limit),  # type: ignore[arg-type]
    "bigcodebench": lambda path, limit: load_bigcodebench(path, limit=limit),  # type: ignore[arg-type]
    "humaneval": lambda path, limit: load_humaneval(limit, path=path),
}

# format -> keys whose presence in the first record identifies it (checked in this order)
_SIGNATURES: tuple[tuple[str, frozenset[str]], ...] = (
    ("restrl", frozenset({"schema_version"})),
    ("restrl", frozenset({"id", "prompt", "tests"})),
    ("apps", frozenset({"question", "input_output"})),
    ("bigcodebench", frozenset({"task_id", "test", "complete_prompt"})),
    ("bigcodebench", frozenset({"task_id", "test", "instruct_prompt"})),
    ("humaneval", frozenset({"task_id", "prompt", "entry_point", "test"})),
)

# names that load a packaged dataset without a file
NAMED_DATASETS = frozenset({"humaneval"})


def sniff_format(path: str | Path) -> str:
    """The format of a JSONL file, from its first record's keys."""
    record = first_record(path)
    if record is None:
        raise DatasetError("empty file: cannot tell its format", path=path)
    keys = set(record)
    for name, required in _SIGNATURES:
        if required <= keys:
            return name
    raise DatasetError(
        f"cannot tell the format from keys {sorted(keys)[:8]}; pass format= one of {sorted(set(LOADERS))}",
        path=path, line=1,
    )


def load_problems(path_or_name: str | Path, format: DatasetFormat | None = None, *, limit: int | None = None) -> list[Problem]:
    """Load problems from a file (any `LOADERS` format) or a packaged dataset name (``humaneval``).
    A missing or malformed file is a `DatasetError` naming the file, line and field."""
    if format is not None and format not in LOADERS:
        raise DatasetError(f"unknown format {format!r}; choose one of {sorted(LOADERS)}", path=path_or_name)
    path = Path(path_or_name)
    if str(path_or_name) in NAMED_DATASETS and not path.exists():
        if format not in (None, str(path_or_name)):
            raise DatasetError(f"{path_or_name!r} is a packaged dataset, not a {format} file", path=path_or_name)
        return LOADERS[str(path_or_name)](None, limit)
    if not path.is_file():
        raise DatasetError("no such file", path=path)
    return LOADERS[format or sniff_format(path)](path, limit)
