"""Alert delivery sends only what a PostgreSQL crash cannot take back.

The consumer commits its batches, outbox rows included, with synchronous_commit=off: a
transition is visible (and its NOTIFY sent) before its commit reaches the WAL on disk, and
a crash loses it; the batch is then consumed again and the transition re-created under a
new episode id, which a receiver would take for a second alert. Here a server of the test's
own is crashed for real (kill -9 of every one of its processes, so the WAL buffers in shared
memory are gone) right after the POST, then started again (crash recovery), and the row
that was sent must still be there. Its WAL writer is slowed down (wal_writer_delay 10 s,
autovacuum off) so that an asynchronous commit stays unwritten for seconds, not 200 ms.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import psycopg
import pytest

from heartbeat_platform.alerting.config import AlertingConfig
from heartbeat_platform.alerting.delivery import AlertDelivery, OutboxRow
from heartbeat_platform.alerting.receivers import Receiver
from heartbeat_platform.local.postgres import EmbeddedPostgres
from heartbeat_platform.local.process import wait_until
from heartbeat_platform.storage.migrations import migrate
from tests.support.alerting_rows import insert_episode


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path / "postgres")
    pg.start()
    with psycopg.connect(pg.url("postgres"), autocommit=True) as su:
        su.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        su.execute("ALTER SYSTEM SET autovacuum = off")  # its commits would flush the WAL
        su.execute("SELECT pg_reload_conf()")
    yield pg
    pg.stop()


def server_processes(pg: EmbeddedPostgres) -> list[int]:
    postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:  # field 4: the parent
                children.append(int(entry.name))
    return [postmaster, *children]


def crash(pg: EmbeddedPostgres) -> None:
    """kill -9 of the postmaster and all its children, then a start (crash recovery)."""
    pids = server_processes(pg)
    for pid in pids:
        with suppress(ProcessLookupError):  # a backend that was just leaving
            os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), timeout=30)
    pg.start()


def pipeline_url(pg: EmbeddedPostgres, database: str) -> str:
    """A login of the pipeline role that may not call pg_logical_emit_message."""
    with psycopg.connect(pg.url("postgres"), autocommit=True) as su:
        su.execute("CREATE ROLE heartbeat_app LOGIN PASSWORD 'app' IN ROLE heartbeat_pipeline")
        su.execute(f"GRANT CONNECT ON DATABASE {database} TO heartbeat_app")
        with psycopg.connect(pg.url(database), autocommit=True) as db:
            for (function,) in db.execute(
                "SELECT oid::regprocedure::text FROM pg_proc"
                " WHERE proname = 'pg_logical_emit_message'"
            ).fetchall():
                db.execute(f"REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC")
    host_port = pg.url(database).split("@", 1)[1]
    return f"postgresql://heartbeat_app:app@{host_port}"


@pytest.mark.parametrize("how", ["synchronous commit", "waiting for the WAL writer"])
@pytest.mark.postgres  # a server of its own (`server`), crashed on purpose
def test_a_notification_is_sent_only_once_a_crash_cannot_take_it_back(
    server: EmbeddedPostgres, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.url()
    migrate(url)
    delivery_url = url if how == "synchronous commit" else pipeline_url(server, "heartbeat")
    with psycopg.connect(url, autocommit=True) as writer:
        writer.execute("SET synchronous_commit = off")  # as the consumer's writer commits
        episode_id = insert_episode(writer, "CUST_00001")
        committed = writer.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]

    sent: list[tuple[int, str, bool]] = []

    def post(_receiver: Receiver, row: OutboxRow) -> None:
        """The receiver takes the row, and the server crashes before the row's update."""
        with psycopg.connect(url, autocommit=True) as probe:
            flushed = probe.execute(
                "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (committed,)
            ).fetchone()[0]
        sent.append((row.outbox_id, row.idempotency_key, flushed))
        crash(server)

    delivery = AlertDelivery(
        delivery_url,
        AlertingConfig(receivers=(Receiver.of("webhook", "http://receiver.invalid/hook"),)),
        post=post,
    )
    with (
        psycopg.connect(delivery_url, autocommit=True) as conn,
        ThreadPoolExecutor(1) as pool,
        pytest.raises(psycopg.OperationalError),  # the row's update meets the dead server
    ):
        delivery.deliver_once(conn, pool)

    assert [key for _, key, _ in sent] == [f"{episode_id}:firing"]
    assert all(flushed for _, _, flushed in sent), "sent before its commit was flushed"
    with psycopg.connect(server.url(), autocommit=True) as db:  # its port may have moved
        kept = {
            (outbox_id, f"{episode}:{state}")
            for outbox_id, episode, state in db.execute(
                "SELECT outbox_id, episode_id, state FROM alert_outbox"
            )
        }
    assert {(outbox_id, key) for outbox_id, key, _ in sent} <= kept, "sent, then lost"
    refused = "pg_logical_emit_message is refused" in caplog.text
    assert refused == (how == "waiting for the WAL writer")
