"""Every Grafana panel and template variable timed as Grafana would run it: its SQL with
the macros expanded for the last 6 hours and the last 7 days, as Grafana's role with its
limits, all rows fetched, the median of QUERY_RUNS runs."""

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
from heartbeat_platform.storage.database import connect

QUERY_RUNS = 5  # each dashboard query runs this often; the median is reported
QUERY_RANGES = {"6h": timedelta(hours=6), "7d": timedelta(days=7)}
QUERY_CUSTOMER = customer_id(1)  # the $customer variable: a real customer of the history
QUERY_TIMEOUT_S = 30  # the statement_timeout of Grafana's role (sql/003)


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
        "as_role": "heartbeat_grafana_reader",
    }
    with connect(url, autocommit=True) as conn:
        # Grafana's role and its limits: read-only, and a slow panel is cut off at 30 s.
        conn.execute("SET ROLE heartbeat_grafana_reader")
        conn.execute(f"SET statement_timeout = '{QUERY_TIMEOUT_S}s'")
        for label, span in QUERY_RANGES.items():
            now = datetime.now(UTC)
            interval = grafana_queries.grafana_interval(span)
            ctx = grafana_queries.QueryContext(
                time_from=now - span, time_to=now, interval=interval,
                variables={"customer": QUERY_CUSTOMER},
            )
            measured = {
                name: _time_query(conn, grafana_queries.expand(sql, ctx))
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


def _time_query(conn: psycopg.Connection, sql: str) -> dict:
    """Median wall time of QUERY_RUNS executions with all rows fetched, as Grafana reads them."""
    runs, rows = [], 0
    for _ in range(QUERY_RUNS):
        started = time.perf_counter()
        try:
            rows = len(conn.execute(sql).fetchall())
        except psycopg.errors.QueryCanceled:
            return {"median_ms": QUERY_TIMEOUT_S * 1000, "rows": None, "timed_out": True}
        runs.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(runs), 1), "rows": rows}
