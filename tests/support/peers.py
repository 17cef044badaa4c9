"""What the tests' real peers share (Prometheus, Alertmanager: Debian's binaries)."""

from __future__ import annotations

import urllib.request


def ready(url: str) -> bool:
    """The peer's `/-/ready` answers 200 (both Prometheus and Alertmanager serve it)."""
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
