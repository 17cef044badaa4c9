"""Storage retention: the day partitions of the raw tables and the rollups' age limit,
every hour."""

from datetime import UTC, datetime

import dagster as dg

from heartbeat_platform.defs.asset_keys import ANOMALIES, DEAD_LETTERS, METRICS, RECORDS
from heartbeat_platform.defs.resources import PostgresResource
from heartbeat_platform.storage.maintenance import retain


@dg.asset(
    description="Day partitions of the raw tables: creates those of the retention window "
    "and the days ahead, drops the days older than HEARTBEAT_RAW_RETENTION_DAYS whose "
    "rollups are materialised (never one with a pending window), and deletes rollup rows "
    "older than HEARTBEAT_ROLLUP_RETENTION_DAYS, alert episodes resolved more than "
    "HEARTBEAT_ALERT_RETENTION_DAYS ago and their delivered notifications older than "
    "HEARTBEAT_ALERT_NOTIFICATION_RETENTION_HOURS. What it did is this asset's metadata.",
    deps=[RECORDS, ANOMALIES, DEAD_LETTERS, METRICS, "fleet_minute_stats",
          "customer_daily_bpm_stats"],
    group_name="storage",
    kinds={"postgres"},
)
def raw_partitions(postgres: PostgresResource) -> dg.MaterializeResult:
    settings = postgres.settings()
    with postgres.connect() as conn:
        retained = retain(conn, settings, datetime.now(UTC))
    return dg.MaterializeResult(metadata=retained.as_metadata())


raw_partitions_job = dg.define_asset_job(
    "storage_retention",
    selection=dg.AssetSelection.assets(raw_partitions),
    description="Create the day partitions ahead, drop expired days, prune old rollup rows.",
)

hourly_retention = dg.ScheduleDefinition(
    name="storage_retention_hourly",
    job=raw_partitions_job,
    cron_schedule="7 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


@dg.sensor(
    job=raw_partitions_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Materialises raw_partitions once when it never was (a fresh install), so "
    "the catalog does not say 'Never materialized' until the hourly schedule's first tick.",
)
def storage_retention_first_run(context: dg.SensorEvaluationContext):
    if context.instance.get_latest_materialization_event(raw_partitions.key) is not None:
        return dg.SkipReason("raw_partitions was materialised: the hourly schedule keeps it")
    return dg.RunRequest(run_key="first")  # a key runs once per sensor: the schedule goes on
