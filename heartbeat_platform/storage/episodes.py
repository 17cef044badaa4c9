"""Episodes and their notifications in PostgreSQL (sql/009), inside the caller's transaction.

The batch writer calls `apply_batch` in the transaction that stores the batch: the open
episodes of the batch's customers come from its `OpenEpisodes` (read from the table the
first time a customer is seen, and again after anything else changed episodes),
`domain.episodes.advance` decides, and the changed episodes and one outbox row per
transition are written before the commit. A batch that rolls back leaves no episode change
and no notification behind (and the writer forgets what it kept); a replayed batch finds
its readings already applied (`last_evaluated_at`) and changes nothing.

The JSON a webhook receives (and the other receivers' encoders read) is built here, in
SQL, from the episode row (`enqueue`), so the writer, escalation and a person's `alerts
ack` and `alerts resolve` send the same object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from enum import Enum

import psycopg

from heartbeat_platform.domain.episodes import (
    AlertBounds,
    Episode,
    EpisodeKind,
    EpisodeReading,
    EpisodeState,
    Outcome,
    Rules,
    Transition,
    advance,
    no_signal_episode,
    silent_customers,
)
from heartbeat_platform.storage.copy_format import AnomalyRow, RecordRow, Table
from heartbeat_platform.storage.database import one_row

NOTIFY_CHANNEL = "heartbeat_alert_outbox"  # LISTEN here to hear of new outbox rows at commit

# alert_episodes as the writer reads and writes it (sql/009): an Episode's fields in their
# order, then the severity its kind gives. The SELECT, the INSERT and the UPDATE below are
# built from it (tests/integration/test_shared_facts.py holds it against the schema).
EPISODES = Table("alert_episodes", (
    ("episode_id", "bigint"), ("customer_id", "text"), ("kind", "text"), ("state", "text"),
    ("opened_at", "timestamptz"), ("resolved_at", "timestamptz"),
    ("first_heart_rate", "integer"), ("worst_heart_rate", "integer"), ("readings", "integer"),
    ("first_reading_at", "timestamptz"), ("last_reading_at", "timestamptz"),
    ("normal_streak", "integer"), ("last_evaluated_at", "timestamptz"), ("severity", "text"),
))
_READ = tuple(name for name in EPISODES.names if name != "severity")  # Episode's fields
# What `advance` changes in a stored episode (the UPDATE's columns).
_CHANGING = (
    "state", "opened_at", "resolved_at", "worst_heart_rate", "readings", "last_reading_at",
    "normal_streak", "last_evaluated_at",
)
_TYPES = dict(EPISODES.columns)


def _unnest(columns: Sequence[str]) -> str:
    """unnest() of one binary array per column. Arrays go to PostgreSQL in binary (%b):
    psycopg builds text arrays in Python, about 8x slower for a batch's UPDATE."""
    return f"unnest({', '.join(f'%b::{_TYPES[c]}[]' for c in columns)})"


