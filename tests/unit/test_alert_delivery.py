"""The delivery thread's pure decisions: what goes out now, when to retry, to whom."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from heartbeat_platform.alerting.delivery import (
    BACKOFF_S,
    AlertingConfig,
    OutboxRow,
    backoff,
    sendable,
    targets,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def row(outbox_id: int, customer: str, state: str = "firing", due_in_s: float = 0,
        delivered_to: tuple[str, ...] = ()) -> OutboxRow:
    return OutboxRow(
        outbox_id=outbox_id, episode_id=100 + outbox_id, customer_id=customer, state=state,
        payload={}, delivered_to=delivered_to, attempts=0,
        next_attempt_at=NOW + timedelta(seconds=due_in_s), created_at=NOW,
    )


def test_only_the_oldest_pending_row_of_a_customer_goes_out() -> None:
    """Per customer in order: resolved never overtakes its firing."""
    rows = [row(3, "B"), row(1, "A"), row(2, "A", "resolved"), row(4, "C")]
    assert [r.outbox_id for r in sendable(rows, NOW)] == [1, 3, 4]


def test_a_row_waiting_for_its_retry_holds_back_its_customer_only() -> None:
    rows = [row(1, "A", due_in_s=30), row(2, "A", "resolved"), row(3, "B")]
    assert [r.outbox_id for r in sendable(rows, NOW)] == [3]


def test_backoff_grows_then_stays_at_the_last_step() -> None:
    assert backoff(0) == 0
    assert [backoff(n) for n in range(1, len(BACKOFF_S) + 1)] == list(BACKOFF_S)
    assert backoff(50) == BACKOFF_S[-1]


def test_escalations_go_to_the_escalation_urls_others_to_the_webhooks() -> None:
    config = AlertingConfig(webhook_urls=("http://a", "http://b"), escalation_urls=("http://e",))
    assert targets(row(1, "A"), config) == ("http://a", "http://b")
    assert targets(row(1, "A", "escalated"), config) == ("http://e",)
    plain = AlertingConfig(webhook_urls=("http://a",))
    assert targets(row(1, "A", "escalated"), plain) == ("http://a",)


def test_a_url_that_took_the_row_is_not_sent_it_again() -> None:
    config = AlertingConfig(webhook_urls=("http://a", "http://b"))
    assert targets(row(1, "A", delivered_to=("http://a",)), config) == ("http://b",)
