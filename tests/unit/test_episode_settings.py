"""HEARTBEAT_ALERT_MIN_READINGS, HEARTBEAT_ALERT_DELAY_S and the storm settings as the
settings read them (config.py) into the episode rules and the storm policy; HEARTBEAT_ALERTING
off as the consumer's configuration without alerting."""

from __future__ import annotations

from datetime import timedelta

import pytest

from heartbeat_platform import readiness
from heartbeat_platform.alerting.storm import StormPolicy
from heartbeat_platform.config import delay_by_kind, load_settings, min_readings_by_kind
from heartbeat_platform.domain.episodes import DEFAULT_DELAY, EpisodeKind
from heartbeat_platform.local.services import Endpoints

TACHY, BRADY, FAULT, NO_SIGNAL = (
    EpisodeKind.TACHYCARDIA,
    EpisodeKind.BRADYCARDIA,
    EpisodeKind.SENSOR_FAULT,
    EpisodeKind.NO_SIGNAL,
)
S = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("TACHYCARDIA=5", {TACHY: 5 * S}),
        (" sensor_fault = 60 , BRADYCARDIA=12.5", {FAULT: 60 * S, BRADY: 12.5 * S}),
        ("0", dict.fromkeys(EpisodeKind, 0 * S)),
        ("SENSOR_FAULT=60,15", {**dict.fromkeys(EpisodeKind, 15 * S), FAULT: 60 * S}),
    ],
)
def test_delay_by_kind_reads_kind_equals_seconds_or_one_number_for_every_kind(
    text: str, expected: dict
) -> None:
    assert delay_by_kind(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TACHY=5", "is not KIND=S with KIND one of TACHYCARDIA"),
        ("TACHYCARDIA=soon", "needs a number S"),
        ("TACHYCARDIA=-1", "needs 0 <= S <= 86400"),
        ("nan", "needs 0 <= S <= 86400"),
    ],
)
def test_delay_by_kind_refuses_what_it_cannot_read_naming_the_variable(
    text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=f"HEARTBEAT_ALERT_DELAY_S: .*{message}"):
        delay_by_kind(text)


def test_min_readings_takes_one_number_for_every_kind_too() -> None:
    assert min_readings_by_kind("2") == dict.fromkeys(EpisodeKind, 2)
    assert min_readings_by_kind("SENSOR_FAULT=3,BRADYCARDIA=2") == {FAULT: 3, BRADY: 2}
    with pytest.raises(ValueError, match="HEARTBEAT_ALERT_MIN_READINGS: 'TACHYCARDIA=0'"):
        min_readings_by_kind("TACHYCARDIA=0")
    with pytest.raises(ValueError, match="is not KIND=N"):
        min_readings_by_kind("FAST=2")


def test_the_settings_build_the_rules_kinds_not_named_keep_the_default_delay() -> None:
    rules = load_settings(
        _env_file=None, heartbeat_alert_delay_s="TACHYCARDIA=15", heartbeat_alert_min_readings="2"
    ).alert_rules
    assert dict(rules.delay) == {**DEFAULT_DELAY, TACHY: 15 * S}
    assert dict(rules.min_readings) == dict.fromkeys(EpisodeKind, 2)


def test_a_bad_delay_setting_is_refused_when_the_settings_load() -> None:
    with pytest.raises(ValueError, match="HEARTBEAT_ALERT_DELAY_S"):
        load_settings(_env_file=None, heartbeat_alert_delay_s="TACHYCARDIA=later")


def test_the_settings_build_the_storm_policy_and_zero_turns_grouping_off() -> None:
    policy = load_settings(
        _env_file=None, heartbeat_alert_group_over=0, heartbeat_alert_group_window_s=30
    ).storm_policy
    assert policy == StormPolicy(group_over=0, window_s=30.0)
    assert not policy.enabled
    with pytest.raises(ValueError):
        load_settings(_env_file=None, heartbeat_alert_group_over=-1)


@pytest.mark.parametrize("value", ["off", "false", "0"])
def test_alerting_off_gives_the_consumer_no_alerting_at_all(value: str) -> None:
    endpoints = Endpoints("postgresql://x/y", "broker:9092")
    off = load_settings(_env_file=None, heartbeat_alerting=value)
    assert readiness.consumer_config(off, endpoints).alerting is None
    on = readiness.consumer_config(load_settings(_env_file=None), endpoints).alerting
    assert on is not None and on.rules == load_settings(_env_file=None).alert_rules
