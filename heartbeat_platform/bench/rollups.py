"""The rollups of a bench database brought up to date, timed, as the scheduled refreshes
of a running platform would have left them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import psycopg

from heartbeat_platform.bench.history import HistoryPlan
from heartbeat_platform.storage.database import connect
from heartbeat_platform.storage.rollups import Rollup, mark_pending, refresh_pending


def catch_up_moment(now: datetime) -> datetime:
    """A moment at which every window that holds a reading up to `now` is settled.

    `refresh_pending` computes a window once it closed and its settle time passed: the
    widest rollup (a day) decides. Passing this moment brings every rollup up to date.
    """
    return now + max(rollup.width + rollup.settle() for rollup in Rollup)


def refresh_all(conn: psycopg.Connection) -> dict:
    """Every pending window computed now, as at `catch_up_moment`; seconds and per rollup
    what it did."""
    started = time.perf_counter()
    results = refresh_pending(conn, catch_up_moment(datetime.now(UTC)))
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "rollups": {
            r.rollup.value: {
                "windows": r.windows, "rows": r.rows, "readings": int(r.readings),
                "seconds": round(r.seconds, 3),
            }
            for r in results
        },
    }


def roll_up_history(url: str, plan: HistoryPlan) -> dict:
    """A loaded history's windows marked pending, as its readings would have left them, and
    rolled up (`refresh_all`): the rollups a platform that ran all along would hold."""
    with connect(url) as conn:
        for rollup in (Rollup.FLEET_MINUTE, Rollup.CUSTOMER_HOURLY):
            mark_pending(conn, rollup, plan.windows(rollup))
        conn.commit()
        return refresh_all(conn)


def refresh_settled(conn: psycopg.Connection) -> None:
    """What the scheduled rollups do: every window settled at this moment."""
    refresh_pending(conn, datetime.now(UTC))
