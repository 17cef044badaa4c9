"""The cold tier: each UTC day's readings compacted from the hot tables into packs per
customer and hour (storage/cold.py), once the day has been over for HEARTBEAT_HOT_DAYS.

One partition per UTC day. Materialising a day that is due compacts it (verified in one
transaction; a day already compacted does nothing unless late readings arrived, which are
merged); a day not due yet is materialised as still hot, changing nothing. The daily
schedule requests every due day that still holds hot rows, so late readings inside the
admissible window are merged the next night. The partition's metadata says which tier the
day is in and what compaction did.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from heartbeat_platform.defs.asset_keys import ANOMALIES, RECORDS
from heartbeat_platform.defs.resources import PostgresResource
from heartbeat_platform.defs.serving.rollups import ROLLUPS_START
from heartbeat_platform.domain.retention import day_start
from heartbeat_platform.storage import cold

cold_days = dg.DailyPartitionsDefinition(start_date=ROLLUPS_START, end_offset=1)  # today: hot


@dg.asset(
    description="Every reading older than HEARTBEAT_HOT_DAYS, packed per customer and UTC "
    "hour (heartbeat_cold, about 2-4 bytes a reading). A partition is one UTC day: "
    "materialising a due day moves it from heartbeat_records/heartbeat_anomalies here only "
    "after its copy is verified (count, sum, sum of squares per customer, a checksum); a "
    "day not due yet stays hot. Read both tiers with heartbeat_readings(customer, from, to) "
    "or `heartbeat-platform readings`.",
    deps=[RECORDS, ANOMALIES],
    partitions_def=cold_days,
    group_name="storage",
    kinds={"postgres"},
)
def heartbeat_cold(
    context: dg.AssetExecutionContext, postgres: PostgresResource
) -> dg.MaterializeResult:
    policy = postgres.settings().cold_tier
    day = datetime.strptime(context.partition_key, "%Y-%m-%d").date()
    due_at = day_start(day) + timedelta(days=1 + policy.hot_days)
    if datetime.now(UTC) < due_at:
        return dg.MaterializeResult(metadata={
            "tier": "hot", "compacted_from": due_at.isoformat(),
        })
    with postgres.connect() as conn:
        done = cold.compact_day(conn, day)
        readings = conn.execute(
            "SELECT readings FROM heartbeat_cold_days WHERE day = %s", (day,)
        ).fetchone()
    return dg.MaterializeResult(metadata={
        "tier": "cold" if readings else "empty",
        "cold_readings": readings[0] if readings else 0,
        **done.as_metadata(),
    })


cold_tier_job = dg.define_asset_job(
    "cold_tier_compaction",
    selection=dg.AssetSelection.assets(heartbeat_cold),
    partitions_def=cold_days,
    description="Compact one UTC day into the cold tier.",
)


@dg.schedule(
    name="cold_tier_daily",
    job=cold_tier_job,
    cron_schedule="23 0 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Each night: a run for every day over for HEARTBEAT_HOT_DAYS that still "
    "holds hot readings (never compacted, or late readings since).",
)
def cold_tier_daily(context: dg.ScheduleEvaluationContext, postgres: PostgresResource):
    policy = postgres.settings().cold_tier
    with postgres.connect() as conn:
        due = cold.due_days(conn, datetime.now(UTC), policy.hot_days)
    known = set(cold_days.get_partition_keys())
    requests = [dg.RunRequest(partition_key=str(day), run_key=None)
                for day in due if str(day) in known]
    return requests or dg.SkipReason("no hot day is due for compaction")
