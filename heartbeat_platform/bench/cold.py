"""`bench --history N --cold`: the cold tier on the bench's history (issue 21, point 4).

The history is loaded (`history.load_history`) into a database of its own so that it ends
at the midnight `HEARTBEAT_HOT_DAYS` days before now: every day of it is due. Then, all
through storage/cold.py (no compaction logic here): the hot bytes per reading of the due
days, their digests (`cold.hot_day_digest`, compaction's own per-customer note), the
compaction (`cold.compact_due`) with its rate per day and overall, the cold bytes per
reading, each day's digest again from its packs (`cold.cold_day_digest`), and the read
times of one customer-day and, if the history spans 28 days, one customer-month, through
`cold.readings` and through the SQL function `heartbeat_readings()`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from heartbeat_platform.bench.history import HistoryPlan, load_history
from heartbeat_platform.bench.services import endpoints, fresh_database
from heartbeat_platform.config import Settings
from heartbeat_platform.domain.retention import day_start
from heartbeat_platform.storage import cold
from heartbeat_platform.storage.database import connect, one_row

COLD_DATABASE = "heartbeat_bench_cold"
CUSTOMER = "CUST_00001"  # the first customer of the plan: it reports every tick
DAY_RUNS, MONTH_RUNS = 5, 3
MONTH = timedelta(days=28)

_BYTES = "SELECT coalesce(sum(pg_total_relation_size(%s::regclass)), 0)"
_COLD_BYTES = """
SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint
FROM pg_partition_tree('heartbeat_cold') WHERE isleaf
"""
_HOT_COUNT = """
SELECT (SELECT count(*) FROM heartbeat_records WHERE customer_id = %(c)s
        AND event_timestamp >= %(a)s AND event_timestamp < %(b)s)
     + (SELECT count(*) FROM heartbeat_anomalies WHERE customer_id = %(c)s
        AND event_timestamp >= %(a)s AND event_timestamp < %(b)s)
