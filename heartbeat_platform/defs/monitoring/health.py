"""Every minute, `pipeline_health_snapshot` records the pipeline's health in
pipeline_metrics and as asset metadata the UI plots."""

from collections.abc import Sequence
from datetime import timedelta

import dagster as dg
import orjson
from pydantic import Field

from heartbeat_platform.defs.asset_keys import ANOMALIES, DEAD_LETTERS, RECORDS, TOPIC
from heartbeat_platform.defs.resources import KafkaResource, PostgresResource
from heartbeat_platform.domain.alerts import MetricRow
from heartbeat_platform.storage.database import one_row
from heartbeat_platform.streaming.lag import PartitionLag


class HealthSnapshotConfig(dg.Config):
    window_s: int = Field(default=60, ge=1, description="Seconds of arrivals each snapshot covers.")


def health_metrics(
    records: int, anomalies: int, dead_letters: int, window_s: int, lags: Sequence[PartitionLag],
    broker_memory_bytes: int | None = None,
) -> list[MetricRow]:
    """The health_* rows of one snapshot from what arrived in the window and the lag now;
    with the embedded broker, its memory and log size (messages) too: it keeps every message
    until its log is rotated (HEARTBEAT_BROKER_MAX_LOG_MB)."""
    messages = records + anomalies + dead_letters
    readings = records + anomalies
    window = {"window_s": window_s}
    broker = [] if broker_memory_bytes is None else [
        MetricRow("health_broker_memory_mb", broker_memory_bytes / 1_048_576),
        MetricRow("health_broker_log_messages", float(sum(lag.log_end_offset for lag in lags))),
    ]
    return [*broker,
        MetricRow("health_throughput_per_s", messages / window_s, labels=window),
        MetricRow("health_error_rate", dead_letters / messages if messages else 0.0, labels=window),
        MetricRow("health_anomaly_rate", anomalies / readings if readings else 0.0, labels=window),
        MetricRow("health_dead_letters", float(dead_letters), labels=window),
        *(
            MetricRow("health_consumer_lag", float(lag.lag), labels={"partition": lag.partition})
            for lag in lags
        ),
    ]


_ARRIVALS = """
SELECT (SELECT count(*) FROM heartbeat_records WHERE ingested_at > now() - %(w)s),
       (SELECT count(*) FROM heartbeat_anomalies WHERE detected_at > now() - %(w)s),
       (SELECT count(*) FROM heartbeat_dead_letters WHERE received_at > now() - %(w)s)
"""
_INSERT = "INSERT INTO pipeline_metrics (metric_name, metric_value, labels) VALUES (%s, %s, %s)"


@dg.asset(
    description="Every minute: throughput (messages/s), consumer lag per partition, error "
    "rate (dead letters / messages), anomaly rate (anomalies / readings) and dead letters "
    "over the last window (and the embedded broker's memory and log size), written as "
    "health_* rows to pipeline_metrics and plotted under "
    "Metadata -> Plots.",
    deps=[TOPIC, RECORDS, ANOMALIES, DEAD_LETTERS],
    group_name="monitoring",
    kinds={"postgres", "kafka"},
)
def pipeline_health_snapshot(
    config: HealthSnapshotConfig, postgres: PostgresResource, kafka: KafkaResource
) -> dg.MaterializeResult:
    lags = kafka.lag()
    with postgres.connect() as conn, conn.transaction():
        arrivals = conn.execute(_ARRIVALS, {"w": timedelta(seconds=config.window_s)})
        records, anomalies, dead_letters = one_row(arrivals)
        rows = health_metrics(
            records, anomalies, dead_letters, config.window_s, lags,
            kafka.embedded_broker_memory(),
        )
        conn.cursor().executemany(
            _INSERT,
            [(r.metric_name, r.metric_value, orjson.dumps(r.labels).decode()) for r in rows],
        )
    metadata: dict[str, float] = {}
    for row in rows:
        name = row.metric_name.removeprefix("health_")
        if "partition" in row.labels:
            name = f"{name}_partition_{row.labels['partition']}"
        metadata[name] = round(row.metric_value, 4)
    metadata["consumer_lag_total"] = float(sum(lag.lag for lag in lags))
    return dg.MaterializeResult(metadata=metadata)


health_snapshot_job = dg.define_asset_job(
    "pipeline_health",
    selection=dg.AssetSelection.assets(pipeline_health_snapshot),
    description="Record throughput, consumer lag, error and anomaly rates, dead letters.",
)

every_minute = dg.ScheduleDefinition(
    name="pipeline_health_every_minute",
    job=health_snapshot_job,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