# A batch names up to every customer (10,000 at the design rate). `= ANY(array)` made the
# planner estimate each element against the column's statistics: ~40 ms of planning per
# batch for 3 ms of execution. `IN (SELECT unnest(...))` plans in well under a millisecond
# and joins the open episodes (the partial index alert_episodes_one_open) by hash.
_OPEN_OF_CUSTOMERS = f"""
SELECT {', '.join(_READ)} FROM alert_episodes
WHERE state <> 'resolved' AND customer_id IN (SELECT unnest(%b::text[]))
FOR UPDATE
"""
_BOUNDS = """
SELECT customer_id, kind, threshold FROM vw_alert_overrides_in_force
WHERE customer_id IN (SELECT unnest(%b::text[]))
"""
_NEW_IDS = """
SELECT nextval(pg_get_serial_sequence('alert_episodes', 'episode_id'))
FROM generate_series(1, %s)
"""
_INSERT = f"""
INSERT INTO alert_episodes ({EPISODES.column_list}) OVERRIDING SYSTEM VALUE
SELECT * FROM {_unnest(EPISODES.names)}
"""
_UPDATE = f"""
UPDATE alert_episodes e SET {', '.join(f'{c} = u.{c}' for c in _CHANGING)}
FROM {_unnest(("episode_id", *_CHANGING))} AS u(episode_id, {', '.join(_CHANGING)})
WHERE e.episode_id = u.episode_id
"""
_PAYLOAD = """jsonb_build_object(
    'episode_id', e.episode_id, 'customer_id', e.customer_id, 'kind', e.kind,
    'state', t.state, 'severity', e.severity, 'opened_at', e.opened_at,
    'resolved_at', e.resolved_at, 'first_heart_rate', e.first_heart_rate,
    'worst_heart_rate', e.worst_heart_rate, 'readings', e.readings,
    'first_reading_at', e.first_reading_at, 'last_reading_at', e.last_reading_at,
    'acknowledged_at', e.acknowledged_at, 'acknowledged_by', e.acknowledged_by,
    'resolved_by', e.resolved_by)"""
_ENQUEUE = f"""
INSERT INTO alert_outbox (episode_id, customer_id, state, payload)
SELECT e.episode_id, e.customer_id, t.state, {_PAYLOAD}
FROM unnest(%(ids)b::bigint[], %(states)b::text[]) WITH ORDINALITY AS t(episode_id, state, n)
JOIN alert_episodes e USING (episode_id)
ORDER BY t.n
ON CONFLICT (episode_id, state) DO NOTHING
"""


# Firing episodes whose firing notification was tried (so made durable first), as the
# JSON a `firing` notification of them would carry now: what an Alertmanager is sent
# again every minute. Through the partial index alert_episodes_firing.
_FIRING_PAYLOADS = f"""
SELECT {_PAYLOAD}::text FROM alert_episodes e CROSS JOIN (SELECT 'firing' AS state) t
WHERE e.state = 'firing' AND EXISTS (
    SELECT FROM alert_outbox o
    WHERE o.episode_id = e.episode_id AND o.state = 'firing' AND o.attempts > 0)
ORDER BY e.episode_id
"""


# sql/016: anything but the consumer moves the epoch before it changes episodes or overrides.
_EPOCH = "SELECT epoch FROM alert_episode_epoch FOR SHARE"
# Said by a writer (the consumer's connection, escalation, retention) whose changes no
# consumer keeps in memory, for its session or (is_local) its transaction.
_KEPT = "SELECT set_config('heartbeat.episode_cache_kept', 'on', %s)"


def keep_consumer_caches(conn: psycopg.Connection, session: bool = False) -> None:
    """Say that this transaction's (or, `session`, this connection's) changes to episodes
    are none that a consumer keeps: they move no epoch, so no consumer reloads (sql/016)."""
    conn.execute(_KEPT, (not session,))


