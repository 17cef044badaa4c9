"""Embedded services: started when unconfigured, reused, stopped only by whoever started them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from heartbeat_platform import status
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.postgres import EmbeddedPostgres
from heartbeat_platform.local.process import free_port, write_json
from heartbeat_platform.local.services import LocalServices
from heartbeat_platform.readiness import prepare
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.streaming.topics import describe_topic, ensure_topic


def test_embedded_services_start_reuse_and_stop(settings_factory, tmp_path) -> None:
    settings = settings_factory(
        database_url=None, kafka_bootstrap_servers=None, heartbeat_state_dir=tmp_path / "hb"
    )
    first = LocalServices(settings)
    try:
        prepared = prepare(settings, first)
        assert sorted(first.started) == ["broker", "postgres"]
        url = urlsplit(prepared.endpoints.database_url)
        assert (url.username, url.hostname) == ("postgres", "127.0.0.1")
        assert url.password == first.postgres.password_file.read_text().strip()
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


def test_the_local_apache_kafka_runs_detached_and_keeps_its_log_across_a_restart(
    settings_factory, kafka_jars, tmp_path
) -> None:
    """`up --broker kafka`: one Apache Kafka node, reused while it runs, stopped by `down`,
    started again on the same port with the messages it had (its log is on disk)."""
    settings = settings_factory(kafka_bootstrap_servers=None, heartbeat_local_broker="kafka",
                                heartbeat_state_dir=tmp_path / "hb")
    first = LocalServices(settings)
    try:
        bootstrap = first.start().bootstrap_servers
        assert first.started == ["broker"] and first.local_broker is first.kafka
        state = json.loads(first.kafka.state_file.read_text())
        admin = AdminClient({"bootstrap.servers": bootstrap})
        assert admin.describe_cluster().result(timeout=30).cluster_id == state["cluster_id"]
        assert os.getsid(state["pid"]) != os.getsid(0), "outlives the command that started it"
        ensure_topic(bootstrap, settings.kafka_topic, partitions=3)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        for i in range(30):
            producer.produce(settings.kafka_topic, key=str(i), value=b"{}")
        assert producer.flush(30) == 0

        second = LocalServices(settings)
        assert second.start().bootstrap_servers == bootstrap and second.started == []
        kafka = status.collect_status(settings)["kafka"]
        assert (kafka["source"], kafka["reachable"], kafka["partitions"]) == (
            "local Apache Kafka", True, 3)

        assert LocalServices(settings).stop_all() == ["Apache Kafka"]
        assert not first.kafka.is_running()
        stopped = status.collect_status(settings)["kafka"]
        assert stopped["error"].startswith("the local Apache Kafka broker is not running")
        again = LocalServices(settings)
        assert again.start().bootstrap_servers == bootstrap, "the same port again"
        assert not first.broker.is_running(), "Tansu was never started"
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "check"})
        ends = [consumer.get_watermark_offsets(TopicPartition(settings.kafka_topic, p),
                                               timeout=30)[1] for p in range(3)]
        consumer.close()
        assert sum(ends) == 30, ends
    finally:
        LocalServices(settings).stop_all()
    assert not first.kafka.is_running()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}").geturl()


def _refused(url: str) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(url, connect_timeout=5).close()
    return str(caught.value)


def test_embedded_postgres_asks_for_its_password(embedded_postgres, monkeypatch) -> None:
    """No trust: a connection without the password (or with another) is refused, over TCP
    and over the unix socket; the secret is readable by its owner only."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    url = embedded_postgres.url()
    mode = stat.S_IMODE(embedded_postgres.password_file.stat().st_mode)
    assert mode == 0o600
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "no password supplied" in _refused(_without_password(url))
    wrong = url.replace(urlsplit(url).password, "wrong")
    assert "password authentication failed" in _refused(wrong)
    socket = f"postgresql://postgres@/postgres?host={embedded_postgres.root}" \
             f"&port={urlsplit(url).port}"
    assert "no password supplied" in _refused(socket)


