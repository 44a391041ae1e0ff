"""Record the SSE streams the playground's double replays, from a live `restrl serve`.

    restrl serve --port 8000 &
    .venv/bin/python tests/playground/record_streams.py http://127.0.0.1:8000/

Writes ``data/vm_mcts.sse`` and ``data/greedy.sse`` verbatim (the problem the page opens with,
``return_tree`` on, so the result carries the search's final tree), and ``data/error.sse``: the
first recorded progress event followed by the ``error`` event the server sends when the engine dies
mid-search (the one event here that is written, not recorded: a dead engine cannot be provoked on
purpose; its shape is `server.errors.to_api_error`'s for `models.base.EngineDeadError`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

DATA = Path(__file__).parent / "data"
PROBLEM = {
    "statement": "Write a function that returns the sum of the squares of the even numbers in a list of integers.",
    "starter_code": 'def sum_even_squares(numbers: list[int]) -> int:\n    """Return the sum of the squares of the even numbers in `numbers`."""\n',
    "entry_point": "sum_even_squares",
}
RUNS = {"vm_mcts": {"budget": {"samples": 10}, "max_tokens": 128, "seed": 1},
        "greedy": {"budget": {"samples": 10}, "max_tokens": 128, "seed": 1}}


def record(base_url: str, strategy: str, options: dict[str, object]) -> str:
    body = {"problem": PROBLEM, "strategy": strategy, "stream": True, "return_tree": True, **options}
    with httpx.stream("POST", base_url.rstrip("/") + "/v1/solve", json=body, timeout=600) as response:
        response.raise_for_status()
        return "".join(response.iter_text())


def main(base_url: str) -> None:
    streams = {name: record(base_url, name, options) for name, options in RUNS.items()}
    for name, text in streams.items():
        assert "event: result" in text, f"{name}: no result event in the stream"
        (DATA / f"{name}.sse").write_text(text)
    first = streams["vm_mcts"].split("\n\n")[0] + "\n\n"
    error = {"error": {"type": "unavailable", "message": "the model engine is dead: EngineCore encountered an issue"}}
    (DATA / "error.sse").write_text(first + f"event: error\ndata: {json.dumps(error)}\n\n")
    for path in sorted(DATA.glob("*.sse")):
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/")
