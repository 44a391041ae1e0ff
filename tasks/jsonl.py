"""restrl's own JSONL dataset format and the line reader every JSONL loader shares.

One `Problem` per line, as a JSON object with the `Problem` fields plus ``schema_version``
(currently 1; a missing version means 1). The schema is documented in ``docs/tasks.md``.
Files may be gzip-compressed (``.gz``). Any defect raises `DatasetError`, which names the file,
the 1-based line number and, when a field is at fault, its dotted location (pydantic's error
location, e.g. ``tests.0.args``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from tasks.problem import Problem

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})


class DatasetError(ValueError):
    """A dataset file is missing or malformed. ``path``, ``line`` (1-based) and ``field`` say where."""

    def __init__(self, message: str, *, path: str | Path, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line; bad JSON or a non-object is a
    `DatasetError` naming the line."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError("no such file" if not p.exists() else "not a regular file", path=p)
    try:
        with _open_text(p) as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=p, line=number) from None
                if not isinstance(obj, dict):
                    raise DatasetError(f"expected a JSON object, got {type(obj).__name__}", path=p, line=number)
                yield number, obj
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DatasetError(f"cannot read ({exc})", path=p) from None


def first_record(path: str | Path) -> dict[str, Any] | None:
    """The first object of a JSONL file (None for an empty file): what format sniffing looks at."""
    for _, obj in iter_jsonl(path):
        return obj
    return None


def _loc(loc: Iterable[Any]) -> str:
    return ".".join(str(part) for part in loc) or "<record>"


def validation_error(exc: ValidationError, *, path: str | Path, line: int, prefix: str = "") -> DatasetError:
    """Turn pydantic's first error into a `DatasetError` naming its field location."""
    err = exc.errors(include_url=False)[0]
    field = _loc(err["loc"])
    if prefix:
        field = f"{prefix}.{field}" if field != "<record>" else prefix
    more = f" (and {len(exc.errors()) - 1} more errors)" if len(exc.errors()) > 1 else ""
    return DatasetError(f"{err['msg']}{more}", path=path, line=line, field=field)


def require(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, path: str | Path, line: int) -> Any:
    """Read a required field of a raw record with a type check; errors name file, line, field."""
    if name not in obj or obj[name] is None:
        raise DatasetError("field required", path=path, line=line, field=name)
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(t.__name__ for t in kinds)
        raise DatasetError(f"expected {names}, got {type(value).__name__}", path=path, line=line, field=name)
    return value


def optional(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any, *, path: str | Path, line: int) -> Any:
    """Like `require`, but a missing or null field gives ``default``."""
    if obj.get(name) is None:
        return default
    return require(obj, name, kind, path=path, line=line)


def problem_from_record(obj: dict[str, Any], *, path: str | Path, line: int) -> Problem:
    """Validate one line of our schema into a `Problem`."""
    record = dict(obj)
    version = record.pop("schema_version", SCHEMA_VERSION)
    if version not in SUPPORTED_SCHEMA_VERSIONS or isinstance(version, bool):
        raise DatasetError(
            f"unsupported schema version {version!r} (this restrl reads {sorted(SUPPORTED_SCHEMA_VERSIONS)})",
            path=path, line=line, field="schema_version",
        )
    try:
        return Problem.model_validate(record)
    except ValidationError as exc:
        raise validation_error(exc, path=path, line=line) from None


def load_jsonl(path: str | Path) -> list[Problem]:
    """Read a file in restrl's JSONL schema. Duplicate ids are an error (they would alias results)."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for number, obj in iter_jsonl(path):
        problem = problem_from_record(obj, path=path, line=number)
        if problem.id in seen:
            raise DatasetError(f"duplicate id {problem.id!r} (first on line {seen[problem.id]})", path=path, line=number, field="id")
        seen[problem.id] = number
        problems.append(problem)
    return problems


def problem_to_record(problem: Problem) -> dict[str, Any]:
    """One line of our schema (``schema_version`` first)."""
    return {"schema_version": SCHEMA_VERSION, **problem.model_dump(mode="json", exclude_defaults=False)}


def write_jsonl(path: str | Path, problems: Iterable[Problem]) -> int:
    """Write problems in restrl's schema (gzip when the name ends in ``.gz``); returns the count.
    The file is written to a temporary name and renamed, so readers never see half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    count = 0
    opener = gzip.open(tmp, "wt", encoding="utf-8") if p.suffix == ".gz" else tmp.open("w", encoding="utf-8")
    with opener as fh:
        for problem in problems:
            fh.write(json.dumps(problem_to_record(problem), ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(p)
    return count
