"""A real Alertmanager for the tests: Debian's `prometheus-alertmanager` binary.

Started per test on a free loopback port, with a config, storage and log in the test's
temporary folder and clustering off (`--cluster.listen-address=` empty). Its
`resolve_timeout` is short (RESOLVE_TIMEOUT_S) so a test sees within seconds what
Alertmanager does to an alert nobody sends again: it resolves it.

Without the binary the tests that use it skip with one line saying what to install; under
CI=true they fail (.ci/run installs the package).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from heartbeat_platform.local.process import free_port, wait_until
from tests.support.peers import ready

BINARY = "prometheus-alertmanager"
RESOLVE_TIMEOUT_S = 4


def require_alertmanager() -> str:
    path = shutil.which(BINARY) or (f"/usr/bin/{BINARY}" if Path(f"/usr/bin/{BINARY}").exists()
                                    else None)
    if path is None:
        message = (f"the Alertmanager tests need Debian's {BINARY} package: "
                   f"apt-get install {BINARY} (as .ci/run does)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Alertmanager:
    url: str  # the base URL, as HEARTBEAT_ALERTMANAGER_URL takes it
    log: Path

    def alerts(self) -> list[dict]:
        """GET /api/v2/alerts: the alerts Alertmanager holds active (resolved ones, whose
        endsAt has passed, are not listed)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=10) as response:
            return json.load(response)

    def episode_alerts(self) -> dict[str, dict]:
        """The heartbeat episode alerts by episode id."""
        return {a["labels"]["episode_id"]: a for a in self.alerts()
                if a["labels"].get("alertname") == "heartbeat_episode"}


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    binary = require_alertmanager()
    root = tmp_path / "alertmanager"
    root.mkdir()
    config = root / "alertmanager.yml"
    config.write_text(yaml.safe_dump({
        "global": {"resolve_timeout": f"{RESOLVE_TIMEOUT_S}s"},
        "route": {"receiver": "nobody", "group_wait": "1s", "group_interval": "1s"},
        "receivers": [{"name": "nobody"}],
    }))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "alertmanager.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
             "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        assert wait_until(lambda: ready(url) or server.poll() is not None, 60), log.read_text()
        assert server.poll() is None, log.read_text()
        yield Alertmanager(url, log)
    finally:
        server.terminate()
        server.wait(30)
