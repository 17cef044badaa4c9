"""Dagster tests read settings the way Dagster's processes do: from the environment."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from heartbeat_platform import readiness
from heartbeat_platform.config import Settings
from heartbeat_platform.defs.resources import settings_environment
from heartbeat_platform.streaming.producer import HeartbeatProducer

ORCHESTRATION_VARIABLES = (
    "HEARTBEAT_CONSUMER_WORKERS", "HEARTBEAT_SUPERVISION_SINCE", "DAGSTER_POSTGRES_URL",
)


@pytest.fixture
def use_settings(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Callable[[Settings], Settings]:
    """Export settings as environment variables (no `.env` of the checkout leaks in)."""
    monkeypatch.chdir(tmp_path)
    for name in ORCHESTRATION_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def apply(settings: Settings) -> Settings:
        for name, value in settings_environment(settings).items():
            monkeypatch.setenv(name, value)
        return settings

    return apply


@pytest.fixture
def platform_settings(settings_factory, database_url: str, use_settings) -> Settings:
    """The session's services, this test's own database and topic, prepared."""
    settings = use_settings(settings_factory(database_url=database_url))
    readiness.prepare(settings)
    return settings


@pytest.fixture
def produce(platform_settings: Settings) -> Callable[[int], None]:
    """Send N generated readings to the test's topic through the streaming core."""

    def send(events: int) -> None:
        endpoints = readiness.prepare(platform_settings).endpoints
        with HeartbeatProducer(readiness.producer_config(platform_settings, endpoints)) as producer:
            report = producer.run(readiness.generator(platform_settings, 5), events=events)
        assert report.delivered == events

    return send
