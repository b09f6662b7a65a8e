"""Docker HEALTHCHECK: exit 0 when GET /healthz answers 200 on this container's port.

Standard library only and no tandem import, so a check costs a bare interpreter
start (~30 ms), not a model load. The slim image has no curl.
"""

import os
import sys
import urllib.request

port = os.environ.get("TANDEM_PORT", "8080")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthcheck: {exc}", file=sys.stderr)  # noqa: T201 - shown by `docker inspect`
    sys.exit(1)
