"""What `heartbeat-platform status` reports: reachability, schema, topic, storage, and
the embedded broker's memory, log size and rotations.

Row counts are the planner's estimates summed over the day partitions (exact counts would
read every stored reading: minutes at the design rate), with each table's size, the days
kept and how far the rollups are behind.
"""

from __future__ import annotations

from typing import Any

import psycopg

from heartbeat_platform.config import Settings
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.rotation import broker_status
from heartbeat_platform.local.services import LocalServices
from heartbeat_platform.readiness import NOT_RUNNING_HINT, kafka_failures_explained
from heartbeat_platform.storage.database import connect, describe, one_row
from heartbeat_platform.storage.migrations import schema_version
from heartbeat_platform.storage.partitions import DAY_PARTITIONED, partition_days
from heartbeat_platform.streaming.topics import BrokerUnavailable, describe_topic

_TABLES = """
SELECT parent.relname,
       coalesce(sum(greatest(child.reltuples, 0)), 0)::bigint,
       coalesce(sum(pg_total_relation_size(child.oid)), 0)::bigint,
       count(child.oid)
FROM pg_class parent
LEFT JOIN pg_inherits ON pg_inherits.inhparent = parent.oid
LEFT JOIN pg_class child ON child.oid = pg_inherits.inhrelid
WHERE parent.relnamespace = current_schema()::regnamespace AND parent.relname = ANY(%s)
GROUP BY parent.relname
"""
_ROLLUPS = """
SELECT (SELECT max(minute) + interval '1 minute' FROM fleet_minute_stats),
       (SELECT max(hour) + interval '1 hour' FROM customer_hourly_bpm_stats),
       (SELECT count(*) FROM (SELECT DISTINCT rollup, window_start FROM rollup_pending) AS w)
"""


def collect_status(settings: Settings) -> dict[str, Any]:
    """A plain dict (printable as JSON); starts nothing."""
    endpoints = LocalServices(settings).current()
    report: dict[str, Any] = {
        "database": _database_status(endpoints.database_url, settings),
        "kafka": _kafka_status(endpoints.bootstrap_servers, settings),
    }
    report["ok"] = bool(
        report["database"]["reachable"]
        and report["database"]["schema_version"]
        and report["kafka"]["reachable"]
        and report["kafka"]["partitions"]
    )
    return report


def _source(url: str | None) -> str:
    return "configured" if url else "embedded"


def _database_status(url: str, settings: Settings) -> dict[str, Any]:
    status: dict[str, Any] = {
        "source": _source(settings.database_url),
        "reachable": False,
        "where": describe(url) if url else None,
        "schema_version": None,
        "row_counts": {},
        "storage": {},
    }
    if not url:
        status["error"] = f"embedded PostgreSQL is not running: {NOT_RUNNING_HINT}"
        return status
    try:
        status["schema_version"] = schema_version(url)
        status["reachable"] = True
        if status["schema_version"] is not None:
            with connect(url) as conn:
                status["row_counts"], status["storage"] = _storage(conn, settings)
    except psycopg.Error as exc:
        status["error"] = str(exc).strip()
    return status


def _storage(conn: psycopg.Connection, settings: Settings) -> tuple[dict, dict]:
    """Estimated rows per raw table, and what is kept where (bounded catalog reads)."""
    counts, tables = {}, {}
    for name, rows, size, partitions in conn.execute(_TABLES, (list(DAY_PARTITIONED),)):
        counts[name] = rows
        tables[name] = {"bytes": size, "partitions": partitions}
    days = partition_days(conn)["heartbeat_records"]
    minute_frontier, hour_frontier, pending = one_row(conn.execute(_ROLLUPS))
    return counts, {
        "tables": tables,
        "first_day": str(days[0]) if days else None,
        "last_day": str(days[-1]) if days else None,
        "raw_retention_days": settings.heartbeat_raw_retention_days,
        "rollup_retention_days": settings.heartbeat_rollup_retention_days,
        "fleet_minutes_rolled_up_until": minute_frontier.isoformat() if minute_frontier else None,
        "customer_hours_rolled_up_until": hour_frontier.isoformat() if hour_frontier else None,
        "rollup_windows_pending": pending,
    }


def _kafka_status(bootstrap: str, settings: Settings) -> dict[str, Any]:
    status: dict[str, Any] = {
        "source": _source(settings.kafka_bootstrap_servers),
        "reachable": False,
        "bootstrap_servers": bootstrap or None,
        "topic": settings.kafka_topic,
        "partitions": None,
    }
    if not bootstrap:
        status["error"] = f"embedded broker is not running: {NOT_RUNNING_HINT}"
        return status
    try:
        with kafka_failures_explained(bootstrap, settings.kafka_client_config):
            info = describe_topic(bootstrap, settings.kafka_topic, settings.kafka_client_config)
        status["reachable"] = True
        status["partitions"] = info.partitions if info else None
    except BrokerUnavailable as exc:
        status["error"] = str(exc)
    broker = EmbeddedBroker(settings.heartbeat_state_dir / "broker")
    if broker.serves(bootstrap):
        status["embedded_broker"] = broker_status(settings, broker)
    return status
