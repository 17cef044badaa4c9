"""The producer's decisions without a broker: how a delivery report counts, what the
statistics say about the producer id, and when the client must be re-created."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import KafkaError

from heartbeat_platform.streaming.producer import (
    DELIVERED,
    FAILED,
    LOST_STATE_EPOCH_BUMPS,
    UNCERTAIN,
    delivery_outcome,
    epoch_bumps,
    maybe_sent,
    producer_identity,
    recreate_reason,
    transmitted,
)


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (None, DELIVERED),
        # purged before it was put in a request: never sent
        (KafkaError._PURGE_QUEUE, FAILED),
        # refused by the broker as a whole, or never routable
        (KafkaError.MSG_SIZE_TOO_LARGE, FAILED),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, FAILED),
        (KafkaError._UNKNOWN_TOPIC, FAILED),
        # sent, no acknowledgement: may be in the topic
        (KafkaError._PURGE_INFLIGHT, UNCERTAIN),
        (KafkaError._MSG_TIMED_OUT, UNCERTAIN),
        (KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, UNCERTAIN),
        (KafkaError.UNKNOWN_PRODUCER_ID, UNCERTAIN),  # possibly persisted when fatal
        (KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, UNCERTAIN),
        (KafkaError._TRANSPORT, UNCERTAIN),
        (KafkaError.UNKNOWN, UNCERTAIN),  # not known to be unwritten: never "failed"
    ],
)
def test_a_delivery_report_counts_failed_only_when_the_message_was_never_written(
    code: int | None, outcome: str
) -> None:
    assert delivery_outcome(code) == outcome


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (None, DELIVERED),
        # queued again for a retry after a send whose answer was lost: may be written
        (KafkaError._PURGE_QUEUE, UNCERTAIN),
        (KafkaError.MSG_SIZE_TOO_LARGE, UNCERTAIN),
        (KafkaError._PURGE_INFLIGHT, UNCERTAIN),
    ],
)
def test_after_connection_trouble_a_queued_message_may_be_a_retry(
    code: int | None, outcome: str
) -> None:
    assert delivery_outcome(code, trouble_since_sent=True) == outcome


def test_a_purged_queued_message_that_may_have_been_sent_is_uncertain() -> None:
    """A retry after a retriable broker answer (REQUEST_TIMED_OUT) reaches no callback;
    the statistics say it may have been in a request."""
    assert delivery_outcome(KafkaError._PURGE_QUEUE, maybe_sent=True) == UNCERTAIN
    assert delivery_outcome(KafkaError._PURGE_QUEUE, maybe_sent=False) == FAILED
    # a broker's refusal of the message itself stays a refusal
    assert delivery_outcome(KafkaError.MSG_SIZE_TOO_LARGE, maybe_sent=True) == FAILED


def test_txmsgs_per_partition_come_from_the_statistics() -> None:
    stats_json = json.dumps({"topics": {
        "t": {"partitions": {"-1": {"txmsgs": 0}, "0": {"txmsgs": 120}, "2": {"txmsgs": 7}}},
        "other": {"partitions": {"0": {"txmsgs": 999}}}}})
    assert transmitted(stats_json, "t") == {0: 120, 2: 7}
    assert transmitted(stats_json, "missing") == {}
    assert transmitted(json.dumps({"name": "p"}), "t") == {}


@pytest.mark.parametrize(
    ("partition", "before", "sent", "expected"),
    [
        (0, 119, {0: 120}, True),  # the 120th message of partition 0: it was transmitted
        (0, 120, {0: 120}, False),  # past every transmission: never in a request
        (1, 0, {0: 120}, False),  # nothing ever transmitted to partition 1
        (0, 500, None, True),  # no statistics after the purge: it may have been
        (-1, 0, None, False),  # never given a partition
        (None, 0, None, False),
    ],
)
def test_a_message_may_have_been_sent_only_within_the_transmissions_of_its_partition(
    partition: int | None, before: int, sent: dict[int, int] | None, expected: bool
) -> None:
    assert maybe_sent(partition, before, sent) is expected


def stats(producer_id: int, epoch: int) -> str:
    """librdkafka's statistics JSON, reduced to what the producer reads."""
    return json.dumps({"name": "rdkafka#producer-1", "msg_cnt": 12,
                       "eos": {"idemp_state": "Assigned", "producer_id": producer_id,
                               "producer_epoch": epoch, "epoch_cnt": 1}})


def test_the_producer_id_and_epoch_come_from_the_eos_statistics() -> None:
    assert producer_identity(stats(7, 3)) == (7, 3)
    assert producer_identity(stats(-1, -1)) is None  # no producer id yet
    assert producer_identity(json.dumps({"name": "rdkafka#producer-1"})) is None


@pytest.mark.parametrize(
    ("before", "after", "bumps"),
    [
        ((1, 0), (1, 30), 30),  # the loop against a broker that lost its state
        ((1, 4), (1, 4), 0),
        (None, (1, 30), 0),  # no baseline (a delivery report came in between)
        ((1, 4), None, 0),
        ((1, 40), (2, 0), 0),  # a new producer id starts its epochs afresh
        ((1, 40), (1, 3), 0),  # never negative
    ],
)
def test_epoch_bumps_count_only_for_the_same_producer_id(before, after, bumps) -> None:
    assert epoch_bumps(before, after) == bumps


def test_a_fatal_error_recreates_the_client() -> None:
    reason = recreate_reason("Broker: Out of order sequence number", 0, 0)
    assert reason is not None and "fatal" in reason


def test_repeated_epoch_bumps_without_a_report_recreate_the_client() -> None:
    reason = recreate_reason(None, LOST_STATE_EPOCH_BUMPS, waiting=500)
    assert reason is not None and "producer id" in reason


@pytest.mark.parametrize(
    ("bumps", "waiting"),
    [
        (0, 500),  # slow acknowledgements, a broker down or fenced: librdkafka waits
        (1, 500),  # one bump (an expired producer id, a timed-out message) is routine
        (LOST_STATE_EPOCH_BUMPS - 1, 500),
        (LOST_STATE_EPOCH_BUMPS, 0),  # nothing waits: nothing to rescue
    ],
)
def test_without_evidence_of_lost_producer_state_the_client_is_kept(bumps, waiting) -> None:
    assert recreate_reason(None, bumps, waiting) is None
