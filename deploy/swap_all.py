"""Fan a hot swap out to every restrl replica: all replicas end on the new pair, or all roll back.

Usage (the admin token comes from the environment, never from the command line)::

    export RESTRL_ADMIN_TOKEN=...
    python deploy/swap_all.py --replica http://10.0.0.5:8000 --replica http://10.0.0.6:8000 \
        --policy /checkpoints/policy-v2 --value /checkpoints/value-v2
    python deploy/swap_all.py --resolve restrl:8000 --policy /checkpoints/policy-v2   # every A record
    python deploy/swap_all.py --resolve restrl:8000 --rollback                        # undo on all

Steps: (1) preflight `GET /admin/models` on every replica (reachable, token accepted) before touching
any; (2) `POST /admin/models` one replica at a time (a rolling swap: the others keep serving, and each
replica itself keeps in-flight searches on their old pair); (3) on the first failure, `POST
/admin/models/rollback` on the replicas already swapped and exit 1; (4) check that all replicas report
the same active versions. One JSON line per step on stdout; exit 0 only when every replica swapped.
Stdlib only, so it also runs inside the image (`/opt/restrl/swap_all.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from typing import Any


class ReplicaError(Exception):
    """A replica refused or failed an admin call; the message says which and why."""


def call(base: str, method: str, path: str, token: str, body: dict[str, Any] | None, timeout: float) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - operator-given URL
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise ReplicaError(f"{base}{path}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ReplicaError(f"{base}{path}: {exc}") from None


def resolve(target: str) -> list[str]:
    """``host:port`` -> one base URL per address the name resolves to (Docker DNS: one per replica)."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--resolve wants HOST:PORT, got {target!r}")
    infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    addresses = sorted({info[4][0] for info in infos})
    return [f"http://[{a}]:{port}" if ":" in a else f"http://{a}:{port}" for a in addresses]


def active_versions(status: Any) -> tuple[str, str] | None:
    active = status.get("active") if isinstance(status, dict) else None
    if not active:
        return None
    return active.get("policy_version", ""), active.get("value_version", "")


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def run(replicas: list[str], token: str, body: dict[str, Any] | None, timeout: float) -> int:
    for base in replicas:  # (1) preflight: touch nothing unless every replica answers
        try:
            emit(step="preflight", replica=base, ok=True, active=active_versions(call(base, "GET", "/admin/models", token, None, timeout)))
        except ReplicaError as exc:
            emit(step="preflight", replica=base, ok=False, error=str(exc))
            return 1
    path = "/admin/models/rollback" if body is None else "/admin/models"
    done: list[str] = []
    for base in replicas:  # (2) rolling swap
        try:
            call(base, "POST", path, token, body or {}, timeout)
        except ReplicaError as exc:
            emit(step="swap", replica=base, ok=False, error=str(exc))
            for swapped in reversed(done):  # (3) undo on the replicas already swapped
                try:
                    call(swapped, "POST", "/admin/models/rollback", token, {}, timeout)
                    emit(step="rollback", replica=swapped, ok=True)
                except ReplicaError as undo_exc:
                    emit(step="rollback", replica=swapped, ok=False, error=str(undo_exc))
            return 1
        done.append(base)
        emit(step="swap", replica=base, ok=True)
    versions = {}
    for base in replicas:  # (4) every replica on the same pair
        try:
            versions[base] = active_versions(call(base, "GET", "/admin/models", token, None, timeout))
        except ReplicaError as exc:
            emit(step="verify", replica=base, ok=False, error=str(exc))
            return 1
    agreed = len(set(versions.values())) == 1
    emit(step="verify", ok=agreed, versions=versions)
    return 0 if agreed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replica", action="append", default=[], metavar="URL", help="a replica's base URL (repeatable)")
    parser.add_argument("--resolve", action="append", default=[], metavar="HOST:PORT",
                        help="add every address HOST resolves to (Docker DNS returns one per replica)")
    parser.add_argument("--policy", help="policy checkpoint folder, as the replicas see it")
    parser.add_argument("--value", help="value checkpoint folder, as the replicas see it")
    parser.add_argument("--rollback", action="store_true", help="roll every replica back to its previous pair")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per admin call (full weights load slowly)")
    args = parser.parse_args(argv)
    token = os.environ.get("RESTRL_ADMIN_TOKEN", "")
    if not token:
        parser.error("set RESTRL_ADMIN_TOKEN (the replicas' admin bearer token)")
    replicas = list(dict.fromkeys(args.replica + [url for target in args.resolve for url in resolve(target)]))
    if not replicas:
        parser.error("name at least one --replica or --resolve")
    if args.rollback == bool(args.policy or args.value):
        parser.error("give --policy and/or --value, or --rollback")
    body = None if args.rollback else {k: v for k, v in (("policy", args.policy), ("value", args.value)) if v}
    return run(replicas, token, body, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
