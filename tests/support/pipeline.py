"""Running the pipeline in integration tests: consumer and producer processes, a producer
thread, and the exactly-once count of what they did."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import psycopg

from heartbeat_platform import readiness
from heartbeat_platform.local.services import Endpoints
from heartbeat_platform.streaming.producer import HeartbeatProducer
from tests.support.stored import landed


class ConsumerProcess:
    """`heartbeat-platform -v consume` in a subprocess, its log collected line by line."""

    command = "consume"

    def __init__(self, settings, *args: str, env: dict[str, str] | None = None):
        env = {
            **os.environ,
            **(env or {}),
            "DATABASE_URL": settings.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "KAFKA_TOPIC": settings.kafka_topic,
            "KAFKA_GROUP_ID": settings.kafka_group_id,
            "HEARTBEAT_CONSUME_BATCH_SIZE": str(settings.heartbeat_consume_batch_size),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heartbeat_platform", "-v", self.command, *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.log: list[str] = []
        self._out: list[str] = []
        self.assigned = threading.Event()
        self.metrics_port: int | None = None  # with --metrics-port: the port it bound
        self.serving_metrics = threading.Event()
        # Each pipe has one reader: `communicate()` next to this thread would read the same
        # stderr and take lines away from `log`.
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=lambda: self._out.extend(self.proc.stdout), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            if "assigned at offsets" in line:
                self.assigned.set()
            served = _METRICS_ADDRESS.search(line)
            if served and not self.serving_metrics.is_set():
                self.metrics_port = int(served.group(1))
                self.serving_metrics.set()

    def text(self) -> str:
        return "".join(self.log)

    def stop(self) -> None:
        """SIGTERM: a clean stop (flush, commit), as Ctrl-C or Dagster's termination asks."""
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def finish(self, timeout: float = 180) -> tuple[int, str]:
        self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return self.proc.returncode, "".join(self._out)


class ProducerProcess(ConsumerProcess):
    """`heartbeat-platform -v produce` in a subprocess (until stop() without limits)."""

    command = "produce"


_METRICS_ADDRESS = re.compile(r"^metrics: http://[^\s]+:(\d+)/metrics$")


def assert_exactly_once(conn: psycopg.Connection, expected: set) -> None:
    counts = landed(conn)
    missing = expected - set(counts)
    doubled = {k: v for k, v in counts.items() if v > 1}
    assert not missing, f"{len(missing)} messages missing, e.g. {sorted(missing)[:5]}"
    assert not doubled, f"doubled: {list(doubled.items())[:5]}"
    assert set(counts) == expected
    alerts = conn.execute(
        "SELECT count(*) FROM pipeline_metrics WHERE metric_name LIKE 'alert\\_%'"
    ).fetchone()[0]
    assert alerts == conn.execute("SELECT count(*) FROM heartbeat_anomalies").fetchone()[0]


def produce_in_background(settings, **run) -> tuple[threading.Thread, list]:
    reports: list = []
    endpoints = Endpoints(settings.database_url, settings.kafka_bootstrap_servers)

    def send() -> None:
        with HeartbeatProducer(readiness.producer_config(settings, endpoints)) as producer:
            reports.append(producer.run(readiness.generator(settings, run.pop("seed", 1)), **run))

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, reports
