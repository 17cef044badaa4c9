"""Alerting in Dagster on a real PostgreSQL: the checks of `alert_episodes`, the statistics of
`alert_episode_stats`, and the NO_SIGNAL job."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import psycopg
import pytest

from heartbeat_platform.definitions import defs
from tests.support.alerting_rows import insert_episode

CHECKS = {"episode_states_consistent", "transitions_in_outbox", "nothing_stuck_undelivered"}


@pytest.fixture
def conn(platform_settings, database_url: str):
    """The test's database, schema applied (platform_settings prepared it)."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def run_alert_stats() -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("alert_stats").execute_in_process(raise_on_error=False)


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, tuple[bool, dict]]:
    return {
        e.check_name: (e.passed, {k: v.value for k, v in e.metadata.items()})
        for e in result.get_asset_check_evaluations()
    }


def stats_of(result: dg.ExecuteInProcessResult) -> dict | None:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == dg.AssetKey("alert_episode_stats"):
            return {k: v.value for k, v in materialization.metadata.items()}
    return None


def test_consistent_episodes_pass_every_check(conn) -> None:
    insert_episode(conn, "CUST_00001")
    insert_episode(conn, "CUST_00002", "BRADYCARDIA", "resolved",
                   resolved_ago=timedelta(minutes=1))
    result = run_alert_stats()
    checks = check_results(result)
    assert set(checks) == CHECKS
    assert {name: passed for name, (passed, _) in checks.items()} == dict.fromkeys(CHECKS, True)
    assert checks["nothing_stuck_undelivered"][1]["undelivered"] == 3
    assert stats_of(result) is not None


def test_two_open_episodes_of_one_customer_and_kind_fail_the_state_check_and_block_stats(
    conn,
) -> None:
    """The schema forbids both faults; the check is there for the day it no longer does."""
    conn.execute("DROP INDEX alert_episodes_one_open")
    for (name,) in conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'alert_episodes'::regclass "
        "AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%%resolved_at%%'"
    ).fetchall():
        conn.execute(f'ALTER TABLE alert_episodes DROP CONSTRAINT "{name}"')
    insert_episode(conn, "CUST_00001")
    insert_episode(conn, "CUST_00001")
    insert_episode(conn, "CUST_00003", "SENSOR_FAULT")
    conn.execute("UPDATE alert_episodes SET state = 'resolved' WHERE customer_id = 'CUST_00003'")

    result = run_alert_stats()
    passed, metadata = check_results(result)["episode_states_consistent"]
    assert not passed
    assert metadata["customer_kinds_with_several_open"] == 1
    assert metadata["resolved_without_resolved_at"] == 1
    assert metadata["examples"] == ["CUST_00001 TACHYCARDIA: 2 open"]
    assert stats_of(result) is None  # a blocking check: no statistics from broken state


def test_a_firing_episode_without_its_outbox_row_fails(conn) -> None:
    insert_episode(conn, "CUST_00001")
    unnotified = insert_episode(conn, "CUST_00002", "BRADYCARDIA", notify=False)
    resolved = insert_episode(conn, "CUST_00003", "TACHYCARDIA", "resolved",
                              resolved_ago=timedelta(minutes=2))
    conn.execute("DELETE FROM alert_outbox WHERE episode_id = %s AND state = 'resolved'",
                 (resolved,))
    passed, metadata = check_results(run_alert_stats())["transitions_in_outbox"]
    assert not passed
    assert (metadata["firing_without_outbox_row"], metadata["resolved_without_outbox_row"]) == (
        1, 1
    )
    assert metadata["examples"] == [
        f"episode {unnotified} CUST_00002 BRADYCARDIA firing",
        f"episode {resolved} CUST_00003 TACHYCARDIA resolved",
    ]


def test_a_notification_undelivered_past_the_give_up_time_is_stuck_until_given_up(
    conn,
) -> None:
    episode_id = insert_episode(conn, "CUST_00001")
    insert_episode(conn, "CUST_00002")  # recent and undelivered: not stuck
    conn.execute(
        "UPDATE alert_outbox SET created_at = now() - interval '25 hours' WHERE episode_id = %s",
        (episode_id,),
    )
    passed, metadata = check_results(run_alert_stats())["nothing_stuck_undelivered"]
    assert not passed
    assert (metadata["stuck_past_give_up"], metadata["undelivered"]) == (1, 2)

    conn.execute("UPDATE alert_outbox SET gave_up_at = now() WHERE episode_id = %s",
                 (episode_id,))
    passed, metadata = check_results(run_alert_stats())["nothing_stuck_undelivered"]
    assert passed and metadata["undelivered"] == 1


