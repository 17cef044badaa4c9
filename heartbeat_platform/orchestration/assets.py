"""Lineage from the Kafka topic through the tables and views to the Grafana dashboard.

External assets (AssetSpec) are things Dagster does not build: the topic, the tables the
consumer writes, the views of `sql/002_views.sql` and the dashboard. Materialisable assets
are the summaries (materialised views refreshed concurrently, so readers never block)
and `pipeline_health_snapshot`, which records the pipeline's health every minute.
"""

from collections.abc import Sequence
from datetime import timedelta

import dagster as dg
import orjson
import psycopg
from psycopg import sql
from pydantic import Field

from heartbeat_platform.domain.alerts import MetricRow
from heartbeat_platform.orchestration.resources import KafkaResource, PostgresResource
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
        description="Per customer, all time: readings, BPM average/min/max/stddev, anomalies "
        "by type. A plain view: always current.",
        deps=[RECORDS, ANOMALIES],
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
        "active customers.",
        deps=[RECORDS, ANOMALIES, DEAD_LETTERS, METRICS],
        **_serving,
    ),
]


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def refresh_summary(conn: psycopg.Connection, name: str, order_by: str) -> dg.MaterializeResult:
    """Refresh a materialised view without blocking readers; row count and preview as metadata."""
    view = sql.Identifier(name)
    conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(view))
    count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(view)).fetchone()[0]
    cursor = conn.execute(
        sql.SQL("SELECT * FROM {} ORDER BY {} LIMIT {}").format(
            view, sql.SQL(order_by), sql.Literal(PREVIEW_ROWS)
        )
    )
    columns = [c.name for c in cursor.description]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "preview": dg.MetadataValue.md(_markdown_table(columns, cursor.fetchall())),
        }
    )


_summary = {"group_name": "serving", "kinds": {"postgres"}, "deps": [RECORDS, ANOMALIES]}


@dg.asset(
    description="Per customer and UTC day: readings, BPM average/min/max/stddev, anomalies by "
    "type. Materialised view, refreshed concurrently by refresh_summaries.",
    **_summary,
)
def customer_daily_bpm_stats(postgres: PostgresResource) -> dg.MaterializeResult:
    with postgres.connect() as conn:
        return refresh_summary(conn, "customer_daily_bpm_stats", "day DESC, customer_id")


@dg.asset(
    description="Per minute, whole fleet: readings, active customers, BPM average/min/max, "
    "anomalies by type. Materialised view, refreshed concurrently by refresh_summaries.",
    **_summary,
)
def fleet_minute_stats(postgres: PostgresResource) -> dg.MaterializeResult:
    with postgres.connect() as conn:
        return refresh_summary(conn, "fleet_minute_stats", "minute DESC")


class HealthSnapshotConfig(dg.Config):
    window_s: int = Field(default=60, ge=1, description="Seconds of arrivals each snapshot covers.")


def health_metrics(
    records: int, anomalies: int, dead_letters: int, window_s: int, lags: Sequence[PartitionLag]
) -> list[MetricRow]:
    """The health_* rows of one snapshot from what arrived in the window and the lag now."""
    messages = records + anomalies + dead_letters
    readings = records + anomalies
    window = {"window_s": window_s}
    return [
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
    "over the last window, written as health_* rows to pipeline_metrics and plotted under "
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
        rows = health_metrics(*counts, config.window_s, lags)
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
        "vw_customer_bpm_summary", pipeline_health_snapshot,
    ],
    group_name="dashboards",
    kinds={"grafana"},
    metadata={"grafana_uid": "heartbeat-monitoring", "grafana_path": "/d/heartbeat-monitoring"},
)

summaries = [customer_daily_bpm_stats, fleet_minute_stats]
all_assets = [topic, *tables, *views, *summaries, pipeline_health_snapshot, dashboard]
