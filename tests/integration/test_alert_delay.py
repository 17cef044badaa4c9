"""The alarm-condition delay end to end: scripted readings through the real consumer
(`heartbeat-platform consume`) to a webhook receiver, at the default delays (10 s for
TACHYCARDIA and BRADYCARDIA, 30 s for SENSOR_FAULT, by the readings' own times).

Small batches, so that a pending episode is stored in one batch and fires (or is dropped)
in a later one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.integration.test_alert_episodes import (  # noqa: F401 (fixtures)
    consumer_process,
    prepared,
    receiver,
    script,
    send,
    stop,
    wait_for,
)


def test_at_the_default_delays_only_a_sustained_run_fires_and_short_runs_page_nobody(
    prepared, receiver, db  # noqa: F811
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    readings = script(
        start,
        # 190 bpm from 1 s to 12 s: sustained 10 s at the 11th, which fires; then resolved
        CUST_00051=[72, *[190] * 12, 70, 70, 70],
        CUST_00052=[*[190] * 10, 70, 70, 70],  # 9 s sustained: pending, dropped
        CUST_00053=[*[30] * 6, 70, *[30] * 6, 70],  # two runs of 5 s, broken by NORMAL ones
        CUST_00054=[*[0] * 20, 70, 70, 70],  # a sensor fault of 19 s (30 s needed)
    )
    anomalous = sum(1 for _, bpm, _ in readings if bpm != 70 and bpm != 72)
    send(prepared, readings)
    # "" = no HEARTBEAT_ALERT_DELAY_S: the defaults (the other tests' helper sets 0)
    consumer = consumer_process(
        prepared, receiver, HEARTBEAT_ALERT_DELAY_S="", HEARTBEAT_CONSUME_BATCH_SIZE="5"
    )
    try:
        wait_for(lambda: db.execute(
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_progress"
        ).fetchone()[0] == len(readings), what="every reading stored")
        wait_for(lambda: len(receiver.received) == 2, what="firing and resolved delivered")
    finally:
        stop(consumer)

    rows = db.execute(
        "SELECT episode_id, customer_id, kind, state, readings, first_reading_at, opened_at "
        "FROM alert_episodes ORDER BY episode_id"
    ).fetchall()
    [(episode_id, customer, kind, state, count, first_at, opened_at)] = rows  # no pending left
    assert (customer, kind, state, count) == ("CUST_00051", "TACHYCARDIA", "resolved", 12)
    assert first_at == start + timedelta(seconds=1) and opened_at is not None

    assert receiver.keys() == {f"{episode_id}:firing", f"{episode_id}:resolved"}
    firing = next(p for _, p in receiver.received if p["state"] == "firing")
    assert firing["customer_id"] == "CUST_00051"
    # the object is the episode as its batch left it: at least the 10 s and 11 readings
    sustained = datetime.fromisoformat(firing["last_reading_at"]) - first_at
    assert sustained >= timedelta(seconds=10) and firing["readings"] >= 11

    # The original design's rows are untouched: every anomalous reading stored and
    # counted in its alert_<type> row, fired episode or not.
    stored, alert_rows = db.execute(
        "SELECT (SELECT count(*) FROM heartbeat_anomalies), "
        "(SELECT count(*) FROM pipeline_metrics WHERE metric_name LIKE 'alert\\_%%')"
    ).fetchone()
    assert stored == alert_rows == anomalous == 12 + 10 + 12 + 20
