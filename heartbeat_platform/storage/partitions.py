"""Day partitions of the raw tables: create ahead, drop what retention lets go.

The decisions (which days, which are expired) are the domain's `RetentionPolicy`; this
module only reads and changes the catalog. Partitions are named `<table>_pYYYYMMDD` by
`heartbeat_ensure_partitions()` (sql/006), which is the one place that creates them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import psycopg
from psycopg import sql

from heartbeat_platform.domain.retention import RetentionPolicy, day_start
from heartbeat_platform.storage.database import one_row

log = logging.getLogger(__name__)

RAW_TABLES = ("heartbeat_records", "heartbeat_anomalies", "heartbeat_dead_letters",
              "pipeline_metrics")
# The customer minutes, the first rollup level (hours are built from them), live as long
# as the raw rows they summarise.
DAY_PARTITIONED = (*RAW_TABLES, "customer_minute_stats")
# Readings: a day may go only once its rollups hold it. The other tables are not rolled up
# (or are the rollup's first level); they leave with the same window.
ROLLED_UP = frozenset({"heartbeat_records", "heartbeat_anomalies"})
_SUFFIX = re.compile(r"_p(\d{8})$")
# Creating, attaching or detaching a partition locks its parent, and waits behind any open
# reader (a slow panel, an idle transaction) while writers queue behind it. Give up after
# this long instead; the next run (or the consumer's next hourly check) tries again.
DDL_LOCK_TIMEOUT = "2s"


@dataclass
class RetentionReport:
    created: int = 0
    dropped: dict[str, list[date]] = field(default_factory=dict)  # table -> days dropped
    kept_for_rollups: list[date] = field(default_factory=list)  # expired, rollups pending
    # expired, still holding hot readings that the cold tier has not taken yet
    kept_for_compaction: list[date] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # partitions a reader kept locked: next run
    first_day: date | None = None
    last_day: date | None = None

    def as_metadata(self) -> dict:
        return {
            "partitions_created": self.created,
            "days_dropped": sorted({str(d) for days in self.dropped.values() for d in days}),
            "partitions_dropped": sum(len(days) for days in self.dropped.values()),
            "days_kept_for_rollups": [str(d) for d in self.kept_for_rollups],
            "days_kept_for_compaction": [str(d) for d in self.kept_for_compaction],
            "partitions_busy_retry_next_run": self.busy,
            "window_first_day": str(self.first_day),
            "window_last_day": str(self.last_day),
        }


def ensure_partitions(conn: psycopg.Connection, policy: RetentionPolicy, now: datetime) -> int:
    """Create the missing day partitions of the window (retention + days ahead); how many."""
    first, last = policy.days_to_create(now)
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        created = one_row(
            conn.execute("SELECT heartbeat_ensure_partitions(%s, %s)", (first, last))
        )[0]
    if created:
        log.info("created %d day partitions for %s..%s", created, first, last)
    return created


def partition_days(conn: psycopg.Connection) -> dict[str, list[date]]:
    """The day partitions each day-partitioned table has now."""
    rows = conn.execute(
        """SELECT parent.relname, child.relname
           FROM pg_inherits
           JOIN pg_class child ON child.oid = pg_inherits.inhrelid
           JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
           WHERE parent.relnamespace = current_schema()::regnamespace
             AND parent.relname = ANY(%s)""",
        (list(DAY_PARTITIONED),),
    ).fetchall()
    days: dict[str, list[date]] = {table: [] for table in DAY_PARTITIONED}
    for parent, child in rows:
        match = _SUFFIX.search(child)
        if match:
            days[parent].append(datetime.strptime(match.group(1), "%Y%m%d").date())
    return {table: sorted(found) for table, found in days.items()}


def apply_retention(
    conn: psycopg.Connection, policy: RetentionPolicy, now: datetime, *,
    keep_uncompacted: bool = False,
) -> RetentionReport:
    """Create the window's partitions, then drop expired days whose rollups are done (and,
    with `keep_uncompacted`, whose readings the cold tier holds: their hot partitions are
    empty)."""
    report = RetentionReport(created=ensure_partitions(conn, policy, now))
    report.first_day, report.last_day = policy.days_to_create(now)
    existing = partition_days(conn)
    expired = {table: policy.expired_days(days, now) for table, days in existing.items()}
    candidates = sorted({d for t in ROLLED_UP for d in expired[t]})
    report.kept_for_rollups = sorted(
        set(unrolled_days(conn, candidates))
        | {d for d in candidates if _readings_without_daily_rollup(conn, d, existing)}
    )
    if keep_uncompacted:
        report.kept_for_compaction = [
            d for d in candidates
            if d not in report.kept_for_rollups and _holds_readings(conn, d, existing)
        ]
    blocked = set(report.kept_for_rollups) | set(report.kept_for_compaction)
    for table, days in expired.items():
        for day in (d for d in days if d not in blocked):
            try:
                _drop(conn, table, day)
            except psycopg.errors.LockNotAvailable:
                report.busy.append(f"{table}_p{day:%Y%m%d}")
            else:
                report.dropped.setdefault(table, []).append(day)
    for name in _detached_leftovers(conn, policy, now):
        with conn.transaction():  # a run that stopped between its DETACH and its DROP
            conn.execute("SELECT heartbeat_drop_detached_partition(%s)", (name,))
        log.info("dropped %s, left detached by an earlier retention run", name)
    if report.kept_for_rollups:
        log.warning(
            "kept expired days %s: their rollups are not materialised yet",
            ", ".join(str(d) for d in report.kept_for_rollups),
        )
    if report.kept_for_compaction:
        log.warning(
            "kept expired days %s: their readings are not in the cold tier yet (compaction "
            "runs in `maintain` and Dagster's heartbeat_cold)",
            ", ".join(str(d) for d in report.kept_for_compaction),
        )
    return report


def _holds_readings(conn: psycopg.Connection, day: date, existing: dict[str, list[date]]) -> bool:
    """Whether the day's hot partitions hold a reading."""
    holds = [
        sql.SQL("EXISTS (SELECT 1 FROM {})").format(sql.Identifier(f"{t}_p{day:%Y%m%d}"))
        for t in sorted(ROLLED_UP) if day in existing[t]
    ]
    if not holds:
        return False
    return one_row(conn.execute(sql.SQL("SELECT {}").format(sql.SQL(" OR ").join(holds))))[0]


