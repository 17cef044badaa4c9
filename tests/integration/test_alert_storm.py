"""Storm grouping through the real consumer: 1,000 customers firing within 5 s reach a
webhook receiver in at most 20 requests naming all 1,000 episodes, each once; the storm's
end brings single notifications back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from tests.integration.test_alert_episodes import send, stop, wait_for
from tests.integration.test_alert_receivers import Recorder, consumer, prepared
from tests.support.webhook_check import readme_verifies

__all__ = ["prepared"]  # the fixture, shared

CUSTOMERS = 1_000


def episodes_in(body: bytes) -> list[tuple[int, str]]:
    """(episode id, state) of each episode a POST names: one, or a group's list."""
    sent = orjson.loads(body)
    return [(e["episode_id"], e["state"]) for e in sent.get("episodes", [sent])]


def test_a_burst_of_1000_customers_firing_reaches_a_webhook_in_at_most_20_requests(
    prepared, db
) -> None:
    recorder = Recorder()
    secret = "storm-5ecret"
    proc = consumer(prepared, HEARTBEAT_ALERT_WEBHOOK_URL=f"{recorder.base}/hook",
                    HEARTBEAT_ALERT_WEBHOOK_SECRET=secret)
    try:
        start_at = datetime.now(UTC) - timedelta(minutes=5)
        burst = [(f"CUST_{n:05d}", 190, start_at + timedelta(milliseconds=5 * n))
                 for n in range(1, CUSTOMERS + 1)]  # 1,000 firings within 5 s
        send(prepared, burst)
        wait_for(lambda: db.execute(
            "SELECT count(*) FROM alert_outbox WHERE state = 'firing' AND done_at IS NOT NULL"
        ).fetchone()[0] == CUSTOMERS, timeout=120, what="every firing delivered")
        burst_posts = len(recorder.posts)
        (fired,) = db.execute("SELECT array_agg(episode_id ORDER BY episode_id) "
                              "FROM alert_episodes").fetchone()
    finally:
        stop(proc)
        recorder.close()
    named = [episode for _, _, body in recorder.posts for episode in episodes_in(body)]
    assert burst_posts <= 20, burst_posts
    assert sorted(e for e, state in named if state == "firing") == fired, (
        "every episode named once")
    assert len(fired) == CUSTOMERS
    grouped = [body for _, _, body in recorder.posts if b'"episodes"' in body]
    assert grouped, "the storm was grouped"
    for _, headers, body in recorder.posts:
        assert readme_verifies(secret, headers, body)  # a group is signed like one
        assert headers["Idempotency-Key"]


def test_a_refused_group_is_sent_again_whole_and_its_rows_wait_for_it(prepared, db) -> None:
    """The receiver answers 503 through the burst: nothing is done while it refuses; once
    it takes requests again every episode reaches it once, the group as one request."""
    recorder = Recorder()
    recorder.failing.set()
    proc = consumer(prepared, HEARTBEAT_ALERT_WEBHOOK_URL=f"{recorder.base}/hook")
    try:
        start_at = datetime.now(UTC) - timedelta(minutes=5)
        send(prepared, [(f"CUST_{n:05d}", 190, start_at + timedelta(milliseconds=5 * n))
                        for n in range(1, 201)])
        wait_for(lambda: recorder.refused >= 3, what="refused requests")
        (done,) = db.execute(
            "SELECT count(*) FROM alert_outbox WHERE done_at IS NOT NULL").fetchone()
        assert done == 0, "a refused notification is not done"
        recorder.failing.clear()
        wait_for(lambda: db.execute(
            "SELECT count(*) FROM alert_outbox WHERE state = 'firing' AND done_at IS NOT NULL"
        ).fetchone()[0] == 200, timeout=120, what="every firing delivered")
    finally:
        stop(proc)
        recorder.close()
    named = sorted(e for _, _, body in recorder.posts for e, _ in episodes_in(body))
    (fired,) = db.execute("SELECT array_agg(episode_id ORDER BY episode_id) "
                          "FROM alert_episodes").fetchone()
    assert named == fired, "each episode named once, none lost"
    assert any(b'"episodes"' in body for _, _, body in recorder.posts)


def test_a_burst_of_escalations_reaches_the_escalation_webhook_grouped_each_once(
    prepared, db
) -> None:
    """300 episodes fire together and nobody acknowledges them: they escalate together,
    and the escalation receiver gets them in a few grouped requests, not 300 at once."""
    recorder = Recorder()
    proc = consumer(prepared, HEARTBEAT_ALERT_WEBHOOK_URL=f"{recorder.base}/hook",
                    HEARTBEAT_ALERT_ESCALATION_URL=f"{recorder.base}/escalate",
                    HEARTBEAT_ESCALATE_AFTER_S="2")
    try:
        start_at = datetime.now(UTC) - timedelta(minutes=5)
        send(prepared, [(f"CUST_{n:05d}", 190, start_at + timedelta(milliseconds=5 * n))
                        for n in range(1, 301)])
        wait_for(lambda: db.execute(
            "SELECT count(*) FROM alert_outbox WHERE state = 'escalated' AND done_at IS NOT NULL"
        ).fetchone()[0] == 300, timeout=120, what="every escalation delivered")
        (fired,) = db.execute("SELECT array_agg(episode_id ORDER BY episode_id) "
                              "FROM alert_episodes").fetchone()
    finally:
        stop(proc)
        recorder.close()
    escalations = [body for path, _, body in recorder.posts if path == "/escalate"]
    named = [episode for body in escalations for episode in episodes_in(body)]
    assert sorted(named) == [(e, "escalated") for e in fired], "each escalation named once"
    assert len(fired) == 300
    assert len(escalations) <= 20, len(escalations)
