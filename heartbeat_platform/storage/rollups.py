"""Rollups brought up to date window by window, each from its own window only.

Three rollups (sql/006), each recomputed from the level below: a fleet-minute refresh
reads its minutes' raw rows once into `customer_minute_stats` (per customer and minute)
and builds `fleet_minute_stats` and `customers` from it; `customer_hourly_bpm_stats` is
built from the customer minutes of its hours, `customer_daily_bpm_stats` from the hours
of its days. The consumer marks the minute of every reading it stores in
`rollup_pending`, in the batch's own transaction; recomputing a minute marks its hour,
recomputing an hour marks its day. A refresh takes the marks of its range and recomputes
exactly those windows, in one transaction, so the cost of staying current follows the
new data, never the history. A refresh with `pending_only=False` recomputes every window
of its range (a backfill). Recomputing a window replaces its rows, so a refresh equals a
full recompute of the same windows.

Refreshes of one rollup are serialised by an advisory lock: a backfill and a scheduled
refresh of the same windows never interleave.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import psycopg

from heartbeat_platform.domain.retention import day_start
from heartbeat_platform.storage.database import one_row
from heartbeat_platform.storage.partitions import oldest_day_with_readings


class Rollup(StrEnum):
    FLEET_MINUTE = "fleet_minute"
    CUSTOMER_HOURLY = "customer_hourly"
    CUSTOMER_DAILY = "customer_daily"

    @property
    def width(self) -> timedelta:
        return _WIDTH[self]

    @property
    def table(self) -> str:
        return _TABLE[self]

    @property
    def key(self) -> str:
        """The table's time column."""
        return _KEY[self]

    def settle(self) -> timedelta:
        """How long after a window ends the scheduled refresh waits before computing it.

        Readings arrive about a second after their event time; a window computed a few
        seconds after it closed is nearly always final (a later reading marks it again).
        An hour waits a minute more, for its last minutes to be rolled up; a day is marked
        only when its hours are, so it is ready at once.
        """
        return _SETTLE[self]


_WIDTH = {
    Rollup.FLEET_MINUTE: timedelta(minutes=1),
    Rollup.CUSTOMER_HOURLY: timedelta(hours=1),
    Rollup.CUSTOMER_DAILY: timedelta(days=1),
}
_TABLE = {
    Rollup.FLEET_MINUTE: "fleet_minute_stats",
    Rollup.CUSTOMER_HOURLY: "customer_hourly_bpm_stats",
    Rollup.CUSTOMER_DAILY: "customer_daily_bpm_stats",
}
_KEY = {
    Rollup.FLEET_MINUTE: "minute",
    Rollup.CUSTOMER_HOURLY: "hour",
    Rollup.CUSTOMER_DAILY: "day",
}
_SETTLE = {
    Rollup.FLEET_MINUTE: timedelta(seconds=5),
    Rollup.CUSTOMER_HOURLY: timedelta(minutes=1),
    Rollup.CUSTOMER_DAILY: timedelta(0),
}


@dataclass(frozen=True)
class RefreshResult:
    rollup: Rollup
    windows: int  # windows recomputed
    rows: int  # rollup rows written
    readings: int  # raw readings (records + anomalies) they summarise
    seconds: float
    first_window: datetime | None = None
    last_window: datetime | None = None


def window_start(rollup: Rollup, moment: datetime) -> datetime:
    """The start of the window of `rollup` that holds `moment` (UTC)."""
    moment = moment.astimezone(UTC)
    if rollup is Rollup.FLEET_MINUTE:
        return moment.replace(second=0, microsecond=0)
    if rollup is Rollup.CUSTOMER_HOURLY:
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def refresh(
    conn: psycopg.Connection,
    rollup: Rollup,
    start: datetime,
    end: datetime,
    *,
    pending_only: bool = True,
    now: datetime | None = None,
) -> RefreshResult:
    """Recompute the windows of `rollup` in [start, end): those marked pending, or all.

    With `now`, pending windows that have not settled yet are left for a later refresh.
    Commits its own transaction; the marks it took are returned to the table if it fails.
    """
    if pending_only and now is not None:
        end = min(end, settled_until(rollup, now))
    if not pending_only and rollup is not Rollup.CUSTOMER_DAILY:
        start = max(start, _oldest_raw(conn))  # older windows have no rows left to read
    started = time.perf_counter()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"rollup:{rollup}",))
        claimed = [row[0] for row in conn.execute(_CLAIM, (rollup.value, start, end))]
        windows = sorted(set(claimed)) if pending_only else _all_windows(rollup, start, end)
        rows = readings = 0
        if windows:
            rows, readings = _RECOMPUTE[rollup](conn, windows)
    return RefreshResult(
        rollup, len(windows), rows, readings, time.perf_counter() - started,
        windows[0] if windows else None, windows[-1] if windows else None,
    )


