#!/usr/bin/env python3
"""Container health probe for earlytom-serve: exit 0 when ``GET /health`` answers 2xx, else 1.

Used by the Dockerfile's HEALTHCHECK and the compose healthcheck. Standard library only (the vLLM
base image has python3 but its curl is not guaranteed). The port comes from ``EARLYTOM_PORT``
(default 8000); ``EARLYTOM_HEALTH_URL`` overrides the whole URL. ``EARLYTOM_API_KEY``, when set, is
sent as a bearer token in case the front end guards every route.

``EARLYTOM_HEALTH_TIMEOUT`` and ``EARLYTOM_HEALTH_URL`` are this probe's own (not server settings;
the server's timeout for its backends' health checks is ``EARLYTOM_BACKEND_HEALTH_TIMEOUT``).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def health_url(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    if env.get("EARLYTOM_HEALTH_URL"):
        return env["EARLYTOM_HEALTH_URL"]
    port = env.get("EARLYTOM_PORT") or "8000"
    return f"http://127.0.0.1:{port}/health"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    url = argv[0] if argv else health_url()
    timeout = float(os.environ.get("EARLYTOM_HEALTH_TIMEOUT", "5"))
    request = urllib.request.Request(url, method="GET")
    api_key = os.environ.get("EARLYTOM_API_KEY")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if 200 <= status < 300:
        return 0
    print(f"unhealthy: {url} answered {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
