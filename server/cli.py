"""`restrl serve` (the HTTP service under uvicorn) and `restrl solve FILE|-` (a client of it).

``restrl serve`` takes one flag per `server.settings.Settings` field (``--max-samples 50``, and for the
nested policy, value and sandbox configs ``--policy.kv-cache-gib 2``; ``--policy DIR`` and ``--value
DIR`` name the checkpoints); a flag overrides the ``RESTRL_*`` variable, which overrides the default. Secrets (admin token, API keys)
are read from the environment only, so that they never appear in a process list.

``restrl solve`` posts a problem (a /v1/solve body, a problem object with ``statement``, or a line
of our JSONL problem format) to a running server, shows a progress bar from the SSE stream on
stderr and prints the generated code on stdout - what a user pastes; ``--json``: the whole result, with
the ``program`` the sandbox runs (the code with the problem's starter code around it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from typing import Any

from server.settings import RENAMED, Settings, env_name, setting_rows

SECRET_FIELDS = ("admin_token", "api_keys")
# idle keep-alive connections are kept this long (uvicorn's default, 5 s, raced clients that waited
# a Retry-After of 5 s: the server closed the connection as the next request went out)
KEEP_ALIVE_S = 75
ENGINE_DEAD_EXIT = 3  # `restrl serve` exit status when the policy engine died (restart the process)


def _flag_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """argparse type and choices for a settings field's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if origin is typing.Literal:
        return str, [str(a) for a in args]
    if annotation in (int, float, str, bool):
        return annotation, None
    return str, None


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting: ``--max-samples``, ``--policy.kv-cache-gib``; ``--policy`` / ``--value``
    name the checkpoints; the flat flags of earlier releases (``--kv-cache-gib``) still parse, hidden."""
    for side in ("policy", "value"):
        parser.add_argument(f"--{side}", dest=f"setting:{side}.model", default=None, metavar="CHECKPOINT",
                            help=f"the {side} model: a folder, a LoRA adapter folder or a hub id [env {env_name(side)}]")
    for key, field in setting_rows():
        if key in SECRET_FIELDS or key in ("policy.model", "value.model"):
            continue
        kind, choices = _flag_type(field.annotation)
        default = field.get_default(call_default_factory=True)
        parser.add_argument(f"--{key.replace('_', '-')}", dest=f"setting:{key}", type=_bool if kind is bool else kind,
                            choices=choices, default=None, metavar=key.rsplit(".", 1)[-1].upper(),
                            help=f"{field.description} (default {default}) [env {env_name(key)}]")
    for old in RENAMED:
        parser.add_argument(f"--{old.replace('_', '-')}", dest=f"setting:{old}", default=None, help=argparse.SUPPRESS)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags set, nested (``{"policy": {"kv_cache_gib": 2.0}}``): init arguments of
    `Settings`, merged over the environment."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith("setting:") or value is None:
            continue
        *parents, leaf = dest[len("setting:"):].split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import build_app

    settings = Settings(**settings_overrides(args))
    app = build_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            timeout_graceful_shutdown=int(settings.drain_timeout_s), timeout_keep_alive=KEEP_ALIVE_S,
                            log_level=args.log_level.lower(), access_log=args.access_log)
    server = uvicorn.Server(config)
    app.state.request_exit = lambda: setattr(server, "should_exit", True)  # the engine watchdog's exit
    server.run()
    services = getattr(app.state, "services", None)
    if services is not None and services.engine_dead is not None:
        print(f"restrl serve: the policy engine died ({services.engine_dead}); exiting with status 3 so that"
              " the supervisor restarts the server", file=sys.stderr)
        return ENGINE_DEAD_EXIT
    return 0


def _problem_body(raw: dict[str, Any]) -> dict[str, Any]:
    """A /v1/solve body from a solve body, a problem object, or a JSONL problem record."""
    if "problem" in raw:
        return dict(raw)
    if "statement" in raw:
        return {"problem": raw}
    if "prompt" in raw:  # our JSONL problem format (tasks.Problem fields)
        keep = {"id": raw.get("id"), "statement": raw["prompt"], "starter_code": raw.get("starter_code", ""),
                "entry_point": raw.get("entry_point"), "public_tests": raw.get("public_tests", [])}
        return {"problem": {k: v for k, v in keep.items() if v is not None}}
    raise ValueError("the input needs 'problem', 'statement' or 'prompt'")


def _read_input(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        first = text.splitlines()[0] if text else ""
        return json.loads(first)  # a JSONL file: its first line


def _solve(args: argparse.Namespace) -> int:
    import httpx
    from tqdm import tqdm

    try:
        body = _problem_body(_read_input(args.file))
    except (OSError, ValueError) as exc:
        print(f"restrl solve: cannot read a problem from {args.file}: {exc}", file=sys.stderr)
        return 2
    body["stream"] = True
    if args.strategy:
        body["strategy"] = args.strategy
    budget = dict(body.get("budget") or {})
    if args.samples is not None:
        budget["samples"] = args.samples
    if args.deadline is not None:
        budget["deadline_s"] = args.deadline
    body["budget"] = budget
    if args.seed is not None:
        body["seed"] = args.seed
    headers = {}
    api_key = os.environ.get("RESTRL_API_KEY")
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    result: dict[str, Any] | None = None
    bar = tqdm(total=budget.get("samples"), unit="sample", file=sys.stderr, disable=args.quiet)
    try:
        with httpx.Client(base_url=args.url, timeout=httpx.Timeout(10.0, read=None)) as client, \
                client.stream("POST", "/v1/solve", json=body, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                print(f"restrl solve: HTTP {response.status_code}: {response.text}", file=sys.stderr)
                return 1
            for name, data in _sse(response.iter_lines()):
                if name == "progress":
                    bar.n = data["usage"]["samples"]
                    value = data.get("best_value")
                    bar.set_postfix(nodes=data["nodes"], best=None if value is None else round(value, 3))
                    bar.refresh()
                elif name == "result":
                    result = data
                elif name == "error":
                    print(f"restrl solve: {data['error']['message']}", file=sys.stderr)
                    return 1
    except httpx.HTTPError as exc:
        print(f"restrl solve: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    if result is None:
        print("restrl solve: the stream ended without a result", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["code"] or "")  # what a user pastes: the generated code (`program` adds the starter code around it)
        print(f"# value={result['value']} stop={result['stop_reason']} samples={result['usage']['samples']}"
              f" policy={result['policy_version']}", file=sys.stderr)
    return 0


def _sse(lines: Any) -> Any:
    name = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the HTTP service (uvicorn)",
        description="Run the HTTP service. Every flag has a RESTRL_* variable; flags win. Secrets only from the"
                    " environment: RESTRL_ADMIN_TOKEN, RESTRL_API_KEYS (comma-separated).")
    _add_settings_flags(serve)
    serve.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")
    serve.set_defaults(func=_serve)

    solve = subparsers.add_parser("solve", help="post a problem to a running server; print the generated code")
    solve.add_argument("file", help="problem JSON (a /v1/solve body, a problem with 'statement', or a JSONL line); - = stdin")
    solve.add_argument("--url", default=os.environ.get("RESTRL_URL", "http://127.0.0.1:8000"),
                       help="server URL [env RESTRL_URL]; the API key comes from RESTRL_API_KEY")
    solve.add_argument("--strategy", choices=["greedy", "best_of_n", "prm_best_of_n", "beam", "orm_mcts", "vm_mcts"], default=None)
    solve.add_argument("--samples", type=int, default=None, help="budget: sampled programs")
    solve.add_argument("--deadline", type=float, default=None, help="budget: seconds")
    solve.add_argument("--seed", type=int, default=None)
    solve.add_argument("--json", action="store_true", help="print the whole result as JSON (with `program`, what the sandbox runs)")
    solve.add_argument("--quiet", action="store_true", help="no progress bar")
    solve.set_defaults(func=_solve)