# The marks of a range, taken for recomputation. They are locked in window order, the
# order in which a consumer's batch upserts its own: the two never deadlock.
_CLAIM = """
WITH claimed AS (
    SELECT rollup, window_start, kafka_partition FROM rollup_pending
    WHERE rollup = %s AND window_start >= %s AND window_start < %s
    ORDER BY window_start, kafka_partition
    FOR UPDATE
)
DELETE FROM rollup_pending AS p USING claimed AS c
WHERE p.rollup = c.rollup AND p.window_start = c.window_start
  AND p.kafka_partition = c.kafka_partition
RETURNING p.window_start
"""


def settled_until(rollup: Rollup, now: datetime) -> datetime:
    """Windows starting before this have closed long enough to be computed (see `settle`)."""
    return now - rollup.width - rollup.settle()


def pending_windows(conn: psycopg.Connection, rollup: Rollup, now: datetime) -> list[datetime]:
    """Settled windows of `rollup` marked pending."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT window_start FROM rollup_pending "
            "WHERE rollup = %s AND window_start < %s ORDER BY 1",
            (rollup.value, settled_until(rollup, now)),
        )
    ]


def first_window(conn: psycopg.Connection) -> datetime | None:
    """The first minute that holds readings, rolled up or still pending (None: none yet):
    no rollup has anything to compute before it."""
    (first,) = conn.execute(
        "SELECT least((SELECT min(minute) FROM fleet_minute_stats),"
        " (SELECT min(window_start) FROM rollup_pending))"
    ).fetchone() or (None,)
    return first


def pending_runs(
    conn: psycopg.Connection, now: datetime
) -> list[tuple[Rollup, datetime, datetime]]:
    """(rollup, partition start, latest mark) per Dagster partition with settled marks.

    Fleet minutes and customer hours are partitioned by the hour, customer days by the day.
    """
    runs = []
    for rollup in Rollup:
        unit = "day" if rollup is Rollup.CUSTOMER_DAILY else "hour"
        runs += [
            (rollup, start, marked_at)
            for start, marked_at in conn.execute(
                "SELECT date_trunc(%s, window_start, 'UTC'), max(marked_at) FROM rollup_pending "
                "WHERE rollup = %s AND window_start < %s GROUP BY 1 ORDER BY 1",
                (unit, rollup.value, settled_until(rollup, now)),
            )
        ]
    return runs


def refresh_pending(conn: psycopg.Connection, now: datetime) -> list[RefreshResult]:
    """Bring every rollup up to date with what is settled at `now`: minutes, hours, days.

    What `heartbeat-platform maintain` (`storage.maintenance`) and the benchmark run;
    Dagster runs the same `refresh` one partition at a time.
    """
    results = []
    for rollup in Rollup:
        windows = pending_windows(conn, rollup, now)
        if windows:
            results.append(refresh(conn, rollup, windows[0], windows[-1] + rollup.width))
    return results


def mark_pending(
    conn: psycopg.Connection, rollup: Rollup, windows: list[datetime], kafka_partition: int = -1
) -> None:
    """Mark windows out of date (the consumer does this for each batch; so can a backfill)."""
    conn.execute(
        "INSERT INTO rollup_pending (rollup, window_start, kafka_partition) "
        "SELECT %s, w, %s FROM unnest(%s::timestamptz[]) AS w "
        "ON CONFLICT (rollup, window_start, kafka_partition) "
        "DO UPDATE SET marked_at = clock_timestamp()",
        (rollup.value, kafka_partition, windows),
    )


def delete_expired(conn: psycopg.Connection, now: datetime, retention_days: int) -> dict[str, int]:
    """Delete rollup rows older than `retention_days` (one small range per call)."""
    cutoff = window_start(Rollup.CUSTOMER_DAILY, now - timedelta(days=retention_days))
    deleted = {}
    with conn.transaction():
        for rollup in Rollup:
            bound = cutoff.date() if rollup is Rollup.CUSTOMER_DAILY else cutoff
            deleted[rollup.table] = conn.execute(
                f"DELETE FROM {rollup.table} WHERE {rollup.key} < %s", (bound,)
            ).rowcount
    return deleted


# -- recomputation, one statement per table -------------------------------------------------
def _oldest_raw(conn: psycopg.Connection) -> datetime:
    """Start of the oldest day whose raw rows (and customer minutes) are still kept.

    A backfill never recomputes a window before it: its raw rows were dropped by
    retention, and recomputing would replace the kept rollups with nothing.
    """
    day = oldest_day_with_readings(conn)
    return day_start(day) if day else datetime.max.replace(tzinfo=UTC)


def _all_windows(rollup: Rollup, start: datetime, end: datetime) -> list[datetime]:
    moment, windows = window_start(rollup, start), []
    while moment < end:
        windows.append(moment)
        moment += rollup.width
    return windows


def _bounds(windows: list[datetime], width: timedelta) -> dict:
    return {"windows": windows, "lo": windows[0], "hi": windows[-1] + width}


# A minute read from the raw rows once, per customer; the anomaly side counts each reading
# once (same customer and timestamp), so a reading replayed at another Kafka offset does
# not inflate any rollup. A window of a day compacted into the cold tier (a late reading
# marked it) reads the cold packs of its hours too (storage/cold.py): a reading is in one
# tier only, so the union counts each once. Windows of days never compacted (every
# scheduled refresh) read no cold partition at all: `cold` is then empty by its text.
_COLD_ROWS = """
    SELECT * FROM heartbeat_cold_rows(%(cold_hours)s)
    WHERE event_timestamp >= %(lo)s AND event_timestamp < %(hi)s
