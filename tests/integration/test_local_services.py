"""Embedded services: started when unconfigured, reused, stopped only by whoever started them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from heartbeat_platform.local.services import LocalServices
from heartbeat_platform.platform import prepare
from heartbeat_platform.streaming.topics import describe_topic, ensure_topic


def test_embedded_services_start_reuse_and_stop(settings_factory, tmp_path) -> None:
    settings = settings_factory(
        database_url=None, kafka_bootstrap_servers=None, heartbeat_state_dir=tmp_path / "hb"
    )
    first = LocalServices(settings)
    try:
        prepared = prepare(settings, first)
        assert sorted(first.started) == ["broker", "postgres"]
        assert prepared.endpoints.database_url.startswith("postgresql://postgres@127.0.0.1:")
        assert prepared.endpoints.bootstrap_servers.startswith("127.0.0.1:")
        assert prepared.topic_created

        second = LocalServices(settings)
        again = prepare(settings, second)
        assert second.started == []  # reused, not started twice
        assert again.endpoints == prepared.endpoints
        assert again.migrations_applied == [] and not again.topic_created

        second.stop_started()  # started nothing, so stops nothing
        with psycopg.connect(prepared.endpoints.database_url) as conn:
            assert conn.execute("SELECT count(*) FROM heartbeat_records").fetchone() == (0,)
        info = describe_topic(prepared.endpoints.bootstrap_servers, settings.kafka_topic)
        assert info is not None and info.partitions == 3
    finally:
        first.stop_started()
    assert not first.postgres.is_running()
    assert not first.broker.is_running()


def test_configured_services_start_nothing(settings_factory, services, tmp_path) -> None:
    settings = settings_factory(heartbeat_state_dir=tmp_path / "unused")
    local = LocalServices(settings)
    endpoints = local.start()
    assert endpoints.database_url == services.database_url
    assert endpoints.bootstrap_servers == services.bootstrap_servers
    assert local.started == []
    assert not (tmp_path / "unused").exists()


def test_topic_is_created_once_with_three_partitions(services, topic_name) -> None:
    assert describe_topic(services.bootstrap_servers, topic_name) is None
    assert ensure_topic(services.bootstrap_servers, topic_name, partitions=3) is True
    assert ensure_topic(services.bootstrap_servers, topic_name, partitions=3) is False
    info = describe_topic(services.bootstrap_servers, topic_name)
    assert info is not None and info.partitions == 3


def _cli(*args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heartbeat_platform", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def cli_env(database_url, services, topic_name, tmp_path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap_servers,
        "KAFKA_TOPIC": topic_name,
        "HEARTBEAT_STATE_DIR": str(tmp_path / "state"),
        "COLUMNS": "200",
    }


def test_status_reports_schema_topic_and_counts(cli_env, tmp_path) -> None:
    before = _cli("status", "--json", env=cli_env, cwd=tmp_path)
    assert before.returncode == 1  # reachable but not initialised
    report = json.loads(before.stdout)
    assert report["database"]["reachable"] and report["database"]["schema_version"] is None
    assert report["kafka"]["reachable"] and report["kafka"]["partitions"] is None

    init = _cli("init-db", env=cli_env, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert "schema applied 001_core_tables" in init.stdout

    after = _cli("status", "--json", env=cli_env, cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    report = json.loads(after.stdout)
    assert report["ok"] is True
    assert report["database"]["source"] == "configured"
    assert report["database"]["schema_version"] >= 2
    assert report["database"]["row_counts"]["heartbeat_records"] == 0
    storage = report["database"]["storage"]
    # init-db created the day partitions: 7 days back, today, 3 ahead (the defaults)
    assert storage["tables"]["heartbeat_records"]["partitions"] == 11
    assert storage["rollup_windows_pending"] == 0
    assert report["kafka"]["partitions"] == 3

    maintain = _cli("maintain", "--json", env=cli_env, cwd=tmp_path)
    assert maintain.returncode == 0, maintain.stderr
    done = json.loads(maintain.stdout)
    assert done["rollups"] == {} and done["retention"]["partitions_dropped"] == 0


def test_status_names_an_unreachable_database(cli_env, tmp_path) -> None:
    env = {**cli_env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = _cli("status", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["database"]["reachable"] is False
    assert "127.0.0.1" in report["database"]["error"]


def test_bad_configuration_is_a_clear_error(cli_env, tmp_path) -> None:
    env = {**cli_env, "DATABASE_URL": "mysql://x@y/z"}
    result = _cli("status", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr and "postgresql://" in result.stderr
