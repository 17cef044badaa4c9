"""`up` end to end, as an operator sees it: its own services, the Dagster UI, a supervised
consumer that an operator terminates and that then stays stopped, the asset lineage in a
real browser, and Ctrl-C leaving no process behind.

Slow (a few minutes on two cores): waits are generous, nothing is timed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from playwright.sync_api import sync_playwright

from heartbeat_platform.config import load_settings
from heartbeat_platform.definitions import defs
from heartbeat_platform.defs.ingest.supervisor import SENSOR_NAME
from heartbeat_platform.local.process import free_port, port_open
from heartbeat_platform.local.services import LocalServices

REPO_ROOT = Path(__file__).resolve().parents[2]

CLEARED = (
    "DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "DAGSTER_HOME", "DAGSTER_POSTGRES_URL",
    "HEARTBEAT_CONSUMER_WORKERS", "HEARTBEAT_SUPERVISION_SINCE",
)
ARTIFACTS = REPO_ROOT / "test-artifacts"
CONSUMER_RUNS = """{ runsOrError(filter: {pipelineName: "heartbeat_consumer"}) {
  ... on Runs { results { runId status tags { key value } } } } }"""
TERMINATE = """mutation($runId: String!) { terminateRun(runId: $runId) {
  __typename ... on PythonError { message } } }"""
RUN_LOG = """query($runId: ID!) { logsForRun(runId: $runId) {
  ... on EventConnection { events { ... on MessageEvent { message } } } } }"""
TICKS = """query($after: Float!, $sensor: String!) { sensorOrError(sensorSelector: {
    repositoryLocationName: "heartbeat_platform", repositoryName: "__repository__",
    sensorName: $sensor}) {
  ... on Sensor { sensorState { ticks(afterTimestamp: $after, limit: 20) {
    status skipReason runIds } } } } }"""


class Dagster:
    def __init__(self, port: int, log: Path):
        self.url, self.log = f"http://127.0.0.1:{port}", log

    def query(self, text: str, **variables: Any) -> dict:
        response = requests.post(
            f"{self.url}/graphql", json={"query": text, "variables": variables}, timeout=60
        )
        response.raise_for_status()
        return response.json()["data"]

    def consumer_runs(self) -> list[dict]:
        try:
            return self.query(CONSUMER_RUNS)["runsOrError"]["results"]
        except requests.RequestException:
            return []  # not serving yet

    def ticks_after(self, timestamp: float) -> list[dict]:
        data = self.query(TICKS, after=timestamp, sensor=SENSOR_NAME)
        return data["sensorOrError"]["sensorState"]["ticks"]

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = 420) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(3)
        pytest.fail(f"timed out waiting for {what}; `up` printed:\n{self.log.read_text()}")


def processes_of(state: Path) -> list[psutil.Process]:
    """Every process started for this state folder: by environment or by its command line."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            mine = proc.environ().get("HEARTBEAT_STATE_DIR") == str(state)
            if mine or any(str(state) in part for part in proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.dagster
@pytest.mark.postgres  # `up` starts its own embedded services
@pytest.mark.broker
def test_up_supervises_the_consumer_shows_lineage_and_stops_clean(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "needs Debian's chromium (apt-get install chromium)"
    state, port = tmp_path / "state", free_port()
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["HEARTBEAT_STATE_DIR"] = str(state)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "heartbeat_platform", "up", "--port", str(port)],
            cwd=tmp_path, env=env,
            stdout=out, stderr=subprocess.STDOUT,
        )
    dagster = Dagster(port, log)
    try:
        # the supervisor starts the consumer by itself
        (run,) = dagster.wait_for(
            "the supervised consumer run",
            lambda: [r for r in dagster.consumer_runs() if r["status"] == "STARTED"],
        )
        assert {"key": "dagster/sensor_name", "value": SENSOR_NAME} in run["tags"]

        # an operator terminates it (the UI's "Terminate"); it stops, closing cleanly
        terminated = dagster.query(TERMINATE, runId=run["runId"])["terminateRun"]
        assert terminated["__typename"] == "TerminateRunSuccess", terminated
        stopped_at = time.time()
        dagster.wait_for(
            "the run to be canceled",
            lambda: dagster.consumer_runs()[0]["status"] == "CANCELED", timeout=180,
        )
        dagster.wait_for(  # the op's clean-close line (the event log may trail the status)
            "the consumer's clean-close log line",
            lambda: any(
                "consumer stopped" in (e.get("message") or "")
                for e in dagster.query(RUN_LOG, runId=run["runId"])["logsForRun"]["events"]
            ),
            timeout=60,
        )

        # and stays stopped: two finished supervisor ticks later, still no new consumer run
        # (a tick still being evaluated is listed as STARTED: it has not decided yet)
        ticks = dagster.wait_for(
            "two finished supervisor ticks after the termination",
            lambda: (lambda t: t if len(t) >= 2 else None)(
                [t for t in dagster.ticks_after(stopped_at) if t["status"] != "STARTED"]
            ),
            timeout=300,
        )
        assert all(t["status"] == "SKIPPED" and not t["runIds"] for t in ticks), ticks
        assert "stopped by an operator" in ticks[0]["skipReason"]
        assert [r["runId"] for r in dagster.consumer_runs()] == [run["runId"]]

        # the asset lineage renders every asset in a real browser
        names = sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
            page = browser.new_page(viewport={"width": 2400, "height": 4800})
            page.goto(  # everything is downstream of the topic
                f"{dagster.url}/assets/heartbeat_events"
                "?view=lineage&lineageScope=downstream&lineageDepth=4",
                timeout=180_000,
            )
            for name in names:  # each must render as a node (the page's title names the topic)
                nth = 1 if name == "heartbeat_events" else 0
                visible = page.get_by_text(name, exact=True).filter(visible=True)
                visible.nth(nth).wait_for(timeout=180_000)
            for _ in range(60):  # let the nodes' details load, for a nicer picture
                if not page.get_by_text("Loading...").count():
                    break
                page.wait_for_timeout(1_000)
            page.screenshot(path=ARTIFACTS / "dagster-asset-lineage.png")
            browser.close()

        # Ctrl-C: runs, Dagster and the services it started all stop, and one line says so
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=300) == 0, log.read_text()
        final = log.read_text().splitlines()[-1]
        assert re.fullmatch(
            r"stopped Dagster \((no runs in progress|\d+ .+)\), the embedded PostgreSQL "
            r"and broker in \d+\.\d s", final
        ), log.read_text()
        assert processes_of(state) == []
        assert not port_open("127.0.0.1", port)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=300)
            except subprocess.TimeoutExpired:
                up.kill()
        for proc in processes_of(state):
            proc.kill()
        LocalServices(load_settings(heartbeat_state_dir=state, _env_file=None)).stop_all()