class OpenEpisodes:
    """The open episodes and alert bounds of the customers one writer has seen, as of its
    last batch: what each batch would otherwise read and lock again, for every customer.

    Right while no other consumer changes these customers' episodes (customers are keyed to
    partitions: the writer forgets everything at each assignment and after a failed batch)
    and every other writer moves the epoch (sql/016), which `check` reads FOR SHARE.
    """

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        self.epoch: int | None = None
        self.known: set[str] = set()  # customers whose open episodes and bounds are here
        self.open: dict[str, dict[EpisodeKind, Episode]] = {}
        self.bounds: dict[str, AlertBounds] = {}

    def check(self, conn: psycopg.Connection, customers: set[str]) -> None:
        """Forget all if the epoch moved; then read the customers not known yet."""
        epoch = one_row(conn.execute(_EPOCH))[0]
        if epoch != self.epoch:
            self.forget()
            self.epoch = epoch
        unknown = sorted(customers - self.known)
        if unknown:
            for episode in load_open(conn, unknown):
                self.open.setdefault(episode.customer_id, {})[episode.kind] = episode
            self.bounds.update(load_bounds(conn, unknown))
            self.known.update(unknown)

    def of(self, customers: set[str]) -> tuple[list[Episode], dict[str, AlertBounds]]:
        """These customers' open episodes and bounds (walks only customers that have any)."""
        episodes = [
            e for customer, kinds in self.open.items() if customer in customers
            for e in kinds.values()
        ]
        return episodes, {c: b for c, b in self.bounds.items() if c in customers}

    def take(self, stored: Sequence[Episode], dropped: Sequence[Episode]) -> None:
        """What a batch wrote (`stored` with their ids): resolved and dropped ones leave
        first, so a new episode of the same kind in the same batch stays."""
        for episode in (*dropped, *(e for e in stored if not e.is_open)):
            kinds = self.open.get(episode.customer_id, {})
            if episode.kind in kinds and kinds[episode.kind].key == episode.key:
                del kinds[episode.kind]
                if not kinds:
                    del self.open[episode.customer_id]
        for episode in stored:
            if episode.is_open:
                self.open.setdefault(episode.customer_id, {})[episode.kind] = episode


def firing_payloads(conn: psycopg.Connection) -> list[bytes]:
    """The firing episodes' current JSON (state `firing`), for re-sending."""
    return [text.encode() for (text,) in conn.execute(_FIRING_PAYLOADS)]


def apply_batch(
    conn: psycopg.Connection, records: Sequence[RecordRow], anomalies: Sequence[AnomalyRow],
    now: datetime, rules: Rules, kept: OpenEpisodes | None = None,
) -> Outcome:
    """Advance the episodes of a batch's customers and queue their notifications.

    `anomalies` are those the batch inserted (a repeat of a stored reading is no news).
    NORMAL readings matter only to customers with an open episode or an override, so only
    theirs are turned into EpisodeReadings: most of a batch is skipped by a set lookup.
    `kept`: the writer's OpenEpisodes, brought up to date here (None: read them all now).
    """
    customers = {row[0] for row in records}
    customers.update(row[0] for row in anomalies)
    kept = kept if kept is not None else OpenEpisodes()
    kept.check(conn, customers)
    open_episodes, bounds = kept.of(customers)
    concerned = {row[0] for row in anomalies} | {e.customer_id for e in open_episodes}
    concerned |= bounds.keys()
    # One reading per customer and time, as storage keeps them: a repeat in the batch (the
    # same reading sent twice, or a record and an anomaly at one instant) is not news.
    readings = [(r[0], r[1], r[2]) for r in records if r[0] in concerned]
    readings += [(a[0], a[1], a[2]) for a in anomalies]
    seen: dict[tuple[str, datetime], EpisodeReading] = {}
    for customer, at, heart_rate in readings:
        seen.setdefault((customer, at), EpisodeReading(customer, at, heart_rate))
    outcome = advance(open_episodes, list(seen.values()), now, rules, bounds)
    kept.take(save(conn, outcome), outcome.dropped)
    return outcome


def load_open(conn: psycopg.Connection, customers: Sequence[str]) -> list[Episode]:
    """The pending and firing episodes of these customers, locked until the commit."""
    rows = conn.execute(_OPEN_OF_CUSTOMERS, (list(customers),)).fetchall()
    return [_episode(row) for row in rows]


def load_bounds(conn: psycopg.Connection, customers: Sequence[str]) -> dict[str, AlertBounds]:
    """The alert bounds in force for these customers (only those with an override)."""
    found: dict[str, dict[str, int]] = {}
    for customer, kind, threshold in conn.execute(_BOUNDS, (list(customers),)):
        found.setdefault(customer, {})[kind] = threshold
    return {
        customer: AlertBounds(
            bradycardia_below=kinds.get("BRADYCARDIA", AlertBounds.bradycardia_below),
            tachycardia_above=kinds.get("TACHYCARDIA", AlertBounds.tachycardia_above),
        )
        for customer, kinds in found.items()
    }