def test_stats_count_episodes_per_kind_and_time_to_acknowledge(conn) -> None:
    minutes = timedelta(minutes=1)
    for n, ack_s in enumerate((60, 120, 300), start=1):  # opened this hour, acknowledged
        insert_episode(conn, f"CUST_0000{n}", opened_ago=10 * minutes,
                       acknowledged_after=timedelta(seconds=ack_s))
    insert_episode(conn, "CUST_00010", "TACHYCARDIA", opened_ago=3 * 60 * minutes)  # old
    insert_episode(conn, "CUST_00011", "BRADYCARDIA", "resolved", opened_ago=40 * minutes,
                   resolved_ago=30 * minutes)
    insert_episode(conn, "CUST_00012", "BRADYCARDIA", "resolved", opened_ago=5 * 60 * minutes,
                   resolved_ago=20 * minutes)  # opened long ago, resolved this hour
    insert_episode(conn, "CUST_00013", "SENSOR_FAULT", "resolved", opened_ago=3 * 60 * minutes,
                   resolved_ago=2 * 60 * minutes)  # nothing this hour
    insert_episode(conn, "CUST_00014", "SENSOR_FAULT", "resolved", opened_ago=50 * 60 * minutes,
                   resolved_ago=49 * 60 * minutes,
                   acknowledged_after=timedelta(seconds=5))  # acknowledged days ago
    conn.execute(
        "UPDATE alert_outbox SET done_at = now() WHERE customer_id <> 'CUST_00010';"
        "UPDATE alert_outbox SET done_at = NULL, gave_up_at = now() - interval '1 hour' "
        "WHERE customer_id = 'CUST_00011' AND state = 'resolved'"
    )

    stats = stats_of(run_alert_stats())
    assert stats is not None
    assert {k: v for k, v in stats.items() if k.startswith("opened_last_hour")} == {
        "opened_last_hour_tachycardia": 3, "opened_last_hour_bradycardia": 1,
        "opened_last_hour_sensor_fault": 0, "opened_last_hour_no_signal": 0,
        "opened_last_hour_total": 4,
    }
    assert {k: v for k, v in stats.items() if k.startswith("resolved_last_hour")} == {
        "resolved_last_hour_tachycardia": 0, "resolved_last_hour_bradycardia": 2,
        "resolved_last_hour_sensor_fault": 0, "resolved_last_hour_no_signal": 0,
        "resolved_last_hour_total": 2,
    }
    assert stats["open_now_tachycardia"] == 4 and stats["open_now_total"] == 4
    # 60, 120, 300 s: median 120, p90 by linear interpolation 120 + 0.8 * 180
    assert (stats["acknowledged_last_24h"], stats["ack_seconds_median_24h"],
            stats["ack_seconds_p90_24h"]) == (3, 120.0, 264.0)
    assert (stats["undelivered"], stats["given_up_last_24h"]) == (1, 1)


def test_stats_of_an_empty_table_are_zeros(conn) -> None:
    stats = stats_of(run_alert_stats())
    assert stats is not None and set(stats.values()) == {0}


def test_no_signal_job_opens_one_episode_per_silent_customer_once(conn) -> None:
    conn.execute(
        "INSERT INTO customers (customer_id, last_reading_at) VALUES "
        "('CUST_00001', now() - interval '20 minutes'),"  # silent: NO_SIGNAL
        "('CUST_00002', now() - interval '1 minute'),"  # still sending
        "('CUST_00003', now() - interval '2 days')"  # silent too long: no longer watched
    )
    job = defs.resolve_job_def("no_signal")
    first = job.execute_in_process()
    assert first.output_for_node("open_no_signal_episodes") == ["CUST_00001"]
    opened = conn.execute(
        "SELECT e.customer_id, e.kind, e.state, o.state FROM alert_episodes e "
        "JOIN alert_outbox o USING (episode_id)"
    ).fetchall()
    assert opened == [("CUST_00001", "NO_SIGNAL", "firing", "firing")]
    observed = [
        e.event_specific_data.asset_observation.metadata["no_signal_opened"].value
        for e in first.all_events if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert observed == [1]

    again = job.execute_in_process()
    assert again.output_for_node("open_no_signal_episodes") == []
    assert conn.execute("SELECT count(*) FROM alert_episodes").fetchone() == (1,)