@pytest.mark.postgres  # a server of its own
def test_a_trust_state_folder_of_an_earlier_version_is_upgraded(tmp_path, caplog) -> None:
    """A folder initialised without a password keeps its data and asks for one from then on."""
    server = EmbeddedPostgres(tmp_path / "postgres")
    server.root.mkdir(parents=True)
    server._prepare_permissions()
    server._run("initdb", "-D", str(server.data_dir), "--auth=trust", "-U", "postgres",
                "--encoding=UTF8", "--no-instructions")  # what earlier versions did
    write_json(server.state_file, {"host": "127.0.0.1", "port": free_port()})
    assert not server.password_file.exists()
    try:
        assert server.start() is True
        assert "asks for the password" in caplog.text
        assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
        with psycopg.connect(server.url(), connect_timeout=5) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("heartbeat",)
        assert "no password supplied" in _refused(_without_password(server.url()))
        caplog.clear()
        server.stop()
        assert server.start() is True  # a second start finds nothing to upgrade
        assert "asks for the password" not in caplog.text
    finally:
        server.stop()


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
    assert report["database"]["row_counts"]["heartbeat_records"] == {"rows": 0, "how": "exact"}
    storage = report["database"]["storage"]
    # init-db created the day partitions: 7 days back, today, 3 ahead (the defaults)
    assert storage["tables"]["heartbeat_records"]["partitions"] == 11
    assert storage["rollup_windows_pending"] == 0
    assert report["kafka"]["partitions"] == 3

    maintain = _cli("maintain", "--json", env=cli_env, cwd=tmp_path)
    assert maintain.returncode == 0, maintain.stderr
    done = json.loads(maintain.stdout)
    assert done["rollups"] == {} and done["retention"]["partitions_dropped"] == 0
    assert (done["resolved_episodes_deleted"], done["delivered_notifications_deleted"]) == (0, 0)


def _insert_records(database_url: str, n: int) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(database_url) as conn:
        conn.cursor().executemany(
            "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
            "kafka_partition, kafka_offset) VALUES (%s, %s, 75, 0, %s)",
            [(f"CUST_{i + 1:05d}", now - timedelta(seconds=i), i) for i in range(n)],
        )


def test_status_counts_rows_nobody_has_analysed_yet(cli_env, database_url, tmp_path) -> None:
    """Rows just written to new partitions have no planner estimate (reltuples -1): status
    counts a small table instead of printing "~0 rows", and says there are no rollups yet."""
    assert _cli("init-db", env=cli_env, cwd=tmp_path).returncode == 0
    _insert_records(database_url, 1327)

    report = json.loads(_cli("status", "--json", env=cli_env, cwd=tmp_path).stdout)
    counts = report["database"]["row_counts"]
    assert counts["heartbeat_records"] == {"rows": 1327, "how": "exact"}
    assert counts["heartbeat_anomalies"] == {"rows": 0, "how": "exact"}
    assert report["database"]["storage"]["fleet_minutes_rolled_up_until"] is None

    text = _cli("status", env=cli_env, cwd=tmp_path)
    assert text.returncode == 0, text.stdout + text.stderr
    assert re.search(r"heartbeat_records +1,327 rows", text.stdout), text.stdout
    assert re.search(r"rollups +none yet", text.stdout), text.stdout
    assert "~0 rows" not in text.stdout and "None" not in text.stdout