"""
_NO_COLD_ROWS = """
    SELECT NULL::text AS customer_id, NULL::timestamptz AS event_timestamp,
           NULL::integer AS heart_rate, NULL::text AS raw_payload WHERE false
"""
_CUSTOMER_MINUTES = """
WITH cold AS MATERIALIZED ({cold}), readings AS (
    SELECT customer_id, date_trunc('minute', event_timestamp) AS minute,
           count(*) AS n, sum(heart_rate) AS s, sum(heart_rate::bigint * heart_rate) AS ss,
           min(heart_rate) AS min_bpm, max(heart_rate) AS max_bpm,
           min(event_timestamp) AS first_at, max(event_timestamp) AS last_at
    FROM (SELECT customer_id, event_timestamp, heart_rate FROM heartbeat_records
          WHERE event_timestamp >= %(lo)s AND event_timestamp < %(hi)s
          UNION ALL
          SELECT customer_id, event_timestamp, heart_rate FROM cold
          WHERE heartbeat_class(heart_rate) = 'NORMAL') AS r
    WHERE date_trunc('minute', event_timestamp) = ANY(%(windows)s)
    GROUP BY 1, 2
), anomalies AS (
    SELECT customer_id, date_trunc('minute', event_timestamp) AS minute, count(*) AS anomalies,
           count(*) FILTER (WHERE anomaly_type = 'BRADYCARDIA') AS brady,
           count(*) FILTER (WHERE anomaly_type = 'TACHYCARDIA') AS tachy,
           count(*) FILTER (WHERE anomaly_type = 'INVALID') AS invalid,
           max(event_timestamp) AS anomaly_at
    FROM (SELECT DISTINCT ON (customer_id, event_timestamp) customer_id, event_timestamp,
                 anomaly_type
          FROM (SELECT customer_id, event_timestamp, anomaly_type FROM heartbeat_anomalies
                WHERE event_timestamp >= %(lo)s AND event_timestamp < %(hi)s
                UNION ALL
                SELECT customer_id, event_timestamp, heartbeat_class(heart_rate) FROM cold
                WHERE heartbeat_class(heart_rate) <> 'NORMAL') AS r
          WHERE date_trunc('minute', event_timestamp) = ANY(%(windows)s)) AS a
    GROUP BY 1, 2
)
INSERT INTO customer_minute_stats (customer_id, minute, reading_count, bpm_sum,
    bpm_sum_squares, min_bpm, max_bpm, anomaly_count, bradycardia_count, tachycardia_count,
    invalid_count, first_reading_at, last_reading_at, last_anomaly_at)
