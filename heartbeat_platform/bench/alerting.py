"""consume_alerting: what alert episodes cost ingest. The consume-to-PostgreSQL rate of the
same preloaded topic with alerting off, at the defaults and with every delay off (issue 20,
point 6), each run by a fresh consumer group into a freshly created database, the order of
the modes rotated from round to round so that none always goes first."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from heartbeat_platform.bench.processes import consume_process
from heartbeat_platform.bench.services import drop_database, endpoints, fresh_database, on_topic
from heartbeat_platform.config import Settings

# Each mode's consumer environment. `defaults` names the two delay settings empty, which is
# their default, so a delay in the user's environment or .env does not leak into it.
MODES: dict[str, dict[str, str]] = {
    "off": {"HEARTBEAT_ALERTING": "off"},
    "defaults": {"HEARTBEAT_ALERTING": "on", "HEARTBEAT_ALERT_DELAY_S": "",
                 "HEARTBEAT_ALERT_MIN_READINGS": ""},
    "no_delay": {"HEARTBEAT_ALERTING": "on", "HEARTBEAT_ALERT_DELAY_S": "0",
                 "HEARTBEAT_ALERT_MIN_READINGS": "1"},
}
DATABASE = "heartbeat_bench_alerting"  # recreated before each mode's run, dropped after

# Issue 20, "Done when", next to what a run measured (numbers, never test assertions)
TARGETS = {
    "defaults_rows_per_s_min": 100_000,
    "ratio_defaults_to_off_min": 0.9,
    "ratio_no_delay_to_off_min": 0.7,
    "notify_p99_ms_max": 1_000,
}


def mode_order(rounds: int) -> list[str]:
    """The modes of every round in run order, round r starting at mode r (mod 3)."""
    names = list(MODES)
    return [names[(r + i) % len(names)] for r in range(rounds) for i in range(len(names))]


def consume_alerting(
    settings: Settings, topic: str, rounds: int, log: Callable[[str], None]
) -> dict:
    """Each mode `rounds` times on `topic` (already holding the events); `summarize`d."""
    runs: list[tuple[str, dict]] = []
    server = endpoints(settings).database_url
    started = time.monotonic()
    try:
        for mode in mode_order(rounds):
            database_url = fresh_database(server, DATABASE)
            stage = on_topic(settings.model_copy(update={"database_url": database_url}), topic)
            log(f"consume_alerting: {mode}")
            consumed = consume_process(stage, stop_when_idle=3, env=MODES[mode])
            runs.append((mode, {
                "rows_per_s": consumed["messages_per_s"],
                "messages": consumed["messages"],
                "busy_seconds": consumed["busy_seconds"],
                "consumer_peak_rss_mb": consumed["peak_rss_mb"],
            }))
    finally:
        drop_database(server, DATABASE)
    # the stage's wall time: what it adds to a bench run
    return {**summarize(runs), "stage_seconds": round(time.monotonic() - started, 1)}


def summarize(runs: list[tuple[str, dict]]) -> dict:
    """Per mode the median rate of its runs (each run's rate too), and the ratios to off."""
    summary: dict = {"order": [mode for mode, _ in runs]}
    for mode in MODES:
        mine = [run for name, run in runs if name == mode]
        if not mine:
            continue
        summary[mode] = {
            "rows_per_s": round(statistics.median(r["rows_per_s"] for r in mine), 1),
            "runs_rows_per_s": [r["rows_per_s"] for r in mine],
            "messages": [r["messages"] for r in mine],
            "busy_seconds": [r["busy_seconds"] for r in mine],
            "consumer_peak_rss_mb": max(r["consumer_peak_rss_mb"] for r in mine),
        }
    off = summary.get("off", {}).get("rows_per_s")
    for mode in ("defaults", "no_delay"):
        rate = summary.get(mode, {}).get("rows_per_s")
        summary[f"ratio_{mode}_to_off"] = round(rate / off, 3) if off and rate is not None else None
    return summary


def targets_met(consume_alerting: dict, alerts: dict) -> dict:
    """Issue 20's targets next to this run's consume rates and the latency stage's
    reading-to-receipt p99 (`end_to_end.alerts`); met: True / False / None (not measured)."""
    def held(measured: float | None, bound: float, at_least: bool) -> dict:
        met = None if measured is None else (measured >= bound if at_least else measured < bound)
        return {"min" if at_least else "max": bound, "measured": measured, "met": met}

    return {
        "consume_defaults_rows_per_s": held(
            consume_alerting.get("defaults", {}).get("rows_per_s"),
            TARGETS["defaults_rows_per_s_min"], at_least=True),
        "ratio_defaults_to_off": held(
            consume_alerting.get("ratio_defaults_to_off"),
            TARGETS["ratio_defaults_to_off_min"], at_least=True),
        "ratio_no_delay_to_off": held(
            consume_alerting.get("ratio_no_delay_to_off"),
            TARGETS["ratio_no_delay_to_off_min"], at_least=True),
        "notify_p99_ms": held(alerts.get("notify_p99_ms"), TARGETS["notify_p99_ms_max"],
                              at_least=False),
    }
