"""Lineage from the Kafka topic through the tables and views to the Grafana dashboard.

External assets (AssetSpec) are things Dagster does not build: the topic, the tables the
consumer writes, the views of `sql/002_views.sql` and the dashboard. Materialisable assets
are the summaries (materialised views refreshed concurrently, so readers never block)
and `pipeline_health_snapshot`, which records the pipeline's health every minute.
"""

import warnings
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg
import orjson
from psycopg import sql
from pydantic import Field

from heartbeat_platform.domain.alerts import MetricRow
from heartbeat_platform.orchestration.resources import KafkaResource, PostgresResource
from heartbeat_platform.storage.partitions import apply_retention
from heartbeat_platform.storage.rollups import Rollup, delete_expired, refresh
from heartbeat_platform.streaming.lag import PartitionLag

TOPIC = dg.AssetKey("heartbeat_events")
RECORDS = dg.AssetKey("heartbeat_records")
ANOMALIES = dg.AssetKey("heartbeat_anomalies")
DEAD_LETTERS = dg.AssetKey("heartbeat_dead_letters")
METRICS = dg.AssetKey("pipeline_metrics")
PREVIEW_ROWS = 10

topic = dg.AssetSpec(
    TOPIC,
    description="Kafka topic of heart-rate readings (KAFKA_TOPIC, default heartbeat-events): "
    "JSON {customer_id, heart_rate, timestamp}, key = customer_id, gzip, 3 partitions, 24 h "
    "retention. Written by the heartbeat_producer job (or any producer); read by "
    "heartbeat_consumer.",
    group_name="ingest",
    kinds={"kafka"},
)

_landing = {"group_name": "landing", "kinds": {"postgres", "table"}, "deps": [TOPIC]}
tables = [
    dg.AssetSpec(
        RECORDS,
        description="NORMAL readings (40..180 bpm), one per (customer_id, event_timestamp), "
        "each with its Kafka partition and offset. Written by heartbeat_consumer.",
        **_landing,
    ),
    dg.AssetSpec(
        ANOMALIES,
        description="BRADYCARDIA (<40), TACHYCARDIA (>180) and INVALID (<=0 or >300, sensor "
        "faults) readings with the raw JSON as audit trail; one alert row each in "
        "pipeline_metrics. Written by heartbeat_consumer.",
        **_landing,
    ),
    dg.AssetSpec(
        DEAD_LETTERS,
        description="Messages that are not readings (bad JSON, missing fields, wrong types), "
        "byte for byte with a reason. Written by heartbeat_consumer.",
        **_landing,
    ),
    dg.AssetSpec(
        METRICS,
        description="alert_<type> rows (one per anomaly), the consumer's cumulative stats_* "
        "snapshots and the health_* rows of pipeline_health_snapshot.",
        **_landing,
    ),
]

_serving = {"group_name": "serving", "kinds": {"postgres", "view"}}
views = [
    dg.AssetSpec(
        "vw_customer_bpm_summary",
        description="Per customer, over the rollups' retention: readings, BPM average/min/max/"
        "stddev, anomalies by type. Daily and hourly rollups plus the raw readings newer than "
        "the newest rolled-up hour; filter by customer_id.",
        deps=[RECORDS, ANOMALIES, "customer_hourly_bpm_stats", "customer_daily_bpm_stats"],
        **_serving,
    ),
    dg.AssetSpec(
        "vw_recent_anomalies",
        description="Anomalies of the last 24 hours, newest first, with a severity.",
        deps=[ANOMALIES],
        **_serving,
    ),
    dg.AssetSpec(
        "vw_pipeline_summary",
        description="One row: totals of records, anomalies by type, dead letters, alerts, "
        "active customers. Totals from fleet_minute_stats plus the raw readings newer than "
        "its newest minute.",
        deps=[RECORDS, ANOMALIES, DEAD_LETTERS, "fleet_minute_stats", "customers"],
        **_serving,
    ),
]


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


ROLLUPS_START = "2026-01-01"  # first partition offered for backfills (rollups are UTC)


class RollupConfig(dg.Config):
    pending_only: bool = Field(
        default=False,
        description="Recompute only the windows the consumer marked pending (the rollup "
        "sensor's runs). Off: every window of the partition range (a backfill).",
    )


def _refresh_rollup(
    context: dg.AssetExecutionContext, config: RollupConfig, postgres: PostgresResource,
    rollup: Rollup, preview_order: str,
) -> dg.MaterializeResult:
    """Recompute the partition's windows from their own raw rows; what was done as metadata."""
    window = context.partition_time_window
    with postgres.connect() as conn:
        result = refresh(
            conn, rollup, window.start, window.end, pending_only=config.pending_only,
            now=datetime.now(UTC),
        )
        cursor = conn.execute(
            sql.SQL("SELECT * FROM {} WHERE {} >= %s AND {} < %s ORDER BY {} LIMIT {}").format(
                sql.Identifier(rollup.table), sql.Identifier(rollup.key),
                sql.Identifier(rollup.key), sql.SQL(preview_order), sql.Literal(PREVIEW_ROWS),
            ),
            _key_bounds(rollup, window.start, window.end),
        )
        columns = [c.name for c in cursor.description]
        preview = _markdown_table(columns, cursor.fetchall())
    return dg.MaterializeResult(
        metadata={
            "windows_recomputed": result.windows,
            "rows_written": result.rows,
            "readings_summarised": result.readings,
            "pending_only": config.pending_only,
            "seconds": round(result.seconds, 3),
            "preview": dg.MetadataValue.md(preview),
        }
    )


