"""The dashboard in the states where its raw tail used to grow (issue 23): idle, rollups an
hour behind, rollups current, each timed on a database of its own that holds the history
(README "The dashboard when the rollups lag")."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from heartbeat_platform.bench.dashboard import QUERY_RANGES, dashboard_timings
from heartbeat_platform.bench.history import HistoryPlan, load_history
from heartbeat_platform.bench.rollups import refresh_settled, roll_up_history
from heartbeat_platform.bench.services import endpoints
from heartbeat_platform.bench.targets import TARGETS
from heartbeat_platform.config import Settings
from heartbeat_platform.domain.generator import DESIGN_RATE
from heartbeat_platform.storage.database import connect, ensure_database, one_row
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.storage.rollups import Rollup, mark_pending

STATES_DATABASE = "heartbeat_bench_dashboard"
IDLE = timedelta(hours=6)  # "no reading for 6 hours"
BEHIND = timedelta(hours=1)  # "rollups one hour behind while readings arrive"
TAIL = timedelta(minutes=2)  # readings at the design rate before each measurement
# The hour behind holds one reading per customer every BEHIND_STEP (the panels never read
# it raw: only its pending marks, and one customer's readings in the drill-down); its last
# TAIL arrives at the design rate, as the raw tail the panels do read.
BEHIND_STEP = timedelta(seconds=10)
STATES = ("idle_6h", "rollups_behind_1h", "rollups_current")


def dashboard_states(settings: Settings, history: int, span_hours: float | None,
                     log: Callable[[str], None] = lambda message: None) -> dict:
    """Every panel and variable timed (Grafana's role, 6 h and 7 d) on a database of its own
    holding `history` readings that end IDLE before now, in three states, in this order:
    - idle_6h: no reading since, rollups current;
    - rollups_behind_1h: an hour of readings since (the last TAIL at the design rate),
      none rolled up (a stopped Dagster daemon);
    - rollups_current: the rollups brought up to date at now (a minute settles 5 s after it
      closes), then another TAIL of readings at the design rate up to now.
    Each state reports its raw tail and the minutes not rolled up next to the timings.
    """
    url = ensure_database(endpoints(settings).database_url, STATES_DATABASE, recreate=True)
    migrate(url)
    now = datetime.now(UTC)
    plan = HistoryPlan.ending_at(
        now - IDLE, history, settings.heartbeat_customer_count, settings.kafka_partitions,
        span_hours, max_span=timedelta(days=settings.heartbeat_raw_retention_days) - IDLE,
    )
    result: dict = {"history": plan.describe()}
    log(f"dashboard states: loading {history:,} readings ending {IDLE} ago")
    result["history"].update(load_history(url, plan, settings, log))
    result["rollups_initial_s"] = roll_up_history(url, plan)["seconds"]
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    states: dict = {}
    states["idle_6h"] = _state(url, "idle_6h", log)

    now = datetime.now(UTC)
    customers = settings.heartbeat_customer_count
    sparse = HistoryPlan.ending_at(
        now - TAIL, math.floor(BEHIND / BEHIND_STEP) * customers, customers,
        settings.kafka_partitions, BEHIND.total_seconds() / 3600,
    )
    _arrive(url, sparse, settings, log)
    end = _arrive_until(url, max(sparse.end, datetime.now(UTC) - TAIL),
                        datetime.now(UTC) + _load_estimate(customers), settings, log)
    states["rollups_behind_1h"] = _state(url, "rollups_behind_1h", log)

    with connect(url) as conn:
        refresh_settled(conn)
    _arrive_until(url, max(end, datetime.now(UTC) - TAIL),
                  datetime.now(UTC) + _load_estimate(customers), settings, log)
    with connect(url) as conn:
        refresh_settled(conn)
    states["rollups_current"] = _state(url, "rollups_current", log)
    result["states"] = states
    result["slowest"] = {
        name: {"query": s["slowest"], "range": s["slowest_range"], "median_ms": s["slowest_ms"]}
        for name, s in states.items()
    }
    result["target_ms"] = TARGETS["query_ms_max"]
    result["met"] = all(s["slowest_ms"] < TARGETS["query_ms_max"] for s in states.values())
    return result


def _load_estimate(customers: int) -> timedelta:
    """About how long loading TAIL at the design rate takes (SQL loads ~40,000 readings a
    second here): readings are stamped up to then, so the tail is full when measured."""
    return timedelta(seconds=TAIL.total_seconds() * DESIGN_RATE / 40_000)


def _arrive(url: str, plan: HistoryPlan, settings: Settings,
            log: Callable[[str], None]) -> None:
    """`plan`'s readings stored and their minutes marked pending, as a consumer leaves them."""
    load_history(url, plan, settings, log)
    with connect(url) as conn:
        mark_pending(conn, Rollup.FLEET_MINUTE, plan.windows(Rollup.FLEET_MINUTE))
        conn.commit()


def _arrive_until(url: str, since: datetime, until: datetime, settings: Settings,
                  log: Callable[[str], None]) -> datetime:
    """Readings at the design rate in [since, until) (whole ticks, so never a reading of the
    plan before); returns where they end."""
    customers = settings.heartbeat_customer_count
    step = timedelta(seconds=customers / DESIGN_RATE)
    ticks = math.floor((until - since) / step)
    if ticks < 1:
        return since
    plan = HistoryPlan.ending_at(until, ticks * customers, customers, settings.kafka_partitions)
    _arrive(url, plan, settings, log)
    return plan.end


_STATE_SQL = """
SELECT (SELECT max(minute) FROM fleet_minute_stats),
       heartbeat_raw_tail_start(now()),
       (SELECT count(heart_rate) FROM heartbeat_records
        WHERE event_timestamp >= heartbeat_raw_tail_start(now())),
       (SELECT count(*) FROM heartbeat_minutes_not_rolled_up('-infinity', now())),
       (SELECT max(event_timestamp) FROM heartbeat_records
        WHERE event_timestamp > now() - interval '8 days' AND heart_rate > 0)
"""


def _state(url: str, name: str, log: Callable[[str], None]) -> dict:
    """One state: where the rollups and the raw tail stand, and the dashboard's timings."""
    with connect(url) as conn:
        rolled, tail_start, tail, not_rolled, newest = one_row(conn.execute(_STATE_SQL))
    timings = dashboard_timings(url, lambda message: log(f"{name}: {message}"))
    slowest = max(QUERY_RANGES, key=lambda label: timings[label]["slowest_ms"])
    return {
        "newest_rolled_up_minute": rolled.isoformat() if rolled else None,
        "raw_tail_start": tail_start.isoformat(),
        "raw_tail_readings": tail,
        "minutes_not_rolled_up": not_rolled,
        "newest_reading": newest.isoformat() if newest else None,
        "queries": timings,
        "slowest": timings[slowest]["slowest"],
        "slowest_range": slowest,
        "slowest_ms": timings[slowest]["slowest_ms"],
    }