def save(conn: psycopg.Connection, outcome: Outcome) -> list[Episode]:
    """Write the changed episodes, delete dropped ones, queue one row per transition;
    the changed episodes as stored (new ones with their ids).

    Set-based: one INSERT, one UPDATE and one DELETE per batch, whatever its size.
    """
    new = [e for e in outcome.episodes if e.episode_id is None]
    changed = [e for e in outcome.episodes if e.episode_id is not None]
    # Stored episodes first: one resolved here frees its (customer, kind) for a new one.
    if changed:
        conn.execute(_UPDATE, _arrays(changed, ("episode_id", *_CHANGING)))
    dropped = [e.episode_id for e in outcome.dropped if e.episode_id is not None]
    if dropped:
        conn.execute("DELETE FROM alert_episodes WHERE episode_id = ANY(%b::bigint[])", (dropped,))
    ids: dict[tuple[str, EpisodeKind, datetime], int] = {}
    stored: list[Episode] = []
    if new:
        allocated = [row[0] for row in conn.execute(_NEW_IDS, (len(new),))]
        ids = {e.key: episode_id for e, episode_id in zip(new, allocated, strict=True)}
        stored = [replace(e, episode_id=ids[e.key]) for e in new]
        conn.execute(_INSERT, _arrays(stored, EPISODES.names))
    queue = []
    for transition in outcome.transitions:
        episode = transition.episode
        queue.append((episode.episode_id or ids[episode.key], transition.state))
    enqueue_transitions(conn, queue)
    return [*changed, *stored]


_PRUNE = """
DELETE FROM alert_episodes WHERE episode_id IN (
    SELECT episode_id FROM alert_episodes
    WHERE state = 'resolved' AND resolved_at < %s
    ORDER BY resolved_at LIMIT %s)
"""


def prune(conn: psycopg.Connection, before: datetime, chunk: int = 50_000) -> int:
    """Delete episodes resolved before `before`, with their outbox rows; how many.

    In chunks of `chunk`, each its own transaction (autocommit connections), oldest first
    through the resolved_at index: each pass reads only what it deletes. Open episodes and
    their undelivered notifications are never touched.
    """
    deleted = 0
    while True:
        with conn.transaction():
            keep_consumer_caches(conn)  # only resolved episodes go: none is kept open
            n = conn.execute(_PRUNE, (before, chunk)).rowcount
        deleted += n
        if n < chunk:
            return deleted


# One chunk of the outbox in id order (the order rows were queued): delete the delivered or
# given-up notifications of resolved episodes queued before the cut. Reads exactly `chunk`
# rows of the primary key and says where it stopped, so a pass never reads past the cut
# (rows kept in front, of open episodes or still pending, are few: at most one episode per
# customer and kind is open, and nothing stays pending past the give-up time).
_PRUNE_NOTIFICATIONS = """
WITH walk AS (
    SELECT outbox_id, created_at FROM alert_outbox
    WHERE outbox_id > %(after)s ORDER BY outbox_id LIMIT %(chunk)s
), gone AS (
    DELETE FROM alert_outbox o USING walk w, alert_episodes e
    WHERE o.outbox_id = w.outbox_id AND w.created_at < %(before)s
      AND e.episode_id = o.episode_id AND e.state = 'resolved'
      AND (o.done_at IS NOT NULL OR o.gave_up_at IS NOT NULL)
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT max(outbox_id) FROM walk),
       coalesce((SELECT bool_or(created_at >= %(before)s) FROM walk), true)
"""


def prune_notifications(conn: psycopg.Connection, before: datetime, chunk: int = 50_000) -> int:
    """Delete the delivered (or given-up) notifications of resolved episodes queued before
    `before`; how many. The episode row keeps what they said; the outbox is a delivery
    queue, at the design rate about one row a second per ten customers (README, Alerts).
    Chunks of `chunk` rows in queue order, each its own transaction."""
    deleted, after = 0, 0
    while True:
        with conn.transaction():
            n, last, reached = one_row(conn.execute(
                _PRUNE_NOTIFICATIONS, {"after": after, "chunk": chunk, "before": before}
            ))
        deleted += n
        if reached or last is None:
            return deleted
        after = last


