"""`maintain`: the storage upkeep Dagster runs on schedule, once, for deployments without it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from heartbeat_platform import readiness
from heartbeat_platform.cli.base import JSON, Command, console, settings_or_exit

app = typer.Typer()


@app.command(cls=Command)
def maintain(as_json: Annotated[bool, JSON] = False) -> None:
    """Bring the rollups up to date, compact days older than HEARTBEAT_HOT_DAYS into the
    cold tier and apply retention once (what Dagster does on schedule, compaction aside).

    For deployments that run `consume` without Dagster: run it every minute or so (cron).
    """
    from heartbeat_platform.storage import maintenance
    from heartbeat_platform.storage.database import connect

    settings = settings_or_exit()
    database_url = readiness.ready(settings, topic=False).database_url
    with connect(database_url, autocommit=True) as conn:
        done = maintenance.maintain(conn, settings, datetime.now(UTC))
    retained = done.retained
    rollups = {
        r.rollup.value: {"windows": r.windows, "rows": r.rows, "readings": r.readings,
                         "seconds": round(r.seconds, 3)}
        for r in done.rollups
    }
    retention = retained.partitions.as_metadata()
    compaction = done.cold.as_metadata()
    if as_json:
        console.print_json(json.dumps({
            "rollups": rollups,
            "cold_tier": compaction,
            "retention": retention,
            "rollup_rows_deleted": retained.rollup_rows_deleted,
            "rollup_windows_not_settled": done.windows_not_settled,
            **retained.alerts,
        }))
        return
    for name, rollup in rollups.items():
        console.print(f"{name}: {rollup['windows']} windows recomputed")
    if not done.rollups:
        console.print("rollups: nothing settled to recompute")
    if done.windows_not_settled:
        console.print(
            f"{done.windows_not_settled} windows still open (recomputed once they settle)"
        )
    for moved in done.cold.compacted:
        console.print(f"cold tier: {moved.day} compacted, {moved.readings:,} readings in "
                      f"{moved.packs:,} packs ({moved.seconds:.1f} s)")
    for busy in done.cold.busy:
        console.print(f"cold tier: {busy} busy (a lock was not free), next run")
    for refused, why in done.cold.refused.items():
        console.print(f"cold tier: {refused} stays hot: {why}")
    if done.cold.cold_days_dropped:
        console.print("cold tier: dropped expired days "
                      f"{', '.join(str(d) for d in done.cold.cold_days_dropped)}")
    console.print(
        f"raw days kept {retained.partitions.first_day}..{retained.partitions.last_day}; "
        f"dropped {retention['days_dropped'] or 'nothing'}; kept for pending "
        f"rollups {retention['days_kept_for_rollups'] or 'none'}; kept for compaction "
        f"{retention['days_kept_for_compaction'] or 'none'}"
    )
    console.print(
        f"alerts: {retained.alerts['resolved_episodes_deleted']:,} resolved episodes and "
        f"{retained.alerts['delivered_notifications_deleted']:,} delivered notifications deleted"
    )
