"""What a person does with alerts, on a real PostgreSQL: acknowledge, resolve, list, per-customer
bounds with their history, and following the outbox as transitions are queued."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from heartbeat_platform.domain.episodes import AlertBounds
from heartbeat_platform.storage import alert_operations as ops
from heartbeat_platform.storage import episodes
from heartbeat_platform.storage.migrations import migrate
from tests.support.alerting_rows import insert_episode


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def outbox(conn: psycopg.Connection, episode_id: int) -> list[tuple[str, dict]]:
    return conn.execute(
        "SELECT state, payload FROM alert_outbox WHERE episode_id = %s ORDER BY outbox_id",
        (episode_id,),
    ).fetchall()


def test_acknowledge_records_who_when_and_the_note(conn) -> None:
    episode_id = insert_episode(conn)
    done = ops.acknowledge(conn, episode_id, " alice ", "calling the customer")
    stored = conn.execute(
        "SELECT acknowledged_by, acknowledge_note, acknowledged_at IS NOT NULL, state "
        "FROM alert_episodes WHERE episode_id = %s",
        (episode_id,),
    ).fetchone()
    assert stored == ("alice", "calling the customer", True, "firing")
    assert (done.acknowledged_by, done.acknowledge_note) == ("alice", "calling the customer")
    assert done.acknowledged_at is not None


def test_an_acknowledged_episode_is_not_escalated(conn) -> None:
    """The point of acknowledging: escalation passes over it (storage.episodes)."""
    acknowledged = insert_episode(conn, "CUST_00001", opened_ago=timedelta(hours=1))
    ignored = insert_episode(conn, "CUST_00002", opened_ago=timedelta(hours=1))
    ops.acknowledge(conn, acknowledged, "alice")
    now = conn.execute("SELECT now()").fetchone()[0]
    assert episodes.escalate_due(conn, now, timedelta(minutes=5)) == [ignored]


def test_acknowledge_refuses_what_is_not_a_fresh_firing_episode(conn) -> None:
    firing = insert_episode(conn, "CUST_00001")
    pending = insert_episode(conn, "CUST_00002", state="pending")
    resolved = insert_episode(conn, "CUST_00003", state="resolved",
                              resolved_ago=timedelta(minutes=1))
    ops.acknowledge(conn, firing, "alice")

    with pytest.raises(ops.EpisodeAlreadyAcknowledged, match="already acknowledged by alice"):
        ops.acknowledge(conn, firing, "bob")
    with pytest.raises(ops.UnknownEpisode, match="no episode 999999"):
        ops.acknowledge(conn, 999_999, "bob")
    with pytest.raises(ops.EpisodeNotFiring, match="pending"):
        ops.acknowledge(conn, pending, "bob")
    with pytest.raises(ops.EpisodeAlreadyResolved, match="by its readings"):
        ops.acknowledge(conn, resolved, "bob")
    with pytest.raises(ops.InvalidRequest, match="--by"):
        ops.acknowledge(conn, firing, "  ")
    # the first acknowledgement stays; the refused ones changed nothing
    rows = conn.execute(
        "SELECT episode_id, acknowledged_by FROM alert_episodes ORDER BY episode_id"
    ).fetchall()
    assert rows == [(firing, "alice"), (pending, None), (resolved, None)]


def test_resolve_closes_the_episode_and_queues_its_resolved_notification(conn) -> None:
    episode_id = insert_episode(conn)
    done = ops.resolve(conn, episode_id, "alice")
    state, resolved_at, resolved_by = conn.execute(
        "SELECT state, resolved_at, resolved_by FROM alert_episodes WHERE episode_id = %s",
        (episode_id,),
    ).fetchone()
    assert (state, resolved_by) == ("resolved", "alice") and resolved_at is not None
    assert done.resolved_at == resolved_at
    queued = outbox(conn, episode_id)
    assert [s for s, _ in queued] == ["firing", "resolved"]
    payload = queued[1][1]
    assert payload["state"] == "resolved" and payload["episode_id"] == episode_id
    assert payload["resolved_at"] is not None  # receivers see the resolution's time


def test_resolve_refuses_twice_unknown_and_pending_and_queues_nothing_more(conn) -> None:
    episode_id = insert_episode(conn)
    pending = insert_episode(conn, "CUST_00002", state="pending")
    ops.resolve(conn, episode_id, "alice")
    with pytest.raises(ops.EpisodeAlreadyResolved, match="by alice"):
        ops.resolve(conn, episode_id, "bob")
    with pytest.raises(ops.UnknownEpisode):
        ops.resolve(conn, 424_242, "bob")
    with pytest.raises(ops.EpisodeNotFiring):
        ops.resolve(conn, pending, "bob")
    assert conn.execute("SELECT resolved_by FROM alert_episodes WHERE episode_id = %s",
                        (episode_id,)).fetchone() == ("alice",)
    assert [s for s, _ in outbox(conn, episode_id)] == ["firing", "resolved"]
    assert outbox(conn, pending) == []
    assert conn.execute("SELECT state FROM alert_episodes WHERE episode_id = %s",
                        (pending,)).fetchone() == ("pending",)


def test_a_resolved_episode_frees_its_customer_and_kind_for_a_new_one(conn) -> None:
    """At most one open episode per customer and kind: resolving by hand makes room."""
    first = insert_episode(conn, "CUST_00001", "BRADYCARDIA")
    with pytest.raises(psycopg.errors.UniqueViolation):
        insert_episode(conn, "CUST_00001", "BRADYCARDIA")
    ops.resolve(conn, first, "alice")
    second = insert_episode(conn, "CUST_00001", "BRADYCARDIA")
    assert [e.episode_id for e in ops.list_episodes(conn, open_only=True)] == [second]


def test_list_gives_open_or_latest_episodes_newest_first_up_to_the_limit(conn) -> None:
    old_resolved = insert_episode(conn, "CUST_00001", state="resolved",
                                  resolved_ago=timedelta(minutes=3))
    pending = insert_episode(conn, "CUST_00002", state="pending")
    firing = insert_episode(conn, "CUST_00003")
    newest_resolved = insert_episode(conn, "CUST_00004", state="resolved",
                                     resolved_ago=timedelta(minutes=1))

    assert [e.episode_id for e in ops.list_episodes(conn, open_only=True)] == [firing, pending]
    assert [e.episode_id for e in ops.list_episodes(conn)] == [
        newest_resolved, firing, pending, old_resolved
    ]
    assert [e.episode_id for e in ops.list_episodes(conn, limit=2)] == [newest_resolved, firing]
    shown = ops.list_episodes(conn, limit=1)[0].as_dict()
    assert shown["customer_id"] == "CUST_00004" and shown["state"] == "resolved"
    assert shown["resolved_at"].endswith("+00:00")  # JSON-ready, UTC


def test_overrides_keep_every_change_and_the_newest_is_in_force(conn) -> None:
    ops.set_override(conn, "CUST_00042", "BRADYCARDIA", 35, "alice", "athlete")
    ops.set_override(conn, "CUST_00042", "bradycardia", 30, "bob")
    ops.set_override(conn, "CUST_00042", "TACHYCARDIA", 200, "bob")
    ops.set_override(conn, "CUST_00007", "TACHYCARDIA", 170, "carol")

    in_force = {(o.customer_id, o.kind): (o.threshold, o.set_by)
                for o in ops.overrides_in_force(conn)}
    assert in_force == {
        ("CUST_00042", "BRADYCARDIA"): (30, "bob"),
        ("CUST_00042", "TACHYCARDIA"): (200, "bob"),
        ("CUST_00007", "TACHYCARDIA"): (170, "carol"),
    }
    # the writer applies exactly these bounds
    assert episodes.load_bounds(conn, ["CUST_00042", "CUST_00007", "CUST_00001"]) == {
        "CUST_00042": AlertBounds(bradycardia_below=30, tachycardia_above=200),
        "CUST_00007": AlertBounds(bradycardia_below=40, tachycardia_above=170),
    }

    cleared = ops.clear_override(conn, "CUST_00042", "BRADYCARDIA", "dave", "season over")
    assert cleared.threshold is None
    history = [(o.kind, o.threshold, o.set_by, o.note)
               for o in ops.override_history(conn, "CUST_00042")]
    assert history == [
        ("BRADYCARDIA", None, "dave", "season over"),
        ("TACHYCARDIA", 200, "bob", None),
        ("BRADYCARDIA", 30, "bob", None),
        ("BRADYCARDIA", 35, "alice", "athlete"),
    ]
    assert episodes.load_bounds(conn, ["CUST_00042"]) == {
        "CUST_00042": AlertBounds(bradycardia_below=40, tachycardia_above=200)
    }


def test_override_refusals_say_why_and_insert_nothing(conn) -> None:
    ops.set_override(conn, "CUST_00042", "BRADYCARDIA", 30, "alice")
    ops.set_override(conn, "CUST_00042", "TACHYCARDIA", 35, "alice")  # 30 <= 35: allowed
    refused = [
        (ops.InvalidOverride, "SENSOR_FAULT", 10, "no bound to override"),
        (ops.InvalidOverride, "BRADYCARDIA", 0, "outside 1..300"),
        (ops.InvalidOverride, "TACHYCARDIA", 301, "outside 1..300"),
        (ops.InvalidOverride, "BRADYCARDIA", 36, "must not exceed"),  # above tachycardia 35
        (ops.InvalidOverride, "TACHYCARDIA", 29, "must not exceed"),  # below bradycardia 30
    ]
    for error, kind, threshold, message in refused:
        with pytest.raises(error, match=message):
            ops.set_override(conn, "CUST_00042", kind, threshold, "bob")
    with pytest.raises(ops.InvalidRequest, match="not a customer id"):
        ops.set_override(conn, "customer 42", "BRADYCARDIA", 30, "bob")
    with pytest.raises(ops.NoOverrideInForce):
        ops.clear_override(conn, "CUST_00001", "BRADYCARDIA", "bob")
    # back to the default bradycardia bound (40) would cross the tachycardia bound (35)
    with pytest.raises(ops.InvalidOverride, match="default BRADYCARDIA"):
        ops.clear_override(conn, "CUST_00042", "BRADYCARDIA", "bob")
    assert conn.execute("SELECT count(*) FROM alert_overrides").fetchone() == (2,)
    # in the right order it works
    ops.clear_override(conn, "CUST_00042", "TACHYCARDIA", "bob")
    ops.clear_override(conn, "CUST_00042", "BRADYCARDIA", "bob")
    assert ops.overrides_in_force(conn) == []


def test_follower_receives_a_transition_queued_by_another_connection(
    conn, database_url
) -> None:
    """LISTEN wakes the follower at the other connection's commit, not before it."""
    episode_id = insert_episode(conn, "CUST_00005", "SENSOR_FAULT", notify=False)
    with psycopg.connect(database_url, autocommit=True) as own:
        follower = ops.OutboxFollower(own)
        assert follower.poll() == []
        with psycopg.connect(database_url) as other:  # a transaction, like the writer's
            episodes.enqueue(other, [episode_id], "firing")
            assert follower.poll() == []  # not committed yet
            assert not follower.wait(0.2)  # NOTIFY is sent at commit only
            other.commit()
        assert follower.wait(timeout=60)  # woken by the notification, not by a timeout
        (entry,) = follower.poll()
    assert (entry.episode_id, entry.customer_id, entry.kind, entry.state, entry.severity) == (
        episode_id, "CUST_00005", "SENSOR_FAULT", "firing", "warning"
    )
    assert entry.payload["episode_id"] == episode_id


