"""Long-running jobs `heartbeat_consumer` and `heartbeat_producer`, thin over the streaming core.

Terminating a run from the UI interrupts its op with `DagsterExecutionInterruptedError`:
the consumer's and producer's own `finally` blocks then close the Kafka client and the
database connection (a batch in flight is rolled back whole and re-read by the next run),
so a run stops within a second or two. No RetryPolicy: the supervisor sensor replaces
failed consumer runs, and a retry would fight an operator's termination.

Progress is reported every `progress_interval_s` seconds, never per message: a log line,
an observation of the `heartbeat_events` asset whose numbers the UI plots, and, from the
consumer, a materialisation of each landing table it wrote since the last report (rows
written, event time of the last reading), which their freshness policies watch, and of
`alert_episodes` when episodes fired or resolved (transitions, one notification each).
The consumer run also evaluates the landing tables' checks every `checks_interval_s`
(five minutes), so the UI shows them with its materialisations (`_LandingChecks`).

With HEARTBEAT_METRICS_PORT set, each run also serves Prometheus /metrics, on the first
free port of METRICS_PORTS from that one (consumer workers and the producer share a host).
"""

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import dagster as dg
from prometheus_client import CollectorRegistry
from pydantic import Field

from heartbeat_platform import metrics, readiness
from heartbeat_platform.config import Settings
from heartbeat_platform.defs.asset_keys import (
    ALERT_EPISODES,
    ANOMALIES,
    DEAD_LETTERS,
    METRICS,
    RECORDS,
    TOPIC,
)
from heartbeat_platform.defs.landing import checks as landing_checks
from heartbeat_platform.defs.resources import KafkaResource
from heartbeat_platform.domain.alerts import PipelineStats
from heartbeat_platform.storage.database import connect
from heartbeat_platform.storage.writer import WriteResult
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.producer import HeartbeatProducer, ProducerReport

ROLE_TAG = "heartbeat/role"
CONSUMER_JOB = "heartbeat_consumer"
PRODUCER_JOB = "heartbeat_producer"
METRICS_PORTS = 5  # HEARTBEAT_METRICS_PORT .. +4: up to 3 consumer workers and producers


class ConsumerRunConfig(dg.Config):
    stop_when_idle: float | None = Field(
        default=None,
        description="Stop after this many seconds without a new message. Unset: run until "
        "the run is terminated (the supervised consumer).",
    )
    progress_interval_s: float = Field(default=30.0, ge=0, description="Seconds between reports.")
    checks_interval_s: float | None = Field(
        default=300.0, ge=0,
        description="Seconds between evaluations of the landing tables' checks in this run, "
        "so the UI shows them with the materialisations this run reports (null: never).",
    )


class ProducerRunConfig(dg.Config):
    rate: float = Field(default=1000.0, ge=0, description="Events per second; 0 = no limit.")
    events: int | None = Field(default=None, ge=1, description="Stop after this many events.")
    duration: float | None = Field(default=None, ge=0, description="Stop after this many seconds.")
    seed: int | None = Field(default=None, description="Seed for a repeatable stream.")
    progress_interval_s: float = Field(default=30.0, ge=0, description="Seconds between reports.")


