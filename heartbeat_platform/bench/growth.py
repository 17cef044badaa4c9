"""Growth: the same work on a database that holds history. Ingest must not slow down, and
the dashboard and the rollups must not cost more, as history grows (README "With history:
does it keep its speed?")."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from heartbeat_platform.bench.dashboard import QUERY_RUNS, dashboard_timings
from heartbeat_platform.bench.history import HistoryPlan, load_history
from heartbeat_platform.bench.ingest import produce
from heartbeat_platform.bench.processes import consume_process
from heartbeat_platform.bench.rollups import refresh_all, roll_up_history
from heartbeat_platform.bench.services import endpoints, new_topic, on_topic
from heartbeat_platform.bench.storage import measure_storage
from heartbeat_platform.bench.targets import targets_met
from heartbeat_platform.config import Settings
from heartbeat_platform.storage.database import connect


def measure_growth(
    settings: Settings, plan: HistoryPlan, events: int, empty_rate: float,
    load_before_empty: float, log: Callable[[str], None],
) -> dict:
    """`plan`'s history loaded and rolled up, then `events` consumed again (against
    `empty_rate`, the empty tables' rows a second), the rollups caught up, the dashboard
    timed and the bytes per reading measured; next to the targets."""
    url = endpoints(settings).database_url
    result: dict = {"history_loaded_with": "SQL", "history": plan.describe()}
    # The machine may be shared: the 1-minute load average as each measurement started.
    load = result["load_average_1m"] = {"consume_empty": round(load_before_empty, 2)}

    log(f"growth: loading {plan.readings:,} readings of history with SQL "
        f"({plan.start:%H:%M:%S}..{plan.end:%H:%M:%S} UTC, "
        f"one per customer every {plan.step.total_seconds():g} s)")
    result["history"].update(load_history(url, plan, settings, log))

    log("growth: rollups of the history (it was already running: they would exist)")
    initial = roll_up_history(url, plan)
    result["rollups_initial_s"] = initial["seconds"]
    result["rollups_initial"] = initial["rollups"]

    log("growth: VACUUM ANALYZE")
    started = time.perf_counter()
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    result["vacuum_analyze_s"] = round(time.perf_counter() - started, 1)

    topic = new_topic(settings)
    log(f"growth: producer: {events:,} events to {topic}")
    produced = produce(on_topic(settings, topic), events)
    log("growth: consume_to_postgres: consumer process, database with history")
    load["consume_with_history"] = round(os.getloadavg()[0], 2)
    consumed = consume_process(on_topic(settings, topic), stop_when_idle=3)
    result["consume_to_postgres"] = {
        "rows_per_s_empty": empty_rate,
        "rows_per_s_with_history": consumed["messages_per_s"],
        "ratio": round(consumed["messages_per_s"] / empty_rate, 3),
        "messages": consumed["messages"],
        "delivered": produced.delivered,
        "busy_seconds": consumed["busy_seconds"],
        "consumer_peak_rss_mb": consumed["peak_rss_mb"],
    }

    log("growth: bringing the rollups up to date after the consume")
    load["rollups_catch_up"] = round(os.getloadavg()[0], 2)
    with connect(url) as conn:
        catch_up = refresh_all(conn)
    result["rollups_catch_up_s"] = catch_up["seconds"]
    result["rollups_catch_up"] = catch_up["rollups"]

    log(f"growth: dashboard queries, median of {QUERY_RUNS} runs per range")
    load["queries"] = round(os.getloadavg()[0], 2)
    result["queries"] = dashboard_timings(url, log)

    log("growth: bytes per stored reading")
    result["storage"] = measure_storage(url)
    result["targets"] = targets_met(result)
    return result