def test_follower_starts_after_the_newest_row_unless_asked_from_the_start(
    conn, database_url
) -> None:
    old = insert_episode(conn, "CUST_00001")
    with psycopg.connect(database_url, autocommit=True) as own:
        assert ops.OutboxFollower(own).poll() == []
        new = insert_episode(conn, "CUST_00002")
        assert [e.episode_id for e in ops.OutboxFollower(own, after=0).poll()] == [old, new]


def test_follower_sees_a_lower_outbox_id_that_commits_after_a_higher_one(
    conn, database_url
) -> None:
    """Ids are handed out at INSERT: a slow transaction commits id 1 after id 2 was read."""
    slow_episode = insert_episode(conn, "CUST_00001", notify=False)
    fast_episode = insert_episode(conn, "CUST_00002", notify=False)
    with (
        psycopg.connect(database_url, autocommit=True) as own,
        psycopg.connect(database_url) as slow,
    ):
        follower = ops.OutboxFollower(own)
        episodes.enqueue(slow, [slow_episode], "firing")  # takes the lower id, not committed
        episodes.enqueue(conn, [fast_episode], "firing")  # autocommit: visible at once
        assert [e.episode_id for e in follower.poll()] == [fast_episode]
        assert follower.gaps  # the lower id is being waited for
        slow.commit()
        assert [e.episode_id for e in follower.poll()] == [slow_episode]
        assert follower.poll() == [] and not follower.gaps


def test_follow_stops_when_asked(conn, database_url) -> None:
    insert_episode(conn, "CUST_00001")
    insert_episode(conn, "CUST_00002")
    seen = []
    with psycopg.connect(database_url, autocommit=True) as own:
        follower = ops.OutboxFollower(own, after=0)
        for entry in follower.follow(lambda: len(seen) >= 2, wait_s=0.1):
            seen.append(entry.customer_id)
    assert seen == ["CUST_00001", "CUST_00002"]
