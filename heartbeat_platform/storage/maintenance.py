"""Storage upkeep: retention of raw days, rollup rows and alerts, the rollups brought
up to date, and days older than the hot days compacted into the cold tier.

The hourly Dagster retention job and `heartbeat-platform maintain` run the same
`retain`; `maintain` (for deployments without Dagster, where no rollup asset runs) also
refreshes the rollups. Each caller says what was done its own way: the asset as its
metadata, the command as lines or JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import psycopg

from heartbeat_platform.storage import cold, episodes
from heartbeat_platform.storage.database import one_row
from heartbeat_platform.storage.partitions import RetentionReport, apply_retention
from heartbeat_platform.storage.rollups import RefreshResult, delete_expired, refresh_pending

if TYPE_CHECKING:
    from heartbeat_platform.config import Settings

# A window marked more than once (several partitions' readings) is one window to recompute.
_WINDOWS_PENDING = (
    "SELECT count(*) FROM (SELECT DISTINCT rollup, window_start FROM rollup_pending) w"
)


@dataclass(frozen=True)
class Retained:
    partitions: RetentionReport
    rollup_rows_deleted: dict[str, int]  # rollup table -> rows older than their retention
    alerts: dict[str, int]  # resolved_episodes_deleted, delivered_notifications_deleted

    def as_metadata(self) -> dict:
        return {
            **self.partitions.as_metadata(),
            "rollup_rows_deleted": self.rollup_rows_deleted,
            **self.alerts,
        }


@dataclass(frozen=True)
class Maintained:
    rollups: list[RefreshResult]  # one per rollup that had settled windows
    retained: Retained
    windows_not_settled: int  # still pending: recomputed once they settle
    cold: cold.CompactionReport  # days moved to the cold tier, cold days dropped


def retain(conn: psycopg.Connection, settings: Settings, now: datetime) -> Retained:
    """Create the window's day partitions, drop the expired days whose rollups are done
    (and whose readings the cold tier holds), delete expired rollup rows, resolved episodes
    and delivered notifications."""
    # With a cold tier (the hot days end before the raw retention does), a hot day leaves
    # only once compaction has moved its readings: an expired day still holding some waits.
    compacting = settings.heartbeat_hot_days < settings.heartbeat_raw_retention_days
    partitions = apply_retention(conn, settings.retention, now, keep_uncompacted=compacting)
    deleted = delete_expired(conn, now, settings.heartbeat_rollup_retention_days)
    alerts = episodes.retain(
        conn, now, settings.heartbeat_alert_retention_days,
        settings.heartbeat_alert_notification_retention_hours,
    )
    return Retained(partitions, deleted, alerts)


def maintain(conn: psycopg.Connection, settings: Settings, now: datetime) -> Maintained:
    """Recompute the settled rollup windows, compact the days older than the hot days
    into the cold tier (and drop expired cold days), then `retain` (a day leaves only
    once its rollups hold it, so refreshing first lets retention drop it in the same
    pass; compacting first means the hot day it drops is already empty)."""
    rollups = refresh_pending(conn, now)
    policy = settings.cold_tier
    compacted = cold.compact_due(conn, now, policy.hot_days, policy.cold_retention_days)
    retained = retain(conn, settings, now)
    return Maintained(rollups, retained, one_row(conn.execute(_WINDOWS_PENDING))[0],
                      compacted)
