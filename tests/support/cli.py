"""The CLI as a person runs it, for the tests that drive it as a process: one command, and
the pipeline's round trip (produce N readings, consume them, count what landed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

STORED = ("SELECT (SELECT count(*) FROM heartbeat_records)"
          " + (SELECT count(*) FROM heartbeat_anomalies)"
          " + (SELECT count(*) FROM heartbeat_dead_letters)")


def run_cli(*args: str, env: dict[str, str], cwd: Path,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`heartbeat-platform ARGS` in its own process (timeout: a bound for a hung one)."""
    return subprocess.run([sys.executable, "-m", "heartbeat_platform", *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def stored(database_url: str) -> int:
    """Messages that landed: records, anomalies and dead letters."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(STORED).fetchone()
    assert row is not None
    return row[0]


def produce_then_consume(env: dict[str, str], cwd: Path, events: int, seed: int) -> None:
    """`produce --events N` (every one delivered), then `consume` until idle (all N)."""
    produced = run_cli("produce", "--events", str(events), "--rate", "0", "--seed", str(seed),
                       env=env, cwd=cwd)
    assert produced.returncode == 0, produced.stderr
    assert f"delivered {events:,}  failed 0" in produced.stdout, produced.stdout
    consumed = run_cli("consume", "--stop-when-idle", "3", "--json", env=env, cwd=cwd)
    assert consumed.returncode == 0, consumed.stderr
    assert json.loads(consumed.stdout)["messages"] == events
