"""Episodes written with plain SQL for the alerting tests (the consumer's writer is not needed
to test what people and Dagster do with them)."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from heartbeat_platform.domain.episodes import SEVERITY, EpisodeKind
from heartbeat_platform.storage import episodes


def insert_episode(
    conn: psycopg.Connection,
    customer: str = "CUST_00001",
    kind: str = "TACHYCARDIA",
    state: str = "firing",
    *,
    opened_ago: timedelta = timedelta(minutes=5),
    resolved_ago: timedelta | None = None,
    acknowledged_after: timedelta | None = None,
    notify: bool = True,
) -> int:
    """An episode row; with `notify`, its transitions queued as the writer would queue them
    (firing once it fired, resolved once resolved). Times are relative to the database's."""
    fired = state != "pending"
    row = conn.execute(
        """INSERT INTO alert_episodes (customer_id, kind, state, severity, opened_at,
               resolved_at, first_heart_rate, worst_heart_rate, readings, first_reading_at,
               last_reading_at, last_evaluated_at, acknowledged_at, acknowledged_by)
           VALUES (%(customer)s, %(kind)s, %(state)s, %(severity)s,
                   CASE WHEN %(fired)s THEN now() - %(opened_ago)s END,
                   now() - %(resolved_ago)s::interval, 190, 200, 3,
                   now() - %(opened_ago)s - interval '2 seconds', now() - %(opened_ago)s,
                   now() - %(opened_ago)s,
                   now() - %(opened_ago)s + %(ack_after)s::interval,
                   CASE WHEN %(ack_after)s::interval IS NOT NULL THEN 'someone' END)
           RETURNING episode_id""",
        {
            "customer": customer, "kind": kind, "state": state,
            "severity": SEVERITY[EpisodeKind(kind)], "fired": fired, "opened_ago": opened_ago,
            "resolved_ago": resolved_ago if state == "resolved" else None,
            "ack_after": acknowledged_after,
        },
    ).fetchone()
    assert row is not None
    episode_id = int(row[0])
    if notify and fired:
        episodes.enqueue(conn, [episode_id], "firing")
    if notify and state == "resolved":
        episodes.enqueue(conn, [episode_id], "resolved")
    return episode_id
