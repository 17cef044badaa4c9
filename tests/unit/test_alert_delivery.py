"""The delivery thread's pure decisions: what goes out now, when to retry, to whom."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from heartbeat_platform.alerting.delivery import (
    BACKOFF_S,
    AlertingConfig,
    OutboxRow,
    backoff,
    failure,
    sendable,
    targets,
)
from heartbeat_platform.alerting.receivers import Receiver

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def row(outbox_id: int, customer: str, state: str = "firing", due_in_s: float = 0,
        delivered_to: tuple[str, ...] = (), told: tuple[str, ...] = ()) -> OutboxRow:
    return OutboxRow(
        outbox_id=outbox_id, episode_id=100 + outbox_id, customer_id=customer, state=state,
        payload=b"{}", delivered_to=delivered_to, attempts=0,
        next_attempt_at=NOW + timedelta(seconds=due_in_s), created_at=NOW, told=told,
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


A, B, E = (Receiver.of("webhook", f"https://{n}.example.com/") for n in "abe")
AM = Receiver.of("alertmanager", "http://127.0.0.1:9093")


def test_escalations_go_to_the_escalation_receivers_others_to_the_receivers() -> None:
    config = AlertingConfig(receivers=(A, B), escalation_receivers=(E,))
    assert targets(row(1, "A"), config) == (A, B)
    assert targets(row(1, "A", "acknowledged", told=(A.name, B.name)), config) == (A, B)
    assert targets(row(1, "A", "escalated"), config) == (E,)
    plain = AlertingConfig(receivers=(A,))
    assert targets(row(1, "A", "escalated", told=(A.name,)), plain) == (A,)


def test_later_transitions_reach_only_the_receivers_told_of_the_episode() -> None:
    """A receiver added after an episode fired (or down when it fired, until given up)
    hears nothing of its end or its escalation; one told of its escalation hears its end."""
    config = AlertingConfig(receivers=(A, B), escalation_receivers=(E,))
    for state in ("resolved", "acknowledged"):
        assert targets(row(1, "A", state, told=(A.name,)), config) == (A,)
        assert targets(row(1, "A", state, told=()), config) == ()
        assert targets(row(1, "A", state, told=(A.name, E.name)), config) == (A, E)
    plain = AlertingConfig(receivers=(A, B))
    assert targets(row(1, "A", "escalated", told=(B.name,)), plain) == (B,)
    assert targets(row(1, "A", "firing", told=()), plain) == (A, B), "firing opens"


def test_a_receiver_that_took_the_row_is_not_sent_it_again() -> None:
    config = AlertingConfig(receivers=(A, B))
    assert targets(row(1, "A", delivered_to=(A.name,)), config) == (B,)


def test_receivers_are_told_apart_by_name() -> None:
    with pytest.raises(ValueError, match="two different receivers"):
        AlertingConfig(receivers=(A, Receiver(A.name, "webhook", "https://other.example.com/")))
    assert AlertingConfig(receivers=(A, AM), escalation_receivers=(AM,)).alertmanagers == (AM,)


def test_a_failure_names_the_receiver_and_hides_its_url_and_secret() -> None:
    receiver = Receiver.of("pagerduty", "https://events.example.com/v2/enqueue?k=1", "rk-1234")
    text = failure(receiver, OSError(f"refused by {receiver.url} for key rk-1234"))
    assert text.startswith(receiver.name + ": ")
    assert "k=1" not in text and "rk-1234" not in text and "https://events.example.com/…" in text
    assert len(failure(receiver, RuntimeError("x" * 10_000))) == 300
