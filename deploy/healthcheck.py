"""Container health check: exit 0 when the server's `/health` answers 200, else 1.

Stdlib only (the slim images have no curl). The Dockerfile's HEALTHCHECK runs it inside the container;
it reads the same variables as `restrl serve` (RESTRL_PORT, and RESTRL_HEALTH_URL to override the URL).
`/health` is liveness only; use `/ready` (a real expansion + value call) for load-balancer readiness.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("RESTRL_PORT", "8000")
    url = os.environ.get("RESTRL_HEALTH_URL", f"http://127.0.0.1:{port}/health")
    timeout = float(os.environ.get("RESTRL_HEALTH_TIMEOUT", "4"))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed local URL
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
