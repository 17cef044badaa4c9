"""The log-reset / truncation / retention decision against scripted broker events.

Tansu never shows leader changes, truncation or retention; Apache Kafka does. Each row is
what the client and the broker report, and the action that must follow.
"""

from __future__ import annotations

import pytest

from heartbeat_platform.streaming.log_decisions import (
    AskBroker,
    Continue,
    LogWatch,
    NewLog,
    Observation,
    Resume,
    decide,
    topic_id_to_decide,
    truncation_point,
)

ID = "topic-id-A"


def seen(**fields) -> Observation:
    base = {"next_offset": 500, "stored_topic_id": ID, "topic_id": ID}
    base.update(fields)
    return Observation(**base)


CASES = [
    # (what happened, observation, action)
    ("steady state: the fetch watermark is past the stored offset",
     seen(fetched_end=900), Continue()),
    ("no fetch response yet", seen(), Continue()),
    ("leader change: a fetch watermark below the stored offset only asks the broker",
     seen(fetched_end=450), AskBroker()),
    ("leader change, confirmed: ListOffsets (monotonic, KIP-207) says the log is longer",
     seen(fetched_end=450, listed=(0, 900)), Resume(500)),
    ("a passing out-of-range error on a log that still holds the offset",
     seen(out_of_range=True, listed=(0, 900)), Resume(500)),
    ("out of range, broker not asked yet", seen(out_of_range=True), AskBroker()),
    ("retention deleted unread messages: resume at the log start, count the loss",
     seen(out_of_range=True, listed=(700, 900)), Resume(700, lost=200)),
    ("log end below the stored offset under the same topic id, no divergence point (a "
     "position without a leader epoch): a new log from the end",
     seen(out_of_range=True, listed=(0, 300)), NewLog(300, 300, "truncated")),
    ("truncation seen through the fetch watermark, confirmed by the broker",
     seen(fetched_end=300, listed=(0, 300)), NewLog(300, 300, "truncated")),
    ("topic created again (new id), new log already longer than the stored offset",
     seen(topic_id="topic-id-B", fetched_end=5_000), NewLog(0, 0, "id")),
    ("topic created again (new id), new log shorter",
     seen(topic_id="topic-id-B", out_of_range=True), NewLog(0, 0, "id")),
    ("broker without topic ids, log end below the stored offset: read the new log whole",
     seen(stored_topic_id=None, topic_id=None, out_of_range=True, listed=(0, 300)),
     NewLog(0, 0, "no topic id")),
    ("progress stored without an id, broker gives one: cannot call it a truncation",
     seen(stored_topic_id=None, out_of_range=True, listed=(40, 300)),
     NewLog(0, 40, "no topic id")),
    ("never consumed, out of range before the first batch: start at the log start, and "
     "what retention deleted before it was never stored",
     seen(next_offset=None, stored_topic_id=None, out_of_range=True, listed=(1_000, 2_000)),
     Resume(1_000, lost=1_000)),
    ("first read of a partition the group never read: ask where its log starts",
     seen(next_offset=None, first_read=True), AskBroker()),
    ("first read, retention deleted the log's first messages before any consumer",
     seen(next_offset=None, first_read=True, listed=(700, 900)), Resume(700, lost=700)),
    ("first read of a whole log: nothing lost",
     seen(next_offset=None, first_read=True, listed=(0, 900)), Resume(0)),
    ("never consumed, out of range, broker not asked yet",
     seen(next_offset=None, out_of_range=True), AskBroker()),
    ("never consumed, another topic id: nothing stored to move",
     seen(next_offset=None, topic_id="topic-id-B"), Continue()),
    # An unclean leader election: the client's leader-epoch validation (KIP-320) found the
    # divergence point T=300; the new leader appends from T, so its log end says nothing
    # about where its messages start.
    ("unclean election, the new leader took no write yet: a new log from T",
     seen(out_of_range=True, truncated_at=300, listed=(0, 300)), NewLog(300, 300, "T")),
    ("unclean election, the new leader's log already past the stored offset: a new log "
     "from T, not Resume(stored), which would skip [T, stored)",
     seen(out_of_range=True, truncated_at=300, listed=(0, 900)), NewLog(300, 300, "T")),
    ("unclean election, the new log shorter than stored but past T: a new log from T, not "
     "from its end, which would skip [T, end)",
     seen(out_of_range=True, truncated_at=300, listed=(0, 450)), NewLog(300, 300, "T")),
    ("unclean election seen before the broker is asked: T is enough",
     seen(out_of_range=True, truncated_at=300), NewLog(300, 300, "T")),
    ("truncated past the stored offset: nothing stored was lost; the new epoch owns T on",
     seen(out_of_range=True, truncated_at=650, listed=(0, 900)), NewLog(650, 500, "T")),
]


@pytest.mark.parametrize(("what", "observation", "expected"), CASES, ids=[c[0] for c in CASES])
def test_broker_event_gives_the_right_action(what, observation, expected) -> None:
    action = decide(observation)
    assert type(action) is type(expected), what
    if isinstance(expected, NewLog):
        assert (action.start_offset, action.read_from) == (
            expected.start_offset, expected.read_from
        )
    else:
        assert action == expected


