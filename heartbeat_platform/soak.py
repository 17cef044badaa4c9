"""`heartbeat-platform bench --soak SECONDS`: the design rate on the local broker, long.

What bounds the embedded broker's memory (log rotation, `local.rotation`) must not cost
more than a pause we can see. This runs a producer at a steady rate (in this process,
taking part in the rotation handshake), a consumer (`heartbeat-platform consume`, its own
process) and the rotation guard, for SECONDS, and reports per window (15 s by default):
the broker's peak memory, NORMAL readings stored per second (heartbeat_records;
anomalies add ~5.5%), and the reading-to-stored-row delay
(`ingested_at - event_timestamp`) p50 / p99 of the rows stored in that window.

It uses a topic and consumer group of its own and the `heartbeat_bench` database
(recreated), on the broker of HEARTBEAT_STATE_DIR. A rotation restarts the whole broker,
so run it on a state folder no `up` is using (its topics would be emptied too). On Apache
Kafka (`--broker kafka`, or KAFKA_BOOTSTRAP_SERVERS) nothing rotates and no broker memory
is sampled: the windows give the delays and rates alone.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

from heartbeat_platform import readiness
from heartbeat_platform.bench.services import BENCH_DATABASE
from heartbeat_platform.config import Settings
from heartbeat_platform.domain.broker_rotation import MB
from heartbeat_platform.domain.generator import DESIGN_RATE
from heartbeat_platform.local.rotation import BrokerGuard, BrokerRotation, broker_memory
from heartbeat_platform.local.services import Endpoints, LocalServices
from heartbeat_platform.storage.database import connect, ensure_database
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.storage.progress import load_all_progress
from heartbeat_platform.streaming.lag import log_end_offsets
from heartbeat_platform.streaming.producer import HeartbeatProducer
from heartbeat_platform.streaming.topics import ensure_topic

_WINDOWS = """
SELECT date_bin(make_interval(secs => %(window)s), ingested_at, %(origin)s) AS w,
       count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ingested_at - event_timestamp),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ingested_at - event_timestamp),
       max(ingested_at - event_timestamp)
