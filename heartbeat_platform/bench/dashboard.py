"""Every Grafana panel and template variable timed as Grafana would run it: its SQL with
the macros expanded for the last 6 hours and the last 7 days, as Grafana's role with that
role's own limits, all rows fetched, the median of QUERY_RUNS runs."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from heartbeat_platform import grafana_queries
from heartbeat_platform.domain.generator import customer_id
from heartbeat_platform.storage.database import connect, one_row

QUERY_RUNS = 5  # each dashboard query runs this often; the median is reported
QUERY_RANGES = {"6h": timedelta(hours=6), "7d": timedelta(days=7)}
QUERY_CUSTOMER = customer_id(1)  # the $customer variable: a real customer of the history
GRAFANA_ROLE = "heartbeat_grafana_reader"  # the role Grafana connects as (sql/003)

# The settings sql/003 gives Grafana's role (read-only, a statement_timeout), here and for
# every database: a login session gets them, a SET ROLE does not.
_ROLE_SETTINGS = """
SELECT option_name, option_value
FROM pg_db_role_setting, pg_options_to_table(setconfig)
WHERE setrole = %s::regrole
  AND setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
ORDER BY setdatabase
"""


def dashboard_timings(url: str, log: Callable[[str], None]) -> dict:
    """Per range: each query's median ms and rows, those cut off by the timeout, the
    slowest."""
    dashboard_path = grafana_queries.dashboard_file()
    dashboard = json.loads(Path(dashboard_path).read_text())
    queries = grafana_queries.panel_queries(dashboard)
    timings: dict = {
        "dashboard": Path(dashboard_path).name,
        "runs": QUERY_RUNS,
        "variables": {"customer": QUERY_CUSTOMER},
        "as_role": GRAFANA_ROLE,
    }
    with connect(url, autocommit=True) as conn:
        # Grafana's role and its limits: read-only, and a slow panel is cut off.
        timeout_ms = _as_grafana(conn)
        for label, span in QUERY_RANGES.items():
            now = datetime.now(UTC)
            interval = grafana_queries.grafana_interval(span)
            ctx = grafana_queries.QueryContext(
                time_from=now - span, time_to=now, interval=interval,
                variables={"customer": QUERY_CUSTOMER},
            )
            measured = {
                name: _time_query(conn, grafana_queries.expand(sql, ctx), timeout_ms)
                for name, sql in queries
            }
            slowest = max(measured, key=lambda n: measured[n]["median_ms"])
            timings[label] = {
                "interval_s": interval.total_seconds(),
                "median_ms": {name: m["median_ms"] for name, m in measured.items()},
                "rows": {name: m["rows"] for name, m in measured.items()},
                "timed_out": sorted(n for n, m in measured.items() if m.get("timed_out")),
                "slowest": slowest,
                "slowest_ms": measured[slowest]["median_ms"],
            }
            log(f"growth: queries over {label}: slowest {slowest!r} "
                f"{measured[slowest]['median_ms']} ms")
    return timings


def _as_grafana(conn: psycopg.Connection) -> int:
    """This session as Grafana's role with the role's settings; its statement_timeout, ms."""
    settings = conn.execute(_ROLE_SETTINGS, (GRAFANA_ROLE,)).fetchall()
    conn.execute(f"SET ROLE {GRAFANA_ROLE}")
    for name, value in settings:  # the database's own settings last: they win, as at login
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    return int(one_row(conn.execute(
        "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'"
    ))[0])


def _time_query(conn: psycopg.Connection, sql: str, timeout_ms: int) -> dict:
    """Median wall time of QUERY_RUNS executions with all rows fetched, as Grafana reads them."""
    runs, rows = [], 0
    for _ in range(QUERY_RUNS):
        started = time.perf_counter()
        try:
            rows = len(conn.execute(sql).fetchall())
        except psycopg.errors.QueryCanceled:
            return {"median_ms": timeout_ms, "rows": None, "timed_out": True}
        runs.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(runs), 1), "rows": rows}
