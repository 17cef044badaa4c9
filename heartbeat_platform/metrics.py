"""Prometheus metrics of the consumer and the producer, served on /metrics.

Counters and gauges are read when Prometheus scrapes (custom collectors) from what the
running loop publishes: the consumer a `ConsumerSnapshot` each round, the producer its
delivery counts. The hot path pays nothing for them; only the histograms (batch size,
write time, end-to-end delay of a sample of readings) are observed once per batch. This
module imports nothing of the streaming package: the loops call it, not the reverse.
Each metric's name is defined once, as a `Metric` below: the collectors and the
dashboard's PromQL (grafana/build_dashboards.py) both read it from there.
Off unless a port is given (`HEARTBEAT_METRICS_PORT`, `--metrics-port`); loopback by
default (`HEARTBEAT_METRICS_HOST`), because the numbers describe a fleet's health data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, Protocol

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from heartbeat_platform.domain.alerts import PipelineStats
from heartbeat_platform.domain.dead_letters import DeadLetterClass

if TYPE_CHECKING:
    from heartbeat_platform.storage.writer import Batch, WriteResult

log = logging.getLogger(__name__)

LATENCY_SAMPLE_EVERY = 64  # one reading in 64 feeds the end-to-end histogram


@dataclass(frozen=True)
class Metric:
    """A metric as registered: its name, its type and the one label it carries, if any."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    label: str | None = None

    @property
    def sample(self) -> str:
        """The series PromQL selects: a counter's `_total`, a gauge itself, a histogram's
        `_bucket` (what histogram_quantile reads)."""
        suffix = {"counter": "_total", "gauge": "", "histogram": "_bucket"}[self.kind]
        return self.name + suffix


CONSUMER_BATCH_MESSAGES = Metric("heartbeat_consumer_batch_messages", "histogram")
CONSUMER_BATCH_WRITE_SECONDS = Metric("heartbeat_consumer_batch_write_seconds", "histogram")
CONSUMER_END_TO_END_SECONDS = Metric("heartbeat_consumer_end_to_end_seconds", "histogram")
CONSUMER_MESSAGES = Metric("heartbeat_consumer_messages", "counter")
CONSUMER_ROWS = Metric("heartbeat_consumer_rows", "counter", "table")
CONSUMER_DUPLICATES = Metric("heartbeat_consumer_duplicates", "counter")
CONSUMER_DEAD_LETTERS = Metric("heartbeat_consumer_dead_letters", "counter", "reason")
CONSUMER_LAG_MESSAGES = Metric("heartbeat_consumer_lag_messages", "gauge", "partition")
CONSUMER_DATABASE_UNAVAILABLE = Metric("heartbeat_consumer_database_unavailable", "gauge")
CONSUMER_KAFKA_ERRORS = Metric("heartbeat_consumer_kafka_errors", "counter")
CONSUMER_LOST_AT_SOURCE = Metric("heartbeat_consumer_lost_at_source", "counter", "partition")
CONSUMER_TRUNCATED_STORED = Metric("heartbeat_consumer_truncated_stored", "counter", "partition")
PRODUCER_MESSAGES = Metric("heartbeat_producer_messages", "counter", "outcome")
PRODUCER_RECREATED = Metric("heartbeat_producer_recreated", "counter")

CONSUMER_METRICS = (
    CONSUMER_BATCH_MESSAGES, CONSUMER_BATCH_WRITE_SECONDS, CONSUMER_END_TO_END_SECONDS,
    CONSUMER_MESSAGES, CONSUMER_ROWS, CONSUMER_DUPLICATES, CONSUMER_DEAD_LETTERS,
    CONSUMER_LAG_MESSAGES, CONSUMER_DATABASE_UNAVAILABLE, CONSUMER_KAFKA_ERRORS,
    CONSUMER_LOST_AT_SOURCE, CONSUMER_TRUNCATED_STORED,
)
PRODUCER_METRICS = (PRODUCER_MESSAGES, PRODUCER_RECREATED)


@dataclass(frozen=True)
class ConsumerSnapshot:
    """What the consumer's loop publishes once a round, for the scrape thread to read."""

    stats: PipelineStats = field(default_factory=PipelineStats)  # of the committed batches
    lag: dict[int, int] = field(default_factory=dict)  # per assigned partition
    database_unavailable: bool = False
    kafka_errors: int = 0  # errors the Kafka client reported (it retries)
    lost_at_source: dict[int, int] = field(default_factory=dict)  # per partition
    truncated_stored: dict[int, int] = field(default_factory=dict)  # per partition


class DeliveryCounts(Protocol):
    """A producer's delivery counts (`ProducerReport`)."""

    sent: int
    delivered: int
    failed: int
    uncertain: int
    recreated: int