def test_a_large_table_is_estimated_or_said_to_be_not_analysed(
    settings_factory, database_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the exact-count size the planner's estimate is used; a partition it has never
    analysed makes the count unknown, not zero."""
    settings = settings_factory(database_url=database_url)
    migrate(database_url)
    _insert_records(database_url, 500)
    monkeypatch.setattr(status, "EXACT_COUNT_MAX_BYTES", 0)  # every table counts as large

    counts = status.collect_status(settings)["database"]["row_counts"]
    assert counts["heartbeat_records"] == {"rows": None, "how": "not analysed yet"}
    assert counts["heartbeat_anomalies"] == {"rows": 0, "how": "exact"}  # an empty heap

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE heartbeat_records")
    counts = status.collect_status(settings)["database"]["row_counts"]
    assert counts["heartbeat_records"] == {"rows": 500, "how": "estimate"}


def test_status_names_an_unreachable_database(cli_env, tmp_path) -> None:
    env = {**cli_env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = _cli("status", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["database"]["reachable"] is False
    assert "127.0.0.1" in report["database"]["error"]


def test_pipeline_commands_check_and_ask_for_init_db(cli_env, database_url, tmp_path) -> None:
    """`produce`, `consume` and `maintain` create nothing: before `init-db` they say to run it."""
    for command in (["produce", "--events", "1"], ["consume", "--stop-when-idle", "1"],
                    ["maintain"]):
        result = _cli(*command, env=cli_env, cwd=tmp_path)
        assert result.returncode == 1, result.stdout
        assert "has no heartbeat schema" in result.stderr, result.stderr
        assert "heartbeat-platform init-db" in result.stderr
    with psycopg.connect(database_url) as conn:  # nothing was created
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)

    migrate(database_url)  # schema current, topic still missing
    result = _cli("produce", "--events", "1", env=cli_env, cwd=tmp_path)
    assert result.returncode == 1
    assert f"topic '{cli_env['KAFKA_TOPIC']}' does not exist" in result.stderr, result.stderr
    assert "heartbeat-platform init-db" in result.stderr
    assert describe_topic(cli_env["KAFKA_BOOTSTRAP_SERVERS"], cli_env["KAFKA_TOPIC"]) is None


def test_an_older_schema_is_named_with_what_is_missing(cli_env, database_url, tmp_path) -> None:
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        newest = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (newest,))
        older = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    result = _cli("consume", "--stop-when-idle", "1", env=cli_env, cwd=tmp_path)
    assert result.returncode == 1
    assert f"has schema version {older}" in result.stderr, result.stderr
    assert f"needs {newest}" in result.stderr and "heartbeat-platform init-db" in result.stderr


def test_bad_configuration_is_a_clear_error(cli_env, tmp_path) -> None:
    env = {**cli_env, "DATABASE_URL": "mysql://x@y/z"}
    result = _cli("status", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr and "postgresql://" in result.stderr


def test_a_bad_client_properties_file_is_a_clear_error(cli_env, tmp_path) -> None:
    missing = tmp_path / "missing.properties"
    result = _cli("status", env={**cli_env, "KAFKA_CLIENT_PROPERTIES": str(missing)},
                  cwd=tmp_path)
    assert result.returncode == 2
    assert f"KAFKA_CLIENT_PROPERTIES: {missing} does not exist" in result.stderr, result.stderr

    unknown = tmp_path / "client.properties"
    unknown.write_text("security.protocol=SSL\nssl.protocol=TLSv1.3\n")
    result = _cli("status", env={**cli_env, "KAFKA_CLIENT_PROPERTIES": str(unknown)},
                  cwd=tmp_path)
    assert result.returncode == 2
    assert str(unknown) in result.stderr and "ssl.protocol" in result.stderr, result.stderr


READ_ONLY_COMMANDS = (
    ["status"], ["alerts", "list"], ["alerts", "list", "--open", "--json"], ["alerts", "tail"],
    ["alerts", "override", "list"],
)


def test_read_only_commands_start_nothing_and_say_what_to_run(cli_env, tmp_path) -> None:
    """After `down` (here: a state folder whose embedded services are stopped), a command
    that only reads exits 1 with one line naming `up`, and leaves nothing running."""
    state = tmp_path / "stopped"
    env = {k: v for k, v in cli_env.items()
           if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env["HEARTBEAT_STATE_DIR"] = str(state)
    postgres, broker = EmbeddedPostgres(state / "postgres"), EmbeddedBroker(state / "broker")
    try:
        for command in READ_ONLY_COMMANDS:
            result = _cli(*command, env=env, cwd=tmp_path)
            assert result.returncode == 1, (command, result.stdout, result.stderr)
            said = result.stdout if command == ["status"] else result.stderr
            assert "is not running" in said and "heartbeat-platform up" in said, (command, said)
            if command != ["status"]:
                assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert not postgres.is_running() and not broker.is_running(), command
    finally:
        broker.stop()
        postgres.stop()


@pytest.fixture
def closing_listener() -> Iterator[str]:
    """A TCP port that takes connections and closes them unanswered (not Kafka, or a TLS
    listener to a plaintext client)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                server.accept()[0].close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    done.set()
    thread.join()
    server.close()


def test_kafka_failures_are_told_apart(cli_env, services, closing_listener, tmp_path) -> None:
    """A refused port, a listener that closes a plaintext request, and a TLS client against
    a plaintext broker each get their own cause; only the second mentions TLS settings."""
    refused = f"127.0.0.1:{free_port()}"
    result = _cli("init-db", env={**cli_env, "KAFKA_BOOTSTRAP_SERVERS": refused}, cwd=tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"Kafka at {refused} cannot be reached: {refused}: connection refused" in line
    assert "TLS" not in line

    def kafka_error(**env: str) -> str:
        status = _cli("status", "--json", env={**cli_env, **env}, cwd=tmp_path)
        assert status.returncode == 1, status.stdout
        return json.loads(status.stdout)["kafka"]["error"]

    assert "connection refused" in kafka_error(KAFKA_BOOTSTRAP_SERVERS=refused)
    closed = kafka_error(KAFKA_BOOTSTRAP_SERVERS=closing_listener)
    assert "closed the connection without answering a Kafka request" in closed, closed
    assert "KAFKA_CLIENT_PROPERTIES" in closed
    tls = kafka_error(KAFKA_SECURITY_PROTOCOL="SSL")  # the embedded broker speaks plaintext
    assert "TLS handshake" in tls and "connection refused" not in tls, tls