class _Every:
    """Call `report` at most once per `interval` seconds, counting the rate in between."""

    def __init__(self, interval: float, report: Callable[[int, float], None]):
        self.interval, self.report = interval, report
        self.last_time, self.last_count = time.monotonic(), 0

    def __call__(self, count: int, force: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self.last_time
        if force or elapsed >= self.interval:
            self.report(count, (count - self.last_count) / elapsed if elapsed > 0 else 0.0)
            self.last_time, self.last_count = now, count


def _consumer_metadata(stats: PipelineStats, rate: float) -> dict[str, float | int]:
    return {
        "consumer_messages": stats.messages_consumed,
        "consumer_rate_per_s": round(rate, 1),
        "consumer_records": stats.records_written,
        "consumer_anomalies": stats.anomalies,
        "consumer_dead_letters": stats.dead_letters,
        "consumer_duplicates_dropped": stats.duplicates_dropped,
    }


def _landing_counts(stats: PipelineStats) -> dict[dg.AssetKey, int]:
    """Rows this run wrote to each landing table (pipeline_metrics: its alert rows)."""
    return {
        RECORDS: stats.records_written,
        ANOMALIES: stats.anomalies,
        DEAD_LETTERS: stats.dead_letters,
        METRICS: stats.alerts_triggered,
    }


class _LandingReport:
    """Materialisations of the tables the run changed since the previous report: the
    landing tables (rows written) and `alert_episodes` (transitions)."""

    def __init__(self) -> None:
        self.reported: dict[dg.AssetKey, int] = {}
        self.transitions = 0

    def add(self, result: WriteResult) -> None:
        self.transitions += result.episode_transitions

    def events(
        self, stats: PipelineStats, last_reading_at: datetime | None
    ) -> list[dg.AssetMaterialization]:
        events = []
        counts = {**_landing_counts(stats), ALERT_EPISODES: self.transitions}
        for key, count in counts.items():
            before = self.reported.get(key, 0)
            if count == before:
                continue
            what = "transitions" if key == ALERT_EPISODES else "rows_written"
            metadata: dict[str, Any] = {
                f"{what}_by_run": count, f"{what}_since_last_report": count - before,
            }
            if last_reading_at is not None and key in (RECORDS, ANOMALIES):
                metadata["last_reading_at"] = dg.MetadataValue.timestamp(last_reading_at)
            events.append(dg.AssetMaterialization(asset_key=key, metadata=metadata))
            self.reported[key] = count
        return events


class _LandingChecks:
    """The landing tables' checks, evaluated by the consumer run itself.

    The run materialises heartbeat_records and heartbeat_anomalies every report, and the UI
    shows a check's result only for the asset's newest materialisation, or when the check
    ran in the run that made it: checks run by another job are "Not evaluated" 30 s later.
    So the run evaluates them every `interval` seconds, on a thread with a connection of its
    own (one hour of readings is a read of seconds at the design rate; ingest does not
    wait for it), and logs the results from the op's thread at the next report.
    """

    def __init__(self, database_url: str, interval: float | None) -> None:
        self.database_url, self.interval = database_url, interval
        self.thread: threading.Thread | None = None
        self.started_at: float | None = None
        self.results: list[dg.AssetCheckEvaluation] = []
        self.error: BaseException | None = None

    def poll(self, context: dg.OpExecutionContext) -> None:
        """Log finished results; start the next evaluation when one is due."""
        if self.interval is None:
            return
        if self.thread is not None and not self.thread.is_alive():
            self._log(context)
        due = self.started_at is None or time.monotonic() - self.started_at >= self.interval
        if self.thread is None and due:
            self.started_at = time.monotonic()
            self.thread = threading.Thread(
                target=self._evaluate, name="landing-checks", daemon=True
            )
            self.thread.start()

    def finish(self, context: dg.OpExecutionContext, wait_s: float = 5.0) -> None:
        """At the end of the run: log an evaluation that finishes within `wait_s`."""
        if self.thread is not None:
            self.thread.join(wait_s)
            if not self.thread.is_alive():
                self._log(context)

    def _evaluate(self) -> None:
        try:
            with connect(self.database_url, autocommit=True) as conn:
                self.results = landing_checks.evaluate(conn)
        except Exception as exc:  # noqa: BLE001 - reported on the op's thread
            self.error = exc

    def _log(self, context: dg.OpExecutionContext) -> None:
        if self.error is not None:
            context.log.warning(f"landing checks not evaluated: {self.error}")
        for evaluation in self.results:
            # log_event takes check evaluations too (Dagster 1.13); its annotation lags.
            context.log_event(evaluation)  # type: ignore[arg-type]
        self.thread, self.results, self.error = None, [], None


def _serve_metrics(settings: Settings, log: dg.DagsterLogManager) -> CollectorRegistry | None:
    """A registry served on the first free port from HEARTBEAT_METRICS_PORT, or None."""
    base = settings.heartbeat_metrics_port
    if base is None:
        return None
    registry = CollectorRegistry()
    for port in range(base, base + METRICS_PORTS) if base else [0]:
        try:
            bound = metrics.serve(registry, port, settings.heartbeat_metrics_host)
        except OSError:
            continue
        log.info(f"Prometheus metrics on http://{settings.heartbeat_metrics_host}:{bound}/metrics")
        return registry
    log.warning(f"no free port for /metrics in {base}..{base + METRICS_PORTS - 1}; not served")
    return None


@dg.op(description="Consume heartbeat-events into PostgreSQL until terminated.")
def consume_heartbeats(
    context: dg.OpExecutionContext, config: ConsumerRunConfig, kafka: KafkaResource
) -> None:
    landing = _LandingReport()

    def report(count: int, rate: float) -> None:
        metadata = _consumer_metadata(consumer.stats, rate)
        context.log.info("consumer progress: " + ", ".join(f"{k}={v}" for k, v in metadata.items()))
        context.log_event(dg.AssetObservation(asset_key=TOPIC, metadata=metadata))
        for event in landing.events(consumer.stats, consumer.last_reading_at):
            context.log_event(event)
        checks.poll(context)

    def on_batch(result: WriteResult, stats: PipelineStats) -> None:
        landing.add(result)
        progress(stats.messages_consumed)

    progress = _Every(config.progress_interval_s, report)
    consumer_config = kafka.consumer_config(name=f"dagster-{context.run_id[:8]}")
    checks = _LandingChecks(consumer_config.database_url, config.checks_interval_s)
    consumer = HeartbeatConsumer(
        consumer_config, on_batch=on_batch, metrics=_serve_metrics(kafka.settings(), context.log),
    )
    try:
        consumer.run(stop_when_idle=config.stop_when_idle)
    finally:
        progress(consumer.stats.messages_consumed, force=True)
        checks.finish(context)
        context.log.info("consumer stopped; Kafka client and database connection closed")


@dg.op(description="Generate heart-rate readings and send them to heartbeat-events.")
def produce_heartbeats(
    context: dg.OpExecutionContext, config: ProducerRunConfig, kafka: KafkaResource
) -> None:
    if config.events is not None and config.duration is not None:
        raise dg.Failure("give `events` or `duration`, not both")
    producer = HeartbeatProducer(
        kafka.producer_config(), metrics=_serve_metrics(kafka.settings(), context.log)
    )

    def report(count: int, rate: float) -> None:
        r: ProducerReport = producer.report
        metadata = {
            "producer_sent": r.sent, "producer_delivered": r.delivered,
            "producer_failed": r.failed, "producer_uncertain": r.uncertain,
            "producer_rate_per_s": round(rate, 1),
        }
        context.log.info("producer progress: " + ", ".join(f"{k}={v}" for k, v in metadata.items()))
        context.log_event(dg.AssetObservation(asset_key=TOPIC, metadata=metadata))

    progress = _Every(config.progress_interval_s, report)
    try:
        result = producer.run(
            readiness.generator(kafka.settings(), config.seed),
            rate=config.rate or None, events=config.events, duration=config.duration,
            progress=lambda r: progress(r.sent),
        )
    finally:
        producer.close()
        progress(producer.report.sent, force=True)
    if result.undelivered:
        raise dg.Failure(
            f"{result.undelivered} of {result.sent} events have no delivery confirmation: "
            f"{result.failed} failed (not in the topic), {result.uncertain} uncertain (may be)"
        )


@dg.job(
    name=CONSUMER_JOB,
    description="The consumer loop (Kafka -> PostgreSQL), supervised by "
    "heartbeat_consumer_supervisor. Terminate the run to stop it.",
    tags={ROLE_TAG: "consumer"},
    executor_def=dg.in_process_executor,
)
def heartbeat_consumer() -> None:
    consume_heartbeats()


@dg.job(
    name=PRODUCER_JOB,
    description="Synthetic readings -> Kafka at `rate` events/s, for `events` or `duration` "
    "(neither: until the run is terminated).",
    tags={ROLE_TAG: "producer"},
    executor_def=dg.in_process_executor,
)
def heartbeat_producer() -> None:
    produce_heartbeats()
