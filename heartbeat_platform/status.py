"""What `heartbeat-platform status` reports: reachability, schema, topic, row counts."""

from __future__ import annotations

from typing import Any

import psycopg

from heartbeat_platform.config import Settings
from heartbeat_platform.local.services import LocalServices
from heartbeat_platform.storage.database import connect, describe
from heartbeat_platform.storage.migrations import schema_version
from heartbeat_platform.streaming.topics import BrokerUnavailable, describe_topic

COUNTED_TABLES = (
    "heartbeat_records",
    "heartbeat_anomalies",
    "heartbeat_dead_letters",
    "pipeline_metrics",
)


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
    }
    if not url:
        status["error"] = "embedded PostgreSQL is not running (run `heartbeat-platform init-db`)"
        return status
    try:
        status["schema_version"] = schema_version(url)
        status["reachable"] = True
        if status["schema_version"] is not None:
            with connect(url) as conn:
                for table in COUNTED_TABLES:
                    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                    status["row_counts"][table] = row[0]
    except psycopg.Error as exc:
        status["error"] = str(exc).strip()
    return status


def _kafka_status(bootstrap: str, settings: Settings) -> dict[str, Any]:
    status: dict[str, Any] = {
        "source": _source(settings.kafka_bootstrap_servers),
        "reachable": False,
        "bootstrap_servers": bootstrap or None,
        "topic": settings.kafka_topic,
        "partitions": None,
    }
    if not bootstrap:
        status["error"] = "embedded broker is not running (run `heartbeat-platform init-db`)"
        return status
    try:
        info = describe_topic(bootstrap, settings.kafka_topic)
        status["reachable"] = True
        status["partitions"] = info.partitions if info else None
    except BrokerUnavailable as exc:
        status["error"] = str(exc)
    return status
