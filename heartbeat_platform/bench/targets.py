"""The targets, and what a run measured next to them: benchmark numbers, never test
assertions (README, "Performance")."""

from __future__ import annotations

from heartbeat_platform.bench.dashboard import QUERY_RANGES

TARGETS = {
    "consume_ratio_min": 0.8,  # consume rate with history / on empty tables
    "query_ms_max": 200,  # the slowest dashboard query, median
    "rollups_catch_up_s_max": 5,  # the rollups brought up to date after the consume
    "bytes_per_reading_max": 180,  # raw and rollup bytes per stored reading
}


def targets_met(growth: dict) -> dict:
    """The targets next to what the growth stage measured (met: True / False / None)."""
    ratio = growth["consume_to_postgres"]["ratio"]
    slowest = [
        growth["queries"][label]["slowest_ms"]
        for label in QUERY_RANGES if label in growth["queries"]
    ]
    catch_up = growth["rollups_catch_up_s"]
    per_reading = growth["storage"]["bytes_per_reading"]
    return {
        "consume_ratio": {"min": TARGETS["consume_ratio_min"], "measured": ratio,
                          "met": ratio >= TARGETS["consume_ratio_min"]},
        "slowest_query_ms": {"max": TARGETS["query_ms_max"],
                             "measured": max(slowest) if slowest else None,
                             "met": max(slowest) < TARGETS["query_ms_max"] if slowest else None},
        "rollups_catch_up_s": {"max": TARGETS["rollups_catch_up_s_max"], "measured": catch_up,
                               "met": catch_up < TARGETS["rollups_catch_up_s_max"]},
        "bytes_per_reading": {"max": TARGETS["bytes_per_reading_max"], "measured": per_reading,
                              "met": per_reading <= TARGETS["bytes_per_reading_max"]},
    }
