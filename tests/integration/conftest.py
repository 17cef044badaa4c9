"""Fixtures shared by the integration tests that run the `heartbeat-platform` command."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def cli_env(database_url, services, topic_name, tmp_path) -> dict[str, str]:
    """The environment of a CLI run against the test's database and topic: wide tables, and
    the default log format whatever the developer's shell sets."""
    env = {k: v for k, v in os.environ.items() if k != "HEARTBEAT_LOG_FORMAT"}
    return {
        **env,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap_servers,
        "KAFKA_TOPIC": topic_name,
        "HEARTBEAT_STATE_DIR": str(tmp_path / "state"),
        "COLUMNS": "200",
    }
