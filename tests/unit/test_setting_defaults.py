"""Each default is written once: on the field of the object a setting builds, which the
settings read. What default settings build equals what those objects are without them."""

from __future__ import annotations

import dataclasses
import importlib.util
from datetime import UTC, datetime, timedelta

import pytest

from heartbeat_platform import config, readiness
from heartbeat_platform.alerting.config import AlertingConfig
from heartbeat_platform.alerting.storm import StormPolicy
from heartbeat_platform.domain.episodes import Rules, silent_customers
from heartbeat_platform.domain.generator import HeartbeatGenerator
from heartbeat_platform.domain.retention import ColdTierPolicy, RetentionPolicy
from heartbeat_platform.local.services import Endpoints
from heartbeat_platform.streaming.consumer_config import ConsumerConfig

# setting -> the dataclass field whose default it takes
READ_FROM = {
    "kafka_group_protocol": (ConsumerConfig, "group_protocol"),
    "kafka_assignment_strategy": (ConsumerConfig, "assignment_strategy"),
    "heartbeat_consume_batch_size": (ConsumerConfig, "batch_size"),
    "heartbeat_max_message_bytes": (ConsumerConfig, "max_message_bytes"),
    "heartbeat_stats_every": (ConsumerConfig, "stats_every"),
    "heartbeat_partition_check_s": (ConsumerConfig, "partition_check_every_s"),
    "heartbeat_raw_retention_days": (RetentionPolicy, "raw_retention_days"),
    "heartbeat_max_clock_skew_s": (RetentionPolicy, "max_clock_skew_s"),
    "heartbeat_partitions_ahead_days": (RetentionPolicy, "partitions_ahead_days"),
    "heartbeat_hot_days": (ColdTierPolicy, "hot_days"),
    "heartbeat_cold_retention_days": (ColdTierPolicy, "cold_retention_days"),
    "heartbeat_alert_resolve_after_normal": (Rules, "resolve_after_normal"),
    "heartbeat_escalate_after_s": (AlertingConfig, "escalate_after_s"),
    "heartbeat_alert_give_up_s": (AlertingConfig, "give_up_s"),
    "heartbeat_alertmanager_refresh_s": (AlertingConfig, "alertmanager_refresh_s"),
    "heartbeat_alert_group_over": (StormPolicy, "group_over"),
    "heartbeat_alert_group_window_s": (StormPolicy, "window_s"),
}


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> config.Settings:
    """Settings with nothing set: no .env, no variable of the environment."""
    for name in config.Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    return config.load_settings(_env_file=None)


@pytest.mark.parametrize("setting", sorted(READ_FROM))
def test_a_default_changed_on_its_field_is_the_settings_default(
    setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.py loaded afresh (a module of its own, the imported one left alone) after the
    field's default changed: the setting's default is the new one."""
    cls, name = READ_FROM[setting]
    changed = object()
    (field,) = [f for f in dataclasses.fields(cls) if f.name == name]
    monkeypatch.setattr(field, "default", changed)
    spec = importlib.util.spec_from_file_location("fresh_config", config.__file__)
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.Settings.model_fields[setting].default is changed


def test_default_settings_build_the_objects_their_defaults_make(defaults) -> None:
    assert defaults.retention == RetentionPolicy()
    assert defaults.cold_tier == ColdTierPolicy()
    assert defaults.alert_rules == Rules()
    assert defaults.storm_policy == StormPolicy()
    assert readiness.alerting_config(defaults) == AlertingConfig()
    endpoints = Endpoints("postgresql://x/y", "broker:9092")
    built = readiness.consumer_config(defaults, endpoints)
    bare = ConsumerConfig("broker:9092", "postgresql://x/y", defaults.kafka_topic,
                          defaults.kafka_group_id)
    assert dataclasses.replace(built, name=bare.name, alerting=None) == bare


def test_default_settings_generate_what_the_generator_does_by_default(defaults) -> None:
    """Same seed, same pool and rates: the same customers and heart rates."""
    made, bare = readiness.generator(defaults, seed=1), HeartbeatGenerator(seed=1)
    assert [(e["customer_id"], e["heart_rate"]) for e in made.generate_events(2_000)] == [
        (e["customer_id"], e["heart_rate"]) for e in bare.generate_events(2_000)
    ]


def test_no_signal_waits_as_long_by_default_in_the_settings_and_the_rule(defaults) -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    after = timedelta(seconds=defaults.heartbeat_no_signal_after_s)
    last_seen = {"CUST_00001": now - after, "CUST_00002": now - after + timedelta(seconds=1)}
    assert silent_customers(last_seen, (), now) == ["CUST_00001"]