def _key_bounds(rollup: Rollup, start, end) -> tuple:
    if rollup is Rollup.CUSTOMER_DAILY:
        return start.date(), end.date()
    return start, end


hourly = dg.HourlyPartitionsDefinition(start_date=f"{ROLLUPS_START}-00:00", end_offset=1)
daily = dg.DailyPartitionsDefinition(start_date=ROLLUPS_START, end_offset=1)


def _rollup_asset(**kwargs):
    """@dg.asset for a rollup: a backfill of many windows runs a day at a time per run, not
    one run per hour.

    `backfill_policy` is a beta parameter of @dg.asset in Dagster 1.13 and the only way to
    get multi-partition runs (no stable alternative exists), so its BetaWarning is ignored
    here, for these decorators only; every other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*`backfill_policy`.*", category=dg.BetaWarning
        )
        return dg.asset(
            group_name="rollups",
            kinds={"postgres", "table"},
            backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=24),
            **kwargs,
        )


@_rollup_asset(
    description="Whole fleet per minute: readings, active customers, BPM average/min/max/"
    "stddev, anomalies by type (each reading once). A partition is one hour of minutes; "
    "each minute's raw readings are read once, into customer_minute_stats, and the fleet "
    "minutes, fleet_totals and the `customers` table are built from them. The rollup "
    "sensor recomputes the minutes the consumer marked pending, within a minute.",
    deps=[RECORDS, ANOMALIES],
    partitions_def=hourly,
)
def fleet_minute_stats(
    context: dg.AssetExecutionContext, config: RollupConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    return _refresh_rollup(context, config, postgres, Rollup.FLEET_MINUTE, "minute DESC")


@_rollup_asset(
    description="Per customer and hour: readings, BPM average/min/max/stddev, first and last "
    "reading, anomalies by type. Built from the hour's customer minutes (customer_minute_"
    "stats) once the hour has closed, and again when late readings change one of them.",
    deps=[RECORDS, ANOMALIES],
    partitions_def=hourly,
)
def customer_hourly_bpm_stats(
    context: dg.AssetExecutionContext, config: RollupConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    return _refresh_rollup(
        context, config, postgres, Rollup.CUSTOMER_HOURLY, "hour DESC, customer_id"
    )


@_rollup_asset(
    description="Per customer and UTC day: the original design's daily statistics, built "
    "from the day's 24 hourly rows (sums keep the average and deviation exact).",
    deps=[customer_hourly_bpm_stats],
    partitions_def=daily,
)
def customer_daily_bpm_stats(
    context: dg.AssetExecutionContext, config: RollupConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    return _refresh_rollup(
        context, config, postgres, Rollup.CUSTOMER_DAILY, "day DESC, customer_id"
    )


@dg.asset(
    description="Day partitions of the raw tables: creates those of the retention window "
    "and the days ahead, drops the days older than HEARTBEAT_RAW_RETENTION_DAYS whose "
    "rollups are materialised (never one with a pending window), and deletes rollup rows "
    "older than HEARTBEAT_ROLLUP_RETENTION_DAYS. What it did is this asset's metadata.",
    deps=[RECORDS, ANOMALIES, DEAD_LETTERS, METRICS, fleet_minute_stats,
          customer_daily_bpm_stats],
    group_name="storage",
    kinds={"postgres"},
)
def raw_partitions(postgres: PostgresResource) -> dg.MaterializeResult:
    settings = postgres.settings()
    now = datetime.now(UTC)
    with postgres.connect() as conn:
        report = apply_retention(conn, settings.retention, now)
        deleted = delete_expired(conn, now, settings.heartbeat_rollup_retention_days)
    return dg.MaterializeResult(
        metadata={**report.as_metadata(), "rollup_rows_deleted": deleted}
    )


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
        counts = conn.execute(_ARRIVALS, {"w": timedelta(seconds=config.window_s)}).fetchone()
        rows = health_metrics(*counts, config.window_s, lags, kafka.embedded_broker_memory())
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


dashboard = dg.AssetSpec(
    "customer_heartbeat_monitoring",
    description="Grafana dashboard \"Customer Heartbeat Monitoring\" (uid heartbeat-monitoring): "
    "fleet average BPM, anomaly breakdown, recent anomalies, pipeline health and consumer lag. "
    "Its upstream assets are what its panels query.",
    deps=[
        RECORDS, ANOMALIES, METRICS, "vw_recent_anomalies", "vw_pipeline_summary",
        "fleet_minute_stats", "customer_hourly_bpm_stats", "customers",
        pipeline_health_snapshot,
    ],
    group_name="dashboards",
    kinds={"grafana"},
    metadata={"grafana_uid": "heartbeat-monitoring", "grafana_path": "/d/heartbeat-monitoring"},
)

customers = dg.AssetSpec(
    "customers",
    description="Every customer seen: first and last valid reading, last anomaly. Kept "
    "current by each fleet_minute_stats run; the dashboard's customer list and the active "
    "customer count read this small table instead of the readings.",
    deps=[fleet_minute_stats],
    group_name="rollups",
    kinds={"postgres", "table"},
)

rollups = [fleet_minute_stats, customer_hourly_bpm_stats, customer_daily_bpm_stats]
all_assets = [
    topic, *tables, *views, *rollups, customers, raw_partitions, pipeline_health_snapshot,
    dashboard,
]