SELECT customer_id, minute, coalesce(n, 0), coalesce(s, 0), coalesce(ss, 0), min_bpm, max_bpm,
       coalesce(anomalies, 0), coalesce(brady, 0), coalesce(tachy, 0), coalesce(invalid, 0),
       first_at, last_at, anomaly_at
FROM readings FULL OUTER JOIN anomalies USING (customer_id, minute)
"""

# A coarser window from the level below: counts and sums add up, and the average and the
# sample deviation follow exactly from them.
_MERGED = """
       round(s::numeric / nullif(n, 0), 1),
       CASE WHEN n > 1
            THEN round(sqrt(greatest((ss - s::numeric * s / n) / (n - 1), 0)), 1) END
"""
_SUMS = """
           sum(reading_count)::bigint AS n, sum(bpm_sum)::bigint AS s,
           sum(bpm_sum_squares)::bigint AS ss, min(min_bpm) AS min_bpm,
           max(max_bpm) AS max_bpm, sum(anomaly_count)::bigint AS anomalies,
           sum(bradycardia_count)::bigint AS brady, sum(tachycardia_count)::bigint AS tachy,
           sum(invalid_count)::bigint AS invalid"""

_FLEET_MINUTES = f"""
INSERT INTO fleet_minute_stats (minute, reading_count, customer_count, avg_bpm, stddev_bpm,
    min_bpm, max_bpm, anomaly_count, bradycardia_count, tachycardia_count, invalid_count,
    bpm_sum, bpm_sum_squares)
SELECT minute, n, customers, {_MERGED}, min_bpm, max_bpm, anomalies, brady, tachy, invalid,
       s, ss
FROM (
    SELECT minute, count(*) FILTER (WHERE reading_count > 0) AS customers, {_SUMS}
    FROM customer_minute_stats
    WHERE minute = ANY(%(windows)s)
    GROUP BY minute
) AS minutes
"""

# The writer's live minute counts (sql/011) serve only minutes after the newest rolled-up
# one; an hour behind it they go.
_PRUNE_LIVE = """
DELETE FROM fleet_minute_live
WHERE minute < (SELECT max(minute) FROM fleet_minute_stats) - interval '1 hour'
"""

# Customers seen in the recomputed minutes: the dashboard's customer list and the count
# of active customers read this small table instead of the readings.
_CUSTOMERS = """
INSERT INTO customers (customer_id, first_reading_at, last_reading_at, last_anomaly_at)
SELECT customer_id, min(first_reading_at), max(last_reading_at), max(last_anomaly_at)
FROM customer_minute_stats
WHERE minute = ANY(%(windows)s)
GROUP BY customer_id
ORDER BY customer_id  -- rows locked in the order the writer locks them (no deadlock)
ON CONFLICT (customer_id) DO UPDATE SET
    first_reading_at = least(customers.first_reading_at, excluded.first_reading_at),
    last_reading_at = greatest(customers.last_reading_at, excluded.last_reading_at),
    last_anomaly_at = greatest(customers.last_anomaly_at, excluded.last_anomaly_at)
"""

_CUSTOMER_HOURS = f"""
INSERT INTO customer_hourly_bpm_stats (customer_id, hour, reading_count, avg_bpm, stddev_bpm,
    min_bpm, max_bpm, anomaly_count, bradycardia_count, tachycardia_count, invalid_count,
    bpm_sum, bpm_sum_squares, first_reading_at, last_reading_at, last_anomaly_at)
SELECT customer_id, hour, n, {_MERGED}, min_bpm, max_bpm, anomalies, brady, tachy, invalid,
       s, ss, first_at, last_at, anomaly_at
FROM (
    SELECT customer_id, date_trunc('hour', minute, 'UTC') AS hour, {_SUMS},
           min(first_reading_at) AS first_at, max(last_reading_at) AS last_at,
           max(last_anomaly_at) AS anomaly_at
    FROM customer_minute_stats
    WHERE minute >= %(lo)s AND minute < %(hi)s
      AND date_trunc('hour', minute, 'UTC') = ANY(%(windows)s)
    GROUP BY 1, 2
) AS hours
"""

_CUSTOMER_DAYS = f"""
INSERT INTO customer_daily_bpm_stats (customer_id, day, reading_count, avg_bpm, stddev_bpm,
    min_bpm, max_bpm, anomaly_count, bradycardia_count, tachycardia_count, invalid_count,
    bpm_sum, bpm_sum_squares, first_reading_at, last_reading_at, last_anomaly_at)
