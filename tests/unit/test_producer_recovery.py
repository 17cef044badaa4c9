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
    producer_identity,
    recreate_reason,
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
