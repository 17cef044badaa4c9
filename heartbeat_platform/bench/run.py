"""`run_bench`: the stages in order on the prepared services, and their JSON."""

from __future__ import annotations

import json
import os
import platform as host
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from heartbeat_platform import readiness
from heartbeat_platform.bench.alerting import MODES, consume_alerting
from heartbeat_platform.bench.alerting import targets_met as alerting_targets
from heartbeat_platform.bench.baselines import copy_baseline, parse_baseline
from heartbeat_platform.bench.cold import cold_stage
from heartbeat_platform.bench.dashboard_states import dashboard_states
from heartbeat_platform.bench.growth import measure_growth
from heartbeat_platform.bench.history import HistoryPlan, HistoryPlanError
from heartbeat_platform.bench.ingest import end_to_end, produce
from heartbeat_platform.bench.processes import consume_process
from heartbeat_platform.bench.services import fresh_database, new_topic, on_topic
from heartbeat_platform.config import Settings
from heartbeat_platform.domain.generator import DESIGN_RATE


def run_bench(
    settings: Settings,
    events: int = 400_000,
    latency_rate: float = DESIGN_RATE,
    latency_seconds: float = 15,
    history: int = 0,
    history_span_hours: float | None = None,
    dashboard_only: bool = False,
    alerting_rounds: int = 1,
    cold: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """`dashboard_only`: only `dashboard_states` on `history` readings (no other stage).
    `alerting_rounds`: how often `consume_alerting` runs each of its modes (0: not at all).
    `cold`: only `cold_stage` on `history` readings (compaction, sizes, reads; no other stage)."""
    # Every event the stages produce is stamped after this moment; the history ends here.
    started_at = datetime.now(UTC)
    plan = None
    if history:
        plan = HistoryPlan.ending_at(
            started_at, history, settings.heartbeat_customer_count,
            settings.kafka_partitions, history_span_hours,
            # --cold keeps its history beyond the raw retention: the cold tier's days
            max_span=timedelta(days=settings.heartbeat_cold_retention_days if cold
                               else settings.heartbeat_raw_retention_days),
        )
    elif dashboard_only or cold:
        raise HistoryPlanError("--dashboard-only and --cold measure on history: "
                               "give --history N")
    if dashboard_only and cold:
        raise HistoryPlanError("--dashboard-only and --cold are separate runs: give one")
    endpoints = readiness.prepare(settings).endpoints
    if dashboard_only or cold:
        on_server = settings.model_copy(update={
            "database_url": endpoints.database_url,
            "kafka_bootstrap_servers": endpoints.bootstrap_servers,
        })
        if cold:
            return {"cold": cold_stage(on_server, history, history_span_hours, log)}
        return {"dashboard_states": dashboard_states(on_server, history, history_span_hours, log)}
    database_url = fresh_database(endpoints.database_url)
    bench = settings.model_copy(
        update={
            "database_url": database_url,
            "kafka_bootstrap_servers": endpoints.bootstrap_servers,
        }
    )
    results: dict = {
        "events": events,
        "machine": {"cpus": os.cpu_count(), "python": host.python_version()},
        "batch_size": settings.heartbeat_consume_batch_size,
    }

    topic = new_topic(bench)
    log(f"producer: {events:,} events to {topic}")
    report = produce(on_topic(bench, topic), events)
    results["producer"] = {
        "events_per_s": round(report.delivered / report.seconds, 1),
        "delivered": report.delivered,
        "failed": report.failed,
        "uncertain": report.uncertain,
        "seconds": round(report.seconds, 3),
    }

    log("consume_to_postgres: consumer process on the preloaded topic")
    load_before_consume = os.getloadavg()[0]
    consumed = consume_process(on_topic(bench, topic), stop_when_idle=3)
    results["consume_to_postgres"] = {
        "rows_per_s": consumed["messages_per_s"],
        "messages": consumed["messages"],
        "busy_seconds": consumed["busy_seconds"],
        "consumer_peak_rss_mb": consumed["peak_rss_mb"],
    }

    if alerting_rounds:
        log(f"consume_alerting: off, defaults, no_delay, {alerting_rounds} round(s), "
            "each on the same preloaded topic into a fresh database")
        results["consume_alerting"] = consume_alerting(bench, topic, alerting_rounds, log)

    log(f"end_to_end: {latency_rate:,.0f} events/s for {latency_seconds:.0f}s")
    results["end_to_end"] = end_to_end(
        on_topic(bench, new_topic(bench)), latency_rate, latency_seconds)
    if alerting_rounds:
        results["alerting_targets"] = alerting_targets(
            results["consume_alerting"], results["end_to_end"]["alerts"])

    log("baselines: binary COPY ceiling, validate + classify")
    results["baselines"] = {
        "copy_rows_per_s": copy_baseline(database_url, events, settings),
        "validate_classify_per_s": parse_baseline(events, settings),
    }
    results["consumer_peak_rss_mb"] = max(
        results["consume_to_postgres"]["consumer_peak_rss_mb"],
        results["end_to_end"]["consumer_peak_rss_mb"],
        *(results["consume_alerting"][mode]["consumer_peak_rss_mb"]
          for mode in MODES if mode in results.get("consume_alerting", {})),
    )
    if plan is not None:
        results["dashboard_states"] = dashboard_states(
            bench, history, history_span_hours, log)
        results["growth"] = measure_growth(
            bench, plan, events, results["consume_to_postgres"]["rows_per_s"],
            load_before_consume, log,
        )
        results["consumer_peak_rss_mb"] = max(
            results["consumer_peak_rss_mb"],
            results["growth"]["consume_to_postgres"]["consumer_peak_rss_mb"],
        )
    return results


def write_json(results: dict, path: Path | None) -> str:
    """The results as indented JSON; also written to `path` if given."""
    text = json.dumps(results, indent=2)
    if path:
        path.write_text(text + "\n")
    return text
