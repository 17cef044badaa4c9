"""The data-quality checks of the landing tables (`defs/landing/checks.py`), run every
five minutes. Schedules, not `on_cron` automation: that never fires for assets whose
parents are external (see DESIGN.md), and every parent here is."""

import dagster as dg

from heartbeat_platform.defs.asset_keys import ANOMALIES, RECORDS

data_quality_job = dg.define_asset_job(
    "data_quality",
    selection=dg.AssetSelection.checks_for_assets(RECORDS, ANOMALIES),
    description="The data-quality checks on heartbeat_records and heartbeat_anomalies, over "
    "the readings of the last hour.",
)

every_five_minutes = dg.ScheduleDefinition(
    name="data_quality_every_5_minutes",
    job=data_quality_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