def test_a_new_log_says_why() -> None:
    truncated = decide(seen(out_of_range=True, listed=(0, 300)))
    assert "truncated" in truncated.reason and "300" in truncated.reason
    recreated = decide(seen(topic_id="topic-id-B"))
    assert "topic-id-B" in recreated.reason and ID in recreated.reason


def test_a_truncation_counts_what_was_stored_and_what_was_lost_unread() -> None:
    # stored up to 500, the old leader's watermark was 560, the log diverged at 300
    action = decide(seen(out_of_range=True, truncated_at=300, seen_end=560))
    assert isinstance(action, NewLog)
    assert (action.stored_lost, action.unread_lost) == (200, 60)
    assert "300..499" in action.reason and "500..559" in action.reason
    # caught up: nothing unread; diverged past what was stored: nothing stored lost
    assert decide(seen(truncated_at=300, seen_end=500)).unread_lost == 0
    past = decide(seen(truncated_at=650, seen_end=700))
    assert (past.stored_lost, past.unread_lost) == (0, 50)


LIBRDKAFKA_TRUNCATION = (
    "Partition log truncation detected at offset 500 (leader epoch 0): broker end offset is "
    "300 (offset leader epoch 0). Reset to INVALID.: Local: Partition log truncation "
    "detected (broker 2)"
)


def test_the_divergence_point_is_read_from_librdkafkas_reset_error() -> None:
    assert truncation_point(LIBRDKAFKA_TRUNCATION) == 300
    assert truncation_point("fetch failed due to requested offset not available on the "
                            "broker: Broker: Offset out of range (broker 1)") is None
    watch = LogWatch()
    watch.assigned(0, 480)
    watch.reset(0, LIBRDKAFKA_TRUNCATION)
    observed = watch.observe(0, 500, ID, 520)
    assert (observed.out_of_range, observed.truncated_at, observed.seen_end) == (True, 300, 520)
    watch.decided(0, 520)
    assert watch.observe(0, 300, ID, 520).truncated_at is None
    watch.reset(0, "Offset out of range")
    assert watch.observe(0, 300, ID, 520).truncated_at is None


def test_log_watch_ignores_the_watermark_cached_before_any_fetch() -> None:
    watch = LogWatch()
    watch.assigned(0, 120)  # cached at assignment, e.g. an under-reported broker answer
    assert watch.observe(0, 500, ID, 120).fetched_end is None
    assert decide(watch.observe(0, 500, ID, 120)) == Continue()
    assert watch.observe(0, 500, ID, 450).fetched_end == 450  # a fetch response since
    assert decide(watch.observe(0, 500, ID, 450)) == AskBroker()
    watch.decided(0, 450)  # e.g. the broker said the log still holds 500
    assert decide(watch.observe(0, 500, ID, 450)) == Continue()


def test_log_watch_keeps_an_out_of_range_report_until_decided() -> None:
    watch = LogWatch()
    watch.assigned(1, -1001)
    watch.out_of_range({1})
    assert watch.observe(1, None, ID, -1001).out_of_range
    watch.retry(1)  # the broker did not answer
    assert watch.observe(1, None, ID, -1001).out_of_range
    watch.decided(1, 900)
    assert not watch.observe(1, None, ID, 900).out_of_range
    watch.out_of_range({1})
    watch.forget(1)  # revoked
    assert not watch.observe(1, None, ID, 900).out_of_range


class ScriptedBroker:
    """Answers to the topic-id request, in order; records the waits between them."""

    def __init__(self, *answers: str | None):
        self.answers, self.asked, self.waited = list(answers), 0, []

    def ask(self) -> str | None:
        self.asked += 1
        return self.answers.pop(0)

    def wait(self, seconds: float) -> bool:
        self.waited.append(seconds)
        return False


def test_unanswered_topic_id_is_asked_again_when_progress_was_stored_under_one():
    broker = ScriptedBroker(None, None, "topic-id-B")
    assert topic_id_to_decide(broker.ask, True, [1, 2, 4], broker.wait) == "topic-id-B"
    assert (broker.asked, broker.waited) == (3, [1, 2])
    # ... and then decides the new log the id shows, which no log-end check would.
    assert isinstance(decide(seen(topic_id="topic-id-B")), NewLog)


def test_topic_id_is_asked_once_when_no_progress_was_stored_under_an_id():
    broker = ScriptedBroker(None, "topic-id-B")
    assert topic_id_to_decide(broker.ask, False, [1, 2, 4], broker.wait) is None
    assert broker.asked == 1


def test_topic_id_retries_are_bounded_and_stop_on_request():
    broker = ScriptedBroker(None, None, None, None)
    assert topic_id_to_decide(broker.ask, True, [1, 2, 4], broker.wait) is None
    assert (broker.asked, broker.waited) == (4, [1, 2, 4])
    stopping = ScriptedBroker(None, "never asked")
    assert topic_id_to_decide(stopping.ask, True, [1], lambda s: True) is None
    assert stopping.asked == 1