def unrolled_days(conn: psycopg.Connection, days: list[date]) -> list[date]:
    """Of `days`, those whose rollups are not all materialised (a window is still pending)."""
    if not days:
        return []
    rows = conn.execute(
        """SELECT DISTINCT (window_start AT TIME ZONE 'UTC')::date FROM rollup_pending
           WHERE window_start >= %s AND window_start < %s""",
        (day_start(min(days)), day_start(max(days)) + timedelta(days=1)),
    )
    pending = {row[0] for row in rows}
    return [d for d in days if d in pending]


def _readings_without_daily_rollup(
    conn: psycopg.Connection, day: date, existing: dict[str, list[date]]
) -> bool:
    """A day holding readings that no daily rollup row covers (e.g. rows written by hand,
    never marked pending): it must not go, or its readings would be lost to every total."""
    holds = [
        sql.SQL("EXISTS (SELECT 1 FROM {})").format(sql.Identifier(f"{t}_p{day:%Y%m%d}"))
        for t in sorted(ROLLED_UP) if day in existing[t]
    ]
    if not holds:
        return False
    query = sql.SQL(
        "SELECT ({}) AND NOT EXISTS (SELECT 1 FROM customer_daily_bpm_stats WHERE day = %s)"
    ).format(sql.SQL(" OR ").join(holds))
    return one_row(conn.execute(query, (day,)))[0]


def oldest_day_with_readings(conn: psycopg.Connection) -> date | None:
    """The oldest day whose raw readings are still kept (empty leading days skipped: a
    raised retention creates partitions for days whose readings were dropped long ago)."""
    existing = partition_days(conn)
    for day in existing["heartbeat_records"]:
        holds = sql.SQL(" OR ").join(
            sql.SQL("EXISTS (SELECT 1 FROM {})").format(sql.Identifier(f"{t}_p{day:%Y%m%d}"))
            for t in sorted(ROLLED_UP) if day in existing[t]
        )
        if one_row(conn.execute(sql.SQL("SELECT {}").format(holds)))[0]:
            return day
    return None


def _detached_leftovers(
    conn: psycopg.Connection, policy: RetentionPolicy, now: datetime
) -> list[str]:
    """Day tables of ours that are no partition any more and whose day has expired."""
    rows = conn.execute(
        """SELECT relname FROM pg_class
           WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'
             AND NOT relispartition AND relname ~ %s""",
        (f"^({'|'.join(DAY_PARTITIONED)})_p[0-9]{{8}}$",),
    ).fetchall()
    days: dict[str, date] = {}
    for (name,) in rows:
        match = _SUFFIX.search(name)
        if match:  # always: the query selected names with this suffix
            days[name] = datetime.strptime(match.group(1), "%Y%m%d").date()
    expired = set(policy.expired_days(set(days.values()), now))
    return sorted(name for name, day in days.items() if day in expired)


def _drop(conn: psycopg.Connection, table: str, day: date) -> None:
    """Detach, then drop, in two transactions: the parent's lock (which stalls the writer
    for about one batch) is held for the detach only, not while the day's files go. Both
    through the SECURITY DEFINER functions of sql/008, so the pipeline role can run it."""
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        conn.execute("SELECT heartbeat_detach_partition(%s, %s)", (table, day))
    with conn.transaction():
        conn.execute("SELECT heartbeat_drop_detached_partition(%s)", (f"{table}_p{day:%Y%m%d}",))
    log.info("dropped %s_p%s (older than the retention window)", table, f"{day:%Y%m%d}")