def retain(
    conn: psycopg.Connection, now: datetime, episode_days: int, notification_hours: float
) -> dict[str, int]:
    """Alert retention, as `maintain` and the hourly storage job run it: what was deleted."""
    return {
        "resolved_episodes_deleted": prune(conn, now - timedelta(days=episode_days)),
        "delivered_notifications_deleted": prune_notifications(
            conn, now - timedelta(hours=notification_hours)
        ),
    }


def _arrays(rows: Sequence[Episode], columns: Sequence[str]) -> list[list]:
    """One list per column (the arrays unnest() takes); kinds and states as their text."""
    return [[_plain(getattr(e, column)) for e in rows] for column in columns]


def _plain(value: object) -> object:
    return value.value if isinstance(value, Enum) else value


def enqueue(conn: psycopg.Connection, episode_ids: Sequence[int], state: str) -> int:
    """Queue the notification of these episodes' `state` (firing, resolved, escalated)."""
    return enqueue_transitions(conn, [(episode_id, state) for episode_id in episode_ids])


def enqueue_transitions(conn: psycopg.Connection, queue: Sequence[tuple[int, str]]) -> int:
    """Queue (episode, state) notifications in this order (the order receivers get them
    per customer), once per episode and state; wake the delivery thread at commit."""
    if not queue:
        return 0
    ids, states = [episode_id for episode_id, _ in queue], [state for _, state in queue]
    queued = conn.execute(_ENQUEUE, {"ids": ids, "states": states}).rowcount
    if queued:
        conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
    return queued


def open_no_signal(
    conn: psycopg.Connection, now: datetime, after: timedelta, seen_within: timedelta
) -> list[str]:
    """Open a NO_SIGNAL episode for each customer silent for `after` (and seen within
    `seen_within`), with its notification; the customers, sorted.

    Last readings come from the `customers` table the rollups keep (a minute behind at
    most), so a silence is seen within `after` plus a minute.
    """
    last_seen: dict[str, datetime] = dict(conn.execute(
        "SELECT customer_id, greatest(last_reading_at, last_anomaly_at) FROM customers "
        "WHERE greatest(last_reading_at, last_anomaly_at) > %s",
        (now - seen_within,),
    ).fetchall())
    already = {
        customer for (customer,) in conn.execute(
            "SELECT customer_id FROM alert_episodes WHERE kind = 'NO_SIGNAL' "
            "AND state <> 'resolved'"
        )
    }
    silent = silent_customers(last_seen, already, now, after, seen_within)
    episodes = [no_signal_episode(c, last_seen[c], now) for c in silent]
    save(conn, Outcome(episodes, [], [Transition(e, "firing") for e in episodes]))
    return silent


def escalate_due(conn: psycopg.Connection, now: datetime, after: timedelta) -> list[int]:
    """Mark firing episodes unacknowledged for `after` escalated (once) and queue an
    `escalated` notification for each; their ids. Run it in a transaction."""
    keep_consumer_caches(conn)  # escalated_at is nothing a consumer decides on
    ids = [
        episode_id for (episode_id,) in conn.execute(
            "UPDATE alert_episodes SET escalated_at = %s WHERE state = 'firing' "
            "AND acknowledged_at IS NULL AND escalated_at IS NULL AND opened_at <= %s "
            "RETURNING episode_id",
            (now, now - after),
        )
    ]
    enqueue(conn, sorted(ids), "escalated")
    return ids


def _episode(row: tuple) -> Episode:
    values = dict(zip(_READ, row, strict=True))
    values["kind"], values["state"] = EpisodeKind(values["kind"]), EpisodeState(values["state"])
    return Episode(**values)
