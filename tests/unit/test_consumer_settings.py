"""The consumer's client settings for the classic and the KIP-848 group protocols."""

from __future__ import annotations

import pytest

from heartbeat_platform.streaming.consumer_config import (
    ConsumerConfig,
    assigns_incrementally,
    client_settings,
)
from heartbeat_platform.streaming.kafka_config import KafkaConfigError


def config(**fields) -> ConsumerConfig:
    return ConsumerConfig("broker:9092", "postgresql://x/y", "t", "g", **fields)


def test_classic_protocol_sets_session_and_assignor() -> None:
    settings = client_settings(config())
    assert settings["session.timeout.ms"] == 6_000
    assert settings["partition.assignment.strategy"] == "cooperative-sticky"
    assert "group.protocol" not in settings
    assert assigns_incrementally(settings)
    eager = client_settings(config(assignment_strategy="range"))
    assert not assigns_incrementally(eager)


def test_kip_848_leaves_out_what_the_client_refuses() -> None:
    settings = client_settings(config(group_protocol="consumer"))
    assert settings["group.protocol"] == "consumer"
    for refused in ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"):
        assert refused not in settings
    assert assigns_incrementally(settings)


def test_overrides_come_last_and_decide_the_assignment_kind() -> None:
    settings = client_settings(config(kafka_overrides={"security.protocol": "SSL",
                                                       "partition.assignment.strategy": "range"}))
    assert settings["security.protocol"] == "SSL"
    assert not assigns_incrementally(settings)


def test_the_group_protocol_comes_from_the_settings_not_the_overrides() -> None:
    """The session and assignor keys are chosen by `group_protocol`: an override of the
    protocol would make a consumer that KIP-848 refuses."""
    with pytest.raises(KafkaConfigError, match="group.protocol=consumer is refused"):
        client_settings(config(kafka_overrides={"group.protocol": "consumer"}))


def test_memory_limits_are_explicit() -> None:
    settings = client_settings(config(fetch_max_bytes=8 << 20, queued_max_kbytes=4096))
    assert settings["fetch.max.bytes"] == 8 << 20
    assert settings["receive.message.max.bytes"] > settings["fetch.max.bytes"]
    assert settings["queued.max.messages.kbytes"] == 4096


def test_an_unknown_group_protocol_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="classic"):
        client_settings(config(group_protocol="kip848"))
