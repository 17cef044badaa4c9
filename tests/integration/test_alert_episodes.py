"""Alert episodes end to end: readings through the real consumer to a webhook receiver.

The receiver is a local HTTP server in the test; the consumer is `heartbeat-platform
consume` in a subprocess, killed with SIGKILL mid-stream, while the receiver answers 503.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from heartbeat_platform import readiness
from heartbeat_platform.storage import episodes
from heartbeat_platform.storage.migrations import migrate


class Receiver:
    """A webhook receiver that records every POST and can answer 503 for a while."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []
        self.refused = 0
        self.failing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failing.is_set():
                    receiver.refused += 1
                    self.send_response(503)
                else:
                    receiver.received.append(
                        (self.headers["Idempotency-Key"], json.loads(body))
                    )
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keys(self) -> set[str]:
        return {key for key, _ in self.received}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def consumer_process(settings, receiver: Receiver, **env: str) -> subprocess.Popen:
    variables = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "KAFKA_TOPIC": settings.kafka_topic,
        "KAFKA_GROUP_ID": settings.kafka_group_id,
        "HEARTBEAT_ALERT_WEBHOOK_URL": receiver.url,
        # These scripts are about episodes that fire at their first reading, as before the
        # alarm-condition delay; the delay has its test (test_alert_delay.py).
        "HEARTBEAT_ALERT_DELAY_S": "0",
        **env,
    }
    path = Path(tempfile.mkstemp(prefix="consumer-", suffix=".log")[1])
    CONSUMER_LOGS.append(path)
    with path.open("w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "heartbeat_platform", "-v", "consume"],
            env=variables, stdout=subprocess.DEVNULL, stderr=log,
        )


CONSUMER_LOGS: list[Path] = []  # shown when a wait times out