SELECT customer_id, day, n, {_MERGED}, min_bpm, max_bpm, anomalies, brady, tachy, invalid,
       s, ss, first_at, last_at, anomaly_at
FROM (
    SELECT customer_id, (hour AT TIME ZONE 'UTC')::date AS day, {_SUMS},
           min(first_reading_at) AS first_at, max(last_reading_at) AS last_at,
           max(last_anomaly_at) AS anomaly_at
    FROM customer_hourly_bpm_stats
    WHERE hour >= %(lo)s AND hour < %(hi)s
      AND (hour AT TIME ZONE 'UTC')::date = ANY(%(days)s)
    GROUP BY 1, 2
) AS days
"""


def _summarised(conn: psycopg.Connection, table: str, key: str, windows: list) -> int:
    """Readings (records + anomalies) the recomputed rows of `table` summarise."""
    return one_row(
        conn.execute(
            f"SELECT coalesce(sum(reading_count + anomaly_count), 0)::bigint FROM {table} "
            f"WHERE {key} = ANY(%s)",
            (windows,),
        )
    )[0]


def _recompute_fleet_minutes(conn: psycopg.Connection, windows: list[datetime]) -> tuple[int, int]:
    """Customer minutes from the raw rows, then the fleet minutes and `customers` from them;
    their hours are marked out of date."""
    bounds = _bounds(windows, Rollup.FLEET_MINUTE.width)
    conn.execute(
        "DELETE FROM customer_minute_stats WHERE minute >= %(lo)s AND minute < %(hi)s "
        "AND minute = ANY(%(windows)s)", bounds,
    )
    compacted = {row[0] for row in conn.execute(
        "SELECT day FROM heartbeat_cold_days WHERE day >= %s AND day <= %s",
        (bounds["lo"].astimezone(UTC).date(), bounds["hi"].astimezone(UTC).date()))}
    cold_hours = sorted({h for h in (window_start(Rollup.CUSTOMER_HOURLY, w) for w in windows)
                         if h.date() in compacted})
    statement = _CUSTOMER_MINUTES.replace("{cold}", _COLD_ROWS if cold_hours else _NO_COLD_ROWS)
    conn.execute(statement, {**bounds, "cold_hours": cold_hours})
    conn.execute("DELETE FROM fleet_minute_stats WHERE minute = ANY(%(windows)s)", bounds)
    rows = conn.execute(_FLEET_MINUTES, bounds).rowcount
    conn.execute(_PRUNE_LIVE)
    conn.execute(_CUSTOMERS, bounds)
    mark_pending(
        conn, Rollup.CUSTOMER_HOURLY,
        sorted({window_start(Rollup.CUSTOMER_HOURLY, w) for w in windows}),
    )
    return rows, _summarised(conn, "fleet_minute_stats", "minute", windows)


def _recompute_customer_hours(
    conn: psycopg.Connection, windows: list[datetime]
) -> tuple[int, int]:
    """Customer hours from their customer minutes; their days are marked out of date."""
    bounds = _bounds(windows, Rollup.CUSTOMER_HOURLY.width)
    conn.execute("DELETE FROM customer_hourly_bpm_stats WHERE hour = ANY(%(windows)s)", bounds)
    rows = conn.execute(_CUSTOMER_HOURS, bounds).rowcount
    days = sorted({window_start(Rollup.CUSTOMER_DAILY, w) for w in windows})
    mark_pending(conn, Rollup.CUSTOMER_DAILY, days)
    return rows, _summarised(conn, "customer_hourly_bpm_stats", "hour", windows)


def _recompute_customer_days(conn: psycopg.Connection, windows: list[datetime]) -> tuple[int, int]:
    days = [w.astimezone(UTC).date() for w in windows]
    params = {"days": days, "lo": windows[0], "hi": windows[-1] + Rollup.CUSTOMER_DAILY.width}
    conn.execute("DELETE FROM customer_daily_bpm_stats WHERE day = ANY(%(days)s)", params)
    rows = conn.execute(_CUSTOMER_DAYS, params).rowcount
    return rows, _summarised(conn, "customer_daily_bpm_stats", "day", days)


_RECOMPUTE = {
    Rollup.FLEET_MINUTE: _recompute_fleet_minutes,
    Rollup.CUSTOMER_HOURLY: _recompute_customer_hours,
    Rollup.CUSTOMER_DAILY: _recompute_customer_days,
}
