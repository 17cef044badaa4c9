"""What `heartbeat-platform status` reports: reachability, schema, topic, storage, and
the embedded broker's memory, log size and rotations.

Row counts: a small table is counted exactly; a large one is the planner's estimate summed
over its day partitions (an exact count would read every stored reading: minutes at the
design rate), and "not analysed yet" when PostgreSQL has no estimate for a large partition
(a new one, before autovacuum's first ANALYZE): never a made-up ~0. With each table's size,
the days kept and how far the rollups are behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from heartbeat_platform.config import Settings
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.rotation import broker_status
from heartbeat_platform.local.services import LocalServices
from heartbeat_platform.readiness import NOT_RUNNING_HINT, kafka_failures_explained
from heartbeat_platform.storage.database import connect, describe, one_row
from heartbeat_platform.storage.migrations import schema_version
from heartbeat_platform.storage.partitions import DAY_PARTITIONED, partition_days
from heartbeat_platform.streaming.topics import BrokerUnavailable, describe_topic

# Each day partition: the planner's statistics (reltuples -1, or relpages 0, until ANALYZE:
# creating its indexes sets reltuples to 0), its heap now (what a count reads), its size with
# indexes and TOAST.
_PARTITIONS = """
SELECT parent.relname, child.relname, child.reltuples::bigint, child.relpages,
       pg_relation_size(child.oid), pg_total_relation_size(child.oid)
FROM pg_class parent
JOIN pg_inherits ON pg_inherits.inhparent = parent.oid
JOIN pg_class child ON child.oid = pg_inherits.inhrelid
WHERE parent.relnamespace = current_schema()::regnamespace AND parent.relname = ANY(%s)
"""
_PAGE = 8192
# A table whose heap is at most this big is counted exactly (a fraction of a second).
EXACT_COUNT_MAX_BYTES = 32 * 2**20
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


def _broker_source(settings: Settings) -> str:
    """Which broker `status` talks to: the configured cluster, or the local one it names."""
    if settings.kafka_bootstrap_servers:
        return "configured"
    return "local Apache Kafka" if settings.heartbeat_local_broker == "kafka" else "embedded Tansu"


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
    """Rows per raw table, and what is kept where (catalog reads, and counts of small tables)."""
    partitions: dict[str, list[Partition]] = {table: [] for table in DAY_PARTITIONED}
    for parent, *partition in conn.execute(_PARTITIONS, (list(DAY_PARTITIONED),)):
        partitions[parent].append(Partition(*partition))
    counts, tables = {}, {}
    for name, parts in partitions.items():
        counts[name] = row_count(conn, name, parts)
        tables[name] = {"bytes": sum(p.total_bytes for p in parts), "partitions": len(parts)}
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


@dataclass(frozen=True)
class Partition:
    name: str
    reltuples: int  # the planner's rows at its last ANALYZE (or index build); -1: none
    relpages: int  # the heap's pages then; 0: no density known
    heap_bytes: int  # the heap now
    total_bytes: int


def row_count(conn: psycopg.Connection, table: str, partitions: list[Partition]) -> dict[str, Any]:
    """{"rows": n, "how": "exact" | "estimate" | "not analysed yet"} for a partitioned table
    (rows None when not analysed).

    A small table is counted. A large one sums its partitions' estimates: the rows per page
    PostgreSQL last measured times the pages the partition has now (as the planner does, so a
    stale estimate still grows with the table); a partition with no measure yet is counted
    when small, and when large makes the total unknown."""
    if sum(p.heap_bytes for p in partitions) <= EXACT_COUNT_MAX_BYTES:
        return {"rows": _count(conn, table), "how": "exact"}
    rows = 0
    for p in partitions:
        if p.reltuples >= 0 and p.relpages > 0:
            rows += round(p.reltuples / p.relpages * (p.heap_bytes / _PAGE))
        elif p.heap_bytes == 0:
            continue  # empty
        elif p.heap_bytes <= EXACT_COUNT_MAX_BYTES:
            rows += _count(conn, p.name)
        else:
            return {"rows": None, "how": "not analysed yet"}
    return {"rows": rows, "how": "estimate"}


def _count(conn: psycopg.Connection, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    return int(one_row(conn.execute(query))[0])


def _kafka_status(bootstrap: str, settings: Settings) -> dict[str, Any]:
    status: dict[str, Any] = {
        "source": _broker_source(settings),
        "reachable": False,
        "bootstrap_servers": bootstrap or None,
        "topic": settings.kafka_topic,
        "partitions": None,
    }
    if not bootstrap:
        status["error"] = f"the {status['source']} broker is not running: {NOT_RUNNING_HINT}"
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
