"""The consumer as a child process (`heartbeat-platform consume`), as it runs in production,
and that process's own peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from heartbeat_platform.bench.services import endpoints
from heartbeat_platform.config import Settings


def child_env(settings: Settings) -> dict[str, str]:
    """This process's environment with the stage's services, topic, group and batch size."""
    found = endpoints(settings)
    return {
        **os.environ,
        "DATABASE_URL": found.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": found.bootstrap_servers,
        "KAFKA_TOPIC": settings.kafka_topic,
        "KAFKA_GROUP_ID": settings.kafka_group_id,
        "HEARTBEAT_CONSUME_BATCH_SIZE": str(settings.heartbeat_consume_batch_size),
    }


def cli(*args: str) -> list[str]:
    """The `heartbeat-platform` command line of this interpreter."""
    return [sys.executable, "-m", "heartbeat_platform", *args]


def consume_process(
    settings: Settings, stop_when_idle: float, env: dict[str, str] | None = None
) -> dict:
    """One consumer run to the end of the topic: its JSON report, peak RSS from /proc.
    `env`: more variables for the consumer (e.g. its alerting settings)."""
    process = subprocess.Popen(
        cli("consume", "--json", "--stop-when-idle", str(stop_when_idle)),
        env={**child_env(settings), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    peak = PeakRss(process.pid)
    try:
        out, err = process.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"bench consumer failed: {err[-2000:]}")
    consumed = last_json(out)
    consumed["peak_rss_mb"] = peak.result(consumed["peak_rss_mb"])
    return consumed


class PeakRss:
    """A child process's own peak RSS, read from /proc while it runs (Linux).

    The child's ru_maxrss cannot tell: Linux copies the parent's memory high-water mark
    into a child at fork and keeps it across exec, so a consumer started by this process
    reports at least this process's peak (which the baselines raise past 1 GB). VmHWM in
    /proc/<pid>/status belongs to the new program alone. The consumer idles for seconds
    before it exits (--stop-when-idle), so the last reading holds its peak.
    """

    INTERVAL_S = 0.05

    def __init__(self, pid: int):
        self._path = Path(f"/proc/{pid}/status")
        self._peak_kb: int | None = None
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:
            try:
                status = self._path.read_text()
            except OSError:
                return  # gone (or no /proc here)
            hwm = [line for line in status.splitlines() if line.startswith("VmHWM:")]
            if not hwm:
                return  # exited: a zombie has no memory left to report
            self._peak_kb = max(self._peak_kb or 0, int(hwm[0].split()[1]))
            time.sleep(self.INTERVAL_S)

    def result(self, reported_mb: float) -> float:
        """Peak RSS in MB; the child's own figure where /proc could not be read."""
        self._thread.join(timeout=5)
        return reported_mb if self._peak_kb is None else round(self._peak_kb / 1024, 1)


def last_json(output: str) -> dict:
    """The report of a `--json` command: its output from the first `{` on."""
    start = output.find("{")
    return json.loads(output[start:])