def send(settings, readings: list[tuple[str, int, datetime]]) -> None:
    """Readings (customer, bpm, time) to the topic, keyed by customer, in this order."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for customer, bpm, when in readings:
        value = {"customer_id": customer, "heart_rate": bpm, "timestamp": when.isoformat()}
        producer.produce(settings.kafka_topic, key=customer, value=orjson.dumps(value))
    assert producer.flush(30) == 0


def script(start: datetime, **sequences: list[int]) -> list[tuple[str, int, datetime]]:
    """One reading a second per customer, customers interleaved."""
    rows = []
    for customer, bpms in sequences.items():
        rows += [(customer, bpm, start + timedelta(seconds=i)) for i, bpm in enumerate(bpms)]
    return sorted(rows, key=lambda row: (row[2], row[0]))


def wait_for(condition, timeout: float = 90.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = CONSUMER_LOGS[-1].read_text()[-3000:] if CONSUMER_LOGS else ""
            raise AssertionError(f"timed out waiting for {what}; consumer log:\n{tail}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


@pytest.fixture
def prepared(settings_factory, database_url):
    settings = settings_factory(database_url=database_url, heartbeat_consume_batch_size=50)
    readiness.prepare(settings)
    return settings


def test_each_stretch_is_one_episode_notified_firing_then_resolved_across_a_kill_and_503s(
    prepared, receiver, db
) -> None:
    """Through SIGKILL of the consumer and a receiver answering 503: every stretch of
    trouble is one episode, notified `firing` then `resolved`, each transition delivered
    (with its own Idempotency-Key), and nothing for customers that stayed NORMAL."""
    start = datetime.now(UTC) - timedelta(minutes=5)
    normal = [70] * 30
    part_one = script(
        start,
        CUST_00001=[72, 75, 190, 200, 74],  # tachycardia, still firing (1 NORMAL so far)
        CUST_00002=[60, 30, 35, 61, 62, 63],  # bradycardia: fires and resolves
        CUST_00003=normal,  # stays NORMAL
        CUST_00004=[80, 0, 80],  # sensor fault, still firing
    )
    receiver.failing.set()  # the receiver is down from the start
    consumer = consumer_process(prepared, receiver)
    send(prepared, part_one)
    wait_for(lambda: db.execute("SELECT count(*) FROM alert_outbox").fetchone()[0] >= 4,
             what="the first transitions in the outbox")
    wait_for(lambda: receiver.refused > 0, what="a delivery attempt")
    consumer.send_signal(signal.SIGKILL)  # mid-stream: nothing delivered yet
    consumer.wait(30)
    assert receiver.received == []
    assert receiver.refused > 0

    later = start + timedelta(seconds=10)
    send(prepared, script(
        later,
        CUST_00001=[71, 72, 73],  # resolves the tachycardia
        CUST_00002=[30, 70, 70, 70],  # a second stretch: a second episode
        CUST_00003=normal,
        CUST_00004=[75, 76],  # with the earlier 80: three NORMAL -> resolved
    ))
    consumer = consumer_process(prepared, receiver)
    try:
        time.sleep(2)
        receiver.failing.clear()  # the receiver comes back
        wait_for(lambda: db.execute(
            "SELECT count(*) FROM alert_outbox WHERE done_at IS NULL"
        ).fetchone()[0] == 0 and db.execute(
            "SELECT count(*) FROM alert_episodes WHERE state <> 'resolved'"
        ).fetchone()[0] == 0, what="every episode resolved and delivered")
    finally:
        stop(consumer)

    episodes = db.execute(
        "SELECT episode_id, customer_id, kind, worst_heart_rate, readings FROM alert_episodes "
        "ORDER BY customer_id, episode_id"
    ).fetchall()
    assert [(c, k, w, n) for _, c, k, w, n in episodes] == [
        ("CUST_00001", "TACHYCARDIA", 200, 2),
        ("CUST_00002", "BRADYCARDIA", 30, 2),
        ("CUST_00002", "BRADYCARDIA", 30, 1),
        ("CUST_00004", "SENSOR_FAULT", 0, 1),
    ]
    expected = {f"{e[0]}:{state}" for e in episodes for state in ("firing", "resolved")}
    assert receiver.keys() == expected
    customers = {payload["customer_id"] for _, payload in receiver.received}
    assert "CUST_00003" not in customers
    for episode_id, *_ in episodes:  # per customer and episode: firing before resolved
        states = [p["state"] for k, p in receiver.received if p["episode_id"] == episode_id]
        assert states.index("firing") < states.index("resolved")
    resolved = [p for _, p in receiver.received if p["state"] == "resolved"]
    assert all(p["resolved_at"] is not None for p in resolved)


def test_a_replay_opens_no_episode_and_notifies_nothing(prepared, receiver, db) -> None:
    """Progress deleted and every message read again: no episode, no outbox row added."""
    start = datetime.now(UTC) - timedelta(minutes=5)
    send(prepared, script(start, CUST_00010=[72, 190, 70, 70, 70], CUST_00011=[30, 31, 70]))
    for _ in range(2):
        consumer = consumer_process(prepared, receiver, HEARTBEAT_CONSUME_BATCH_SIZE="2")
        try:
            wait_for(lambda: db.execute(
                "SELECT coalesce(sum(next_offset), 0) FROM consumer_progress"
            ).fetchone()[0] == 8, what="every message stored")
            wait_for(lambda: db.execute(
                "SELECT count(*) FROM alert_outbox WHERE done_at IS NULL"
            ).fetchone()[0] == 0, what="delivery")
        finally:
            stop(consumer)
        counts = db.execute(
            "SELECT (SELECT count(*) FROM alert_episodes), (SELECT count(*) FROM alert_outbox)"
        ).fetchone()
        assert counts == (2, 3)  # both fire; CUST_00011 is still firing (1 NORMAL)
        db.execute("DELETE FROM consumer_progress")
    assert len(receiver.received) == 3


def test_an_unacknowledged_episode_escalates_once_an_acknowledged_one_never(
    prepared, receiver, db
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    send(prepared, script(start, CUST_00020=[190], CUST_00021=[191]))
    consumer = consumer_process(prepared, receiver, HEARTBEAT_ESCALATE_AFTER_S="3")
    try:
        wait_for(lambda: len(receiver.received) >= 2, what="both firing notifications")
        db.execute(
            "UPDATE alert_episodes SET acknowledged_at = now(), acknowledged_by = 'nurse' "
            "WHERE customer_id = 'CUST_00021'"
        )
        wait_for(lambda: any(p["state"] == "escalated" for _, p in receiver.received),
                 what="an escalation")
        time.sleep(6)  # more escalation rounds: still one escalation
    finally:
        stop(consumer)
    escalated = [p["customer_id"] for _, p in receiver.received if p["state"] == "escalated"]
    assert escalated == ["CUST_00020"]


def test_a_notification_refused_past_the_give_up_time_is_given_up_recorded_and_not_sent_again(
    prepared, receiver, db
) -> None:
    """The receiver answers 503 beyond HEARTBEAT_ALERT_GIVE_UP_S: the firing notification is
    given up (time and last error recorded, logged), never sent again once the receiver is
    back, and the customer's later transition is not held behind it: it is done, and not
    sent to a receiver that never heard the episode fire (no resolution out of nowhere)."""
    receiver.failing.set()
    start = datetime.now(UTC) - timedelta(minutes=5)
    send(prepared, script(start, CUST_00040=[190]))
    consumer = consumer_process(prepared, receiver, HEARTBEAT_ALERT_GIVE_UP_S="3")
    try:
        wait_for(lambda: db.execute(
            "SELECT count(*) FROM alert_outbox WHERE gave_up_at IS NOT NULL"
        ).fetchone()[0] == 1, what="the firing notification given up")
        attempts, error, done = db.execute(
            "SELECT attempts, last_error, done_at FROM alert_outbox WHERE state = 'firing'"
        ).fetchone()
        assert attempts >= 2 and "HTTP 503" in error and done is None, (attempts, error)
        refused = receiver.refused
        receiver.failing.clear()
        send(prepared, script(start + timedelta(seconds=1), CUST_00040=[70, 70, 70]))
        wait_for(lambda: db.execute(
            "SELECT count(*) FROM alert_outbox WHERE state = 'resolved' AND done_at IS NOT NULL"
        ).fetchone()[0] == 1, what="the resolved notification done")
        time.sleep(3)  # more delivery rounds: the given-up row stays given up
    finally:
        stop(consumer)
    (told,) = db.execute(
        "SELECT delivered_to FROM alert_outbox WHERE state = 'resolved'").fetchone()
    assert told == [] and receiver.received == []
    assert receiver.refused == refused
    assert "gave up notifying CUST_00040" in CONSUMER_LOGS[-1].read_text()


def test_prune_deletes_only_episodes_resolved_before_the_cut_with_their_outbox(
    database_url, db
) -> None:
    """Retention: episodes resolved before the cut go, with their outbox rows, in chunks;
    newer and open ones stay."""
    migrate(database_url)
    now = datetime.now(UTC)
    for customer, state, resolved in [
        ("CUST_1", "resolved", now - timedelta(days=40)),
        ("CUST_2", "resolved", now - timedelta(days=40)),
        ("CUST_3", "resolved", now - timedelta(days=2)),
        ("CUST_4", "firing", None),
    ]:
        (episode_id,) = db.execute(
            "INSERT INTO alert_episodes (customer_id, kind, state, severity, opened_at, "
            "resolved_at, first_heart_rate, worst_heart_rate, readings, first_reading_at, "
            "last_reading_at, last_evaluated_at) VALUES (%s, 'TACHYCARDIA', %s, 'critical', "
            "%s, %s, 190, 190, 1, %s, %s, %s) RETURNING episode_id",
            (customer, state, now - timedelta(days=41), resolved, now, now, now),
        ).fetchone()
        episodes.enqueue(db, [episode_id], "firing")
    assert episodes.prune(db, now - timedelta(days=30), chunk=1) == 2
    left = db.execute(
        "SELECT e.customer_id, count(o.*) FROM alert_episodes e "
        "LEFT JOIN alert_outbox o USING (episode_id) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert left == [("CUST_3", 1), ("CUST_4", 1)]


def test_prune_notifications_deletes_only_delivered_ones_of_resolved_episodes_before_the_cut(
    database_url, db
) -> None:
    """The outbox is a delivery queue: a resolved episode's delivered or given-up
    notifications queued before the cut go, chunk by chunk in queue order; pending ones,
    those of an open episode and newer ones stay, and so do the episodes."""
    migrate(database_url)
    now = datetime.now(UTC)
    old, new = now - timedelta(hours=50), now - timedelta(hours=1)
    for customer, episode_state, queued, outcome in [
        ("CUST_1", "resolved", old, "done"),       # goes (firing and resolved)
        ("CUST_2", "resolved", old, "gave_up"),    # goes
        ("CUST_3", "resolved", old, "pending"),    # stays: not delivered yet
        ("CUST_4", "firing", old, "done"),         # stays: its episode is open
        ("CUST_5", "resolved", new, "done"),       # stays: after the cut
    ]:
        (episode_id,) = db.execute(
            "INSERT INTO alert_episodes (customer_id, kind, state, severity, opened_at, "
            "resolved_at, first_heart_rate, worst_heart_rate, readings, first_reading_at, "
            "last_reading_at, last_evaluated_at) VALUES (%s, 'TACHYCARDIA', %s, 'critical', "
            "%s, %s, 190, 190, 1, %s, %s, %s) RETURNING episode_id",
            (customer, episode_state, queued, queued if episode_state == "resolved" else None,
             queued, queued, queued),
        ).fetchone()
        states = ["firing", "resolved"] if episode_state == "resolved" else ["firing"]
        for state in states:
            episodes.enqueue(db, [episode_id], state)
        db.execute(
            "UPDATE alert_outbox SET created_at = %s, "
            "done_at = CASE WHEN %s = 'done' THEN %s END, "
            "gave_up_at = CASE WHEN %s = 'gave_up' THEN %s END WHERE episode_id = %s",
            (queued, outcome, queued, outcome, queued, episode_id),
        )
    assert episodes.prune_notifications(db, now - timedelta(hours=48), chunk=2) == 4
    left = db.execute(
        "SELECT customer_id, state FROM alert_outbox ORDER BY customer_id, state"
    ).fetchall()
    assert left == [("CUST_3", "firing"), ("CUST_3", "resolved"), ("CUST_4", "firing"),
                    ("CUST_5", "firing"), ("CUST_5", "resolved")]
    assert db.execute("SELECT count(*) FROM alert_episodes").fetchone() == (5,)
    assert episodes.prune_notifications(db, now - timedelta(hours=48), chunk=2) == 0


def test_overrides_and_no_signal_through_the_consumer(prepared, receiver, db) -> None:
    """An athlete's bound (BRADYCARDIA below 35) keeps 38 bpm out of episodes while storage
    still classifies it BRADYCARDIA; an open NO_SIGNAL episode is resolved by the next reading."""
    db.execute(
        "INSERT INTO alert_overrides (customer_id, kind, threshold, set_by) "
        "VALUES ('CUST_00030', 'BRADYCARDIA', 35, 'coach')"
    )
    silent_since = datetime.now(UTC) - timedelta(minutes=20)
    db.execute(
        "INSERT INTO customers (customer_id, last_reading_at) VALUES ('CUST_00031', %s)",
        (silent_since,),
    )
    with db.transaction():
        opened = episodes.open_no_signal(
            db, datetime.now(UTC), timedelta(minutes=10), timedelta(hours=24)
        )
    assert opened == ["CUST_00031"]

    start = datetime.now(UTC) - timedelta(minutes=5)
    send(prepared, script(start, CUST_00030=[38, 38, 30], CUST_00031=[72]))
    consumer = consumer_process(prepared, receiver)
    try:
        wait_for(lambda: db.execute(
            "SELECT count(*) FROM alert_outbox WHERE done_at IS NOT NULL"
        ).fetchone()[0] == 3, what="NO_SIGNAL firing and resolved, the bradycardia firing")
    finally:
        stop(consumer)
    rows = db.execute(
        "SELECT customer_id, kind, state, readings, worst_heart_rate FROM alert_episodes "
        "ORDER BY customer_id"
    ).fetchall()
    assert rows == [
        ("CUST_00030", "BRADYCARDIA", "firing", 1, 30),  # 38 bpm did not count
        ("CUST_00031", "NO_SIGNAL", "resolved", 0, 0),
    ]
    stored = db.execute(
        "SELECT count(*) FROM heartbeat_anomalies WHERE customer_id = 'CUST_00030'"
    ).fetchone()[0]
    assert stored == 3  # storage classification untouched: 38, 38 and 30 are BRADYCARDIA
    states = sorted((p["customer_id"], p["state"]) for _, p in receiver.received)
    assert states == [
        ("CUST_00030", "firing"), ("CUST_00031", "firing"), ("CUST_00031", "resolved"),
    ]