FROM heartbeat_records
WHERE event_timestamp >= %(origin)s - interval '1 minute' AND ingested_at >= %(origin)s
GROUP BY w ORDER BY w
"""


def run_soak(
    settings: Settings,
    seconds: float,
    rate: float = DESIGN_RATE,
    window_s: float = 15,
    log=lambda message: None,
) -> dict:
    services = LocalServices(settings)
    endpoints = readiness.prepare(settings, services).endpoints
    embedded = services.broker.serves(endpoints.bootstrap_servers)
    database_url = ensure_database(endpoints.database_url, BENCH_DATABASE, recreate=True)
    migrate(database_url)
    soak_endpoints = Endpoints(database_url, endpoints.bootstrap_servers)
    soak = settings.model_copy(
        update={
            "database_url": soak_endpoints.database_url,
            "kafka_bootstrap_servers": soak_endpoints.bootstrap_servers,
            "kafka_topic": f"heartbeat-soak-{uuid.uuid4().hex[:8]}",
            "kafka_group_id": f"soak-{uuid.uuid4().hex[:8]}",
        }
    )
    ensure_topic(
        soak_endpoints.bootstrap_servers,
        soak.kafka_topic,
        soak.kafka_partitions,
        overrides=soak.kafka_client_config,
    )
    consumer = subprocess.Popen(
        [sys.executable, "-m", "heartbeat_platform", "consume"],
        env=_env(soak, soak_endpoints),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    guard = None
    if embedded:
        guard = BrokerGuard(
            BrokerRotation(soak, services.broker, database_url),
            settings.heartbeat_broker_check_interval_s,
        )
    producer = HeartbeatProducer(readiness.producer_config(soak, endpoints))
    sampler = _Sampler(services.broker if embedded else None, producer, window_s)
    try:
        time.sleep(8)  # the consumer joins its group (seconds on the embedded broker)
        origin = datetime.now(UTC)
        if guard is not None:
            guard.start()
        sampler.start(log)
        report = producer.run(readiness.generator(soak, seed=1), rate=rate, duration=seconds)
        sampler.stop()
        producer.close()  # leaves the handshake: a rotation under way needs it no more
        if guard is not None:  # a rotation is never left half done by the bench
            deadline = time.monotonic() + 180
            while guard.rotation.rotating() and time.monotonic() < deadline:
                time.sleep(0.5)
            guard.stop()
        log("waiting for the consumer to store the rest")
        unstored = _wait_stored(soak, soak_endpoints, timeout=300)
    finally:
        if guard is not None:
            guard.stop()
        sampler.stop()
        producer.close()
        consumer.send_signal(signal.SIGTERM)
        try:
            consumer.wait(60)
        except subprocess.TimeoutExpired:
            consumer.kill()
    windows = _windows(database_url, origin, window_s, sampler.samples)
    p99s = [w["delay_p99_ms"] for w in windows if w["delay_p99_ms"] is not None]
    return {
        "rate": rate,
        "seconds": seconds,
        "window_s": window_s,
        "embedded_broker": embedded,
        "max_log_mb": settings.heartbeat_broker_max_log_mb,
        "produced": {
            "sent": report.sent,
            "delivered": report.delivered,
            "failed": report.failed,
            "uncertain": report.uncertain,
            "per_s": round(report.delivered / report.seconds, 1) if report.seconds else 0.0,
        },
        "unstored_at_end": unstored,
        "rotations": report.pauses,
        "paused_seconds": round(report.paused_seconds, 1),
        "broker_peak_memory_mb": max((w["broker_memory_mb"] or 0) for w in windows)
        if windows
        else None,
        "worst_window_p99_ms": max(p99s) if p99s else None,
        "windows": windows,
    }


class _Sampler:
    """The broker's memory once a second, the producer's pauses; a line per window."""

    def __init__(self, broker, producer: HeartbeatProducer, window_s: float):
        self.broker = broker
        self.producer = producer
        self.window_s = window_s
        self.samples: list[tuple[float, int | None, int, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, log) -> None:
        def run():
            last = time.time()
            while not self._stop.wait(1.0):
                rss = broker_memory(self.broker) if self.broker is not None else None
                report = self.producer.report
                self.samples.append((time.time(), rss, report.pauses, report.paused_seconds))
                if time.time() - last >= self.window_s:
                    last = time.time()
                    log(
                        f"broker {(rss or 0) / MB:.0f} MB, sent {report.sent:,}, "
                        f"rotations {report.pauses}, paused {report.paused_seconds:.1f} s"
                    )

        self._thread = threading.Thread(target=run, name="soak-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _windows(database_url: str, origin: datetime, window_s: float, samples) -> list[dict]:
    with connect(database_url, autocommit=True) as conn:
        rows = conn.execute(_WINDOWS, {"window": window_s, "origin": origin}).fetchall()
    windows = []
    for start, count, p50, p99, worst in rows:
        begin = start.timestamp()
        inside = [s for s in samples if begin <= s[0] < begin + window_s]
        memory = [s[1] for s in inside if s[1] is not None]
        windows.append(
            {
                "start": start.isoformat(timespec="seconds"),
                "broker_memory_mb": round(max(memory) / MB, 1) if memory else None,
                "records_per_s": round(count / window_s, 1),  # NORMAL readings only
                "delay_p50_ms": round(p50.total_seconds() * 1000, 1),
                "delay_p99_ms": round(p99.total_seconds() * 1000, 1),
                "delay_max_ms": round(worst.total_seconds() * 1000, 1),
                "rotations_so_far": inside[-1][2] if inside else None,
            }
        )
    return windows


def _wait_stored(settings: Settings, endpoints: Endpoints, timeout: float) -> int | None:
    """Readings left unstored once the consumer caught up (0), or after `timeout` (None:
    the log end was not known)."""
    deadline = time.monotonic() + timeout
    behind = None
    while time.monotonic() < deadline:
        ends = log_end_offsets(
            endpoints.bootstrap_servers,
            settings.kafka_topic,
            kafka_overrides=settings.kafka_client_config,
        )
        stored = load_all_progress(
            endpoints.database_url, settings.kafka_group_id, settings.kafka_topic
        )
        behind = sum(
            max(0, end - (stored[p].next_offset if p in stored else 0)) for p, end in ends.items()
        )
        if behind == 0:
            return 0
        time.sleep(1.0)
    return behind


def _env(settings: Settings, endpoints: Endpoints) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "DATABASE_URL": endpoints.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": endpoints.bootstrap_servers,
        "KAFKA_TOPIC": settings.kafka_topic,
        "KAFKA_GROUP_ID": settings.kafka_group_id,
        "HEARTBEAT_STATE_DIR": str(settings.heartbeat_state_dir),
    }


def dumps(results: dict) -> str:
    return json.dumps(results, indent=2)