"""


def cold_stage(settings: Settings, history: int, span_hours: float | None,
               log: Callable[[str], None] = lambda message: None) -> dict:
    """The JSON of `bench --history N --cold` (module docstring)."""
    hot_days = settings.heartbeat_hot_days
    url = fresh_database(endpoints(settings).database_url, COLD_DATABASE)
    end = day_start(datetime.now(UTC).date() - timedelta(days=hot_days))
    plan = HistoryPlan.ending_at(
        end, history, settings.heartbeat_customer_count, settings.kafka_partitions,
        span_hours, max_span=timedelta(days=settings.heartbeat_cold_retention_days),
    )
    result: dict = {"history": plan.describe(), "hot_days": hot_days}
    log(f"cold: loading {history:,} readings ending {end:%Y-%m-%d %H:%M} UTC")
    result["history"].update(load_history(url, plan, settings, log))
    day_window = (end - timedelta(days=1), end)
    month_window = (end - MONTH, end) if plan.span >= MONTH else None
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        now = datetime.now(UTC)
        days = cold.due_days(conn, now, hot_days)
        hot_bytes = sum(_relation_bytes(conn, name) for day in days for name in _hot(day))
        hot_readings = sum(_count(conn, name) for day in days for name in _hot(day))
        digests = {day: cold.hot_day_digest(conn, day) for day in days}
        expected = {"day": _hot_count(conn, *day_window)}
        if month_window:
            expected["month"] = _hot_count(conn, *month_window)
        log(f"cold: compacting {len(days)} day(s), {hot_readings:,} readings")
        started = time.perf_counter()
        report = cold.compact_due(conn, now, hot_days, settings.heartbeat_cold_retention_days)
        compaction_s = time.perf_counter() - started
        conn.execute("VACUUM ANALYZE heartbeat_cold")
        cold_bytes = one_row(conn.execute(_COLD_BYTES))[0]
        cold_readings = one_row(conn.execute(
            "SELECT coalesce(sum(readings), 0)::bigint FROM heartbeat_cold"))[0]
        log("cold: checking every compacted day against its hot digest")
        differ = [str(day) for day in days if cold.cold_day_digest(conn, day) != digests[day]]
        moved = sum(c.readings for c in report.compacted)
        result["hot"] = {
            "days": [str(day) for day in days],
            "readings": hot_readings,
            "bytes": hot_bytes,
            "bytes_per_reading": round(hot_bytes / hot_readings, 2) if hot_readings else None,
        }
        result["compaction"] = {
            "readings_moved": moved,
            "wall_s": round(compaction_s, 3),
            "readings_per_s": round(moved / compaction_s, 1),
            "days": [{"day": str(c.day), "readings": c.readings, "packs": c.packs,
                      "s": round(c.seconds, 3),
                      "readings_per_s": round(c.readings / c.seconds, 1) if c.seconds else None}
                     for c in report.compacted],
            "days_busy": [str(d) for d in report.busy],
            "days_refused": {str(d): why for d, why in report.refused.items()},
        }
        result["cold"] = {
            "readings": cold_readings,
            "bytes": cold_bytes,
            "bytes_per_reading": round(cold_bytes / cold_readings, 2) if cold_readings else None,
        }
        if hot_readings and cold_readings:
            result["hot_to_cold_ratio"] = round(
                result["hot"]["bytes_per_reading"] / result["cold"]["bytes_per_reading"], 1)
        result["equality"] = {
            "check": "per compacted day and customer: count, sum and sum of squares of the "
                     "rates and a checksum of (time, rate, payload), hot before compaction "
                     "(cold.hot_day_digest) vs. the committed packs (cold.cold_day_digest); "
                     "plus each read below against the hot count of its window",
            "days_checked": len(days),
            "customers_checked": sum(len(d) for d in digests.values()),
            "days_differing": differ,
            "passed": not differ and not report.refused and not report.busy
                      and moved == hot_readings == cold_readings,
        }
        reads = {"customer": CUSTOMER,
                 "day": _reads(conn, *day_window, DAY_RUNS, expected["day"], log)}
        if month_window:
            reads["month"] = _reads(conn, *month_window, MONTH_RUNS, expected["month"], log)
        else:
            reads["month"] = {"covered": False, "why": (
                f"the history spans {plan.span} (< 28 days): give a longer "
                "--history-span-hours (and enough readings) for a customer-month")}
        result["reads"] = reads
        result["equality"]["passed"] = result["equality"]["passed"] and all(
            r.get("matches_hot_count", True) for r in reads.values() if isinstance(r, dict))
    return result


def _hot(day: date) -> tuple[str, str]:
    return f"heartbeat_records_p{day:%Y%m%d}", f"heartbeat_anomalies_p{day:%Y%m%d}"


def _relation_bytes(conn, name: str) -> int:
    return int(one_row(conn.execute(_BYTES, (name,)))[0])


def _count(conn, name: str) -> int:
    return int(one_row(conn.execute(f'SELECT count(*) FROM "{name}"'))[0])


def _hot_count(conn, start: datetime, end: datetime) -> int:
    return int(one_row(conn.execute(_HOT_COUNT, {"c": CUSTOMER, "a": start, "b": end}))[0])


def _reads(conn, start: datetime, end: datetime, runs: int, expected: int,
           log: Callable[[str], None]) -> dict:
    """Median ms of `runs` reads of [start, end) through `cold.readings` and through
    heartbeat_readings(), with the readings each returned."""
    log(f"cold: reading {CUSTOMER} {start:%Y-%m-%d} .. {end:%Y-%m-%d}, {runs} runs each")
    python_ms, sql_ms = [], []
    python_n = sql_n = 0
    for _ in range(runs):
        began = time.perf_counter()
        python_n = len(cold.readings(conn, CUSTOMER, start, end))
        python_ms.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        sql_n = len(conn.execute("SELECT * FROM heartbeat_readings(%s, %s, %s)",
                                 (CUSTOMER, start, end)).fetchall())
        sql_ms.append((time.perf_counter() - began) * 1000)
    return {
        "from": start.isoformat(), "to": end.isoformat(), "runs": runs,
        "readings_hot_before": expected,
        "readings_python": python_n, "readings_sql": sql_n,
        "python_median_ms": round(statistics.median(python_ms), 1),
        "sql_median_ms": round(statistics.median(sql_ms), 1),
        "matches_hot_count": python_n == sql_n == expected,
    }
