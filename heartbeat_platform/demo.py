"""`heartbeat-platform demo`: produce N events, consume them, account for every one.

The consumer runs in a thread of this process, in the platform's consumer group: if a
supervised consumer is already running, the two share the partitions, which is fine,
because completion is read from the progress stored in PostgreSQL, not from this
process's own consumer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

from prometheus_client import CollectorRegistry

from heartbeat_platform import readiness
from heartbeat_platform.config import Settings
from heartbeat_platform.storage.database import connect, one_row
from heartbeat_platform.storage.progress import load_all_progress
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.producer import HeartbeatProducer, ProducerReport

WAIT_FOR_CONSUMER_S = 120


@dataclass
class DemoSummary:
    produced: int
    delivered: int
    failed: int
    uncertain: int
    by_class: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    alerts: int = 0
    unaccounted: int = 0
    seconds: float = 0.0
    events_per_s: float = 0.0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.uncertain == 0 and self.unaccounted == 0

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def run_demo(
    settings: Settings, events: int, rate: float | None = None, seed: int | None = None,
    metrics: CollectorRegistry | None = None,
) -> DemoSummary:
    """`metrics`: a Prometheus registry the demo's consumer and producer both report to."""
    prepared = readiness.prepare(settings)
    endpoints = prepared.endpoints
    consumer = HeartbeatConsumer(readiness.consumer_config(settings, endpoints), metrics=metrics)
    consuming = threading.Thread(target=consumer.run, name="demo-consumer", daemon=True)
    consuming.start()
    try:
        consumer.assigned.wait(timeout=30)  # joining the group takes seconds; don't count it
        started = time.monotonic()
        with HeartbeatProducer(
            readiness.producer_config(settings, endpoints), metrics=metrics
        ) as producer:
            report = producer.run(readiness.generator(settings, seed), rate=rate, events=events)
        _wait_until_stored(endpoints.database_url, settings, report)
    finally:
        consumer.request_stop()
        consuming.join(timeout=30)
    seconds = time.monotonic() - started
    summary = _account(endpoints.database_url, settings, report)
    summary.seconds = round(seconds, 2)
    summary.events_per_s = round(report.delivered / seconds, 1) if seconds else 0.0
    return summary


def _wait_until_stored(database_url: str, settings: Settings, report: ProducerReport) -> None:
    """Until the stored progress passes the last offset delivered to every partition."""
    deadline = time.monotonic() + WAIT_FOR_CONSUMER_S
    while time.monotonic() < deadline:
        progress = load_all_progress(database_url, settings.kafka_group_id, settings.kafka_topic)
        if all(
            p in progress and progress[p].next_offset > high
            for p, (_, high) in report.delivered_offsets.items()
        ):
            return
        time.sleep(0.2)


def _account(database_url: str, settings: Settings, report: ProducerReport) -> DemoSummary:
    """Find every delivered message in exactly one landing table, by partition and offset."""
    summary = DemoSummary(report.sent, report.delivered, report.failed, report.uncertain)
    with connect(database_url, autocommit=True) as conn:
        progress = load_all_progress(database_url, settings.kafka_group_id, settings.kafka_topic)
        ranges = [
            (p, progress[p].log_epoch if p in progress else 0, low, high)
            for p, (low, high) in report.delivered_offsets.items()
        ]
        by_class: dict[str, int] = {}
        latencies: list[tuple[float, float]] = []
        for partition, epoch, low, high in ranges:
            where = (partition, epoch, low, high)
            in_range = "kafka_partition = %s AND log_epoch = %s AND kafka_offset BETWEEN %s AND %s"
            normal, p50, p99 = one_row(
                conn.execute(
                    "SELECT count(*), "
                    "percentile_cont(0.5) WITHIN GROUP (ORDER BY ingested_at - event_timestamp), "
                    "percentile_cont(0.99) WITHIN GROUP (ORDER BY ingested_at - event_timestamp) "
                    f"FROM heartbeat_records WHERE {in_range}",
                    where,
                )
            )
            by_class["NORMAL"] = by_class.get("NORMAL", 0) + normal
            if normal:
                latencies.append((p50.total_seconds() * 1000, p99.total_seconds() * 1000))
            for kind, count in conn.execute(
                f"SELECT anomaly_type, count(*) FROM heartbeat_anomalies WHERE {in_range} "
                "GROUP BY anomaly_type",
                where,
            ):
                by_class[kind] = by_class.get(kind, 0) + count
            summary.dead_letters += one_row(
                conn.execute(f"SELECT count(*) FROM heartbeat_dead_letters WHERE {in_range}", where)
            )[0]
            summary.alerts += one_row(
                conn.execute(
                    f"SELECT count(*) FROM pipeline_metrics WHERE metric_name LIKE 'alert\\_%%' "
                    f"AND {in_range}",
                    where,
                )
            )[0]
        found = sum(by_class.values()) + summary.dead_letters
    summary.by_class = by_class
    summary.unaccounted = report.delivered - found
    if latencies:  # partitions are similar; report the worst partition's percentiles
        summary.latency_p50_ms = round(max(p50 for p50, _ in latencies), 1)
        summary.latency_p99_ms = round(max(p99 for _, p99 in latencies), 1)
    return summary