class ConsumerMetrics:
    """What a consumer reports: per-batch histograms and dead-letter classes here, the rest
    read from its latest snapshot at scrape time."""

    def __init__(self, registry: CollectorRegistry, snapshot: Callable[[], ConsumerSnapshot]):
        self.batch_messages = Histogram(
            CONSUMER_BATCH_MESSAGES.name, "Messages per committed batch",
            buckets=(1, 10, 100, 500, 1_000, 5_000, 10_000, 20_000, 50_000), registry=registry,
        )
        self.write_seconds = Histogram(
            CONSUMER_BATCH_WRITE_SECONDS.name,
            "Time to write and commit one batch in PostgreSQL", registry=registry,
        )
        self.end_to_end_seconds = Histogram(
            CONSUMER_END_TO_END_SECONDS.name,
            f"Reading timestamp to its committed row (1 reading in {LATENCY_SAMPLE_EVERY})",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60), registry=registry,
        )
        self.dead_letters: dict[DeadLetterClass, int] = dict.fromkeys(DeadLetterClass, 0)
        registry.register(ConsumerCollector(snapshot, self.dead_letters))

    def batch_committed(self, batch: Batch, result: WriteResult, write_seconds: float) -> None:
        self.batch_messages.observe(batch.message_count)
        self.write_seconds.observe(write_seconds)
        now = datetime.now(UTC)
        for row in batch.records[::LATENCY_SAMPLE_EVERY]:
            self.end_to_end_seconds.observe(max(0.0, (now - row[1]).total_seconds()))
        for dead_letter in batch.dead_letters:
            self.dead_letters[dead_letter[6]] += 1
        # the batch as built; the writer made the messages the database refused dead letters
        self.dead_letters[DeadLetterClass.REFUSED] += result.refused


class ConsumerCollector(Collector):
    """Counters and gauges of a running consumer, read when Prometheus asks."""

    def __init__(
        self, snapshot: Callable[[], ConsumerSnapshot], dead_letters: dict[DeadLetterClass, int]
    ):
        self.snapshot = snapshot
        self.dead_letters = dead_letters

    def collect(self) -> Iterator:
        now = self.snapshot()
        stats = now.stats
        yield CounterMetricFamily(CONSUMER_MESSAGES.name,
                                  "Messages committed to PostgreSQL", stats.messages_consumed)
        yield _labelled(CounterMetricFamily, CONSUMER_ROWS, "Rows written, by table", {
            "heartbeat_records": stats.records_written,
            "heartbeat_anomalies": stats.anomalies,
            "heartbeat_dead_letters": stats.dead_letters,
            "pipeline_metrics": stats.alerts_triggered,
        })
        yield CounterMetricFamily(CONSUMER_DUPLICATES.name,
                                  "Readings already stored, dropped", stats.duplicates_dropped)
        yield _labelled(CounterMetricFamily, CONSUMER_DEAD_LETTERS,
                        "Dead letters by reason class", dict(self.dead_letters))
        yield _labelled(GaugeMetricFamily, CONSUMER_LAG_MESSAGES,
                        "Log end minus the progress stored in PostgreSQL, per assigned partition",
                        now.lag)
        yield GaugeMetricFamily(CONSUMER_DATABASE_UNAVAILABLE.name,
                                "1 while the consumer waits for PostgreSQL to come back",
                                1.0 if now.database_unavailable else 0.0)
        yield CounterMetricFamily(CONSUMER_KAFKA_ERRORS.name,
                                  "Errors the Kafka client reported (it retries)",
                                  now.kafka_errors)
        yield _labelled(CounterMetricFamily, CONSUMER_LOST_AT_SOURCE,
                        "Messages the broker deleted (retention) or lost (an unclean leader "
                        "election) before this consumer read them, per partition",
                        now.lost_at_source)
        yield _labelled(CounterMetricFamily, CONSUMER_TRUNCATED_STORED,
                        "Stored messages the broker's log no longer holds (an unclean leader "
                        "election truncated it; their rows stay), per partition",
                        now.truncated_stored)


class ProducerCollector(Collector):
    """Delivery counts of a running producer, read when Prometheus asks."""

    def __init__(self, report: Callable[[], DeliveryCounts]):
        self.report = report

    def collect(self) -> Iterator:
        report = self.report()
        yield _labelled(CounterMetricFamily, PRODUCER_MESSAGES,
                        "Messages by delivery outcome", {
                            "sent": report.sent, "delivered": report.delivered,
                            "failed": report.failed, "uncertain": report.uncertain,
                        })
        yield CounterMetricFamily(PRODUCER_RECREATED.name,
                                  "Times the Kafka client was re-created", report.recreated)


def _labelled(family, metric: Metric, documentation: str, values: dict):
    """A metric family with one sample per key of `values`, under the metric's label."""
    assert metric.label is not None, metric.name
    result = family(metric.name, documentation, labels=[metric.label])
    for key, value in values.items():
        result.add_metric([str(key)], value)
    return result


def serve(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> int:
    """Serve `registry` on http://host:port/metrics in a daemon thread; the port bound
    (0 picks a free one)."""
    server, _ = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address[1]
    log.info("Prometheus metrics on http://%s:%d/metrics", host, bound)
    return bound
