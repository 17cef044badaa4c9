"""Periodic work, as schedules: `on_cron` automation never fires for assets whose parents
are external (see DESIGN.md), and every parent here is."""

from __future__ import annotations

import dagster as dg

from heartbeat_platform.orchestration.assets import ANOMALIES, RECORDS, pipeline_health_snapshot
from heartbeat_platform.orchestration.assets import summaries as summary_assets

health_snapshot_job = dg.define_asset_job(
    "pipeline_health",
    selection=dg.AssetSelection.assets(pipeline_health_snapshot),
    description="Record throughput, consumer lag, error and anomaly rates, dead letters.",
)

refresh_summaries_job = dg.define_asset_job(
    "refresh_summaries",
    selection=dg.AssetSelection.assets(*summary_assets)
    | dg.AssetSelection.checks_for_assets(RECORDS, ANOMALIES),
    description="Run the data-quality checks on heartbeat_records and heartbeat_anomalies, then "
    "refresh the summaries; a failed blocking check stops the refresh.",
)

every_minute = dg.ScheduleDefinition(
    name="pipeline_health_every_minute",
    job=health_snapshot_job,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

every_five_minutes = dg.ScheduleDefinition(
    name="refresh_summaries_every_5_minutes",
    job=refresh_summaries_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
