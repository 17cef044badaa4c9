"""Deliver queued episode transitions (alert_outbox) to receivers, at least once.

A thread beside the consumer (`heartbeat-platform consume`, the Dagster consumer run). It
is woken by the NOTIFY that a batch's transaction sends at commit, so a transition leaves
within milliseconds of being stored; it never blocks ingest. Per customer, transitions go
out in the order they were queued: a later one waits until the earlier one is delivered
(or given up). A receiver that is down or slow gets retries with backoff; a row is given
up only after `give_up_s`, and that is recorded (`gave_up_at`, `last_error`). Every POST of
a transition carries the same `Idempotency-Key: <episode_id>:<state>`, so a receiver can
drop the repeats that at-least-once delivery allows (after a crash between the POST and the
row's update). What each receiver is sent (a signed webhook, an Alertmanager alert, a
PagerDuty event) is `receivers.encode`'s; what the database and the logs keep of a receiver
is its name, never its URL (which often carries a token), and each POST has a total
deadline and reads at most `MAX_ANSWER_BYTES` of the answer.

Several consumers may run: a PostgreSQL advisory lock elects one deliverer; the others
wait and take over when it goes away. The deliverer also escalates episodes firing
unacknowledged for `escalate_after_s` (once each).

Only what a PostgreSQL crash cannot take back is sent. The consumer commits its batches,
outbox rows included, with `synchronous_commit = off`: a row is visible (and its NOTIFY
sent) before its commit is flushed to the WAL, and a crash then loses it; its batch is
consumed again and the transition re-created under a new episode id, so a receiver
would get a second alert with another Idempotency-Key. So before sending rows it has not
sent before, the deliverer commits a transaction of its own synchronously (`make_durable`:
a transactional WAL message, `pg_logical_emit_message`, so no table is written; any role
may call it). A synchronous commit returns once the WAL is flushed up to its commit record
(and, with synchronous replication, on the standby), which lies after the commit record
of every row this session has read. It costs one WAL flush per round, not per row. Where
the function is refused, the deliverer waits instead until `pg_current_wal_flush_lsn()`
passes the insert position read after the rows (the WAL writer flushes asynchronous
commits within `wal_writer_delay`, 200 ms by default: slower).
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import orjson
import psycopg

from heartbeat_platform.alerting.config import AlertingConfig
from heartbeat_platform.alerting.receivers import (
    Receiver,
    Request,
    alertmanager_refresh,
    encode,
    redact,
)
from heartbeat_platform.alerting.storm import Release, Storm, group_key, grouped_payload
from heartbeat_platform.storage import alert_receivers, episodes
from heartbeat_platform.storage.database import connect

log = logging.getLogger(__name__)

_LEADER_LOCK = 0x4842_414C  # "HBAL": one deliverer per database
FETCH_LIMIT = 2_000
SENDERS = 4  # concurrent POSTs (to different customers)
BACKOFF_S = (0.5, 1, 2, 5, 10, 30, 60)  # then every 60 s until given up
ESCALATION_EVERY_S = 5.0
RECEIVERS_RELOAD_S = 2.0  # a receiver added or removed is in force within this
IDLE_WAIT_S = 0.5  # longest wait for a NOTIFY before looking again (and at the stop flag)
FLUSH_POLL_S = 0.01  # without pg_logical_emit_message: how often the flush LSN is read
MAX_ANSWER_BYTES = 64 * 1024  # of a receiver's answer; the rest is not read
MAX_ERROR_CHARS = 300  # of a receiver's error kept in last_error and the log
REFRESH_CHUNK = 500  # firing episodes per Alertmanager re-send POST
# A synchronous commit of a transaction that wrote only a WAL message: it flushes the WAL
# past every commit this session has seen (an XID alone writes no WAL, so no flush).
_SYNCHRONOUS_FLUSH = (
    "SELECT set_config('synchronous_commit', 'on', true), "
    "pg_logical_emit_message(true, 'heartbeat_alert_delivery', '')"
)


@dataclass(frozen=True)
class OutboxRow:
    outbox_id: int
    episode_id: int
    customer_id: str
    state: str
    payload: bytes  # the JSON object as PostgreSQL wrote it: what webhooks get, as is
    delivered_to: tuple[str, ...]  # names of the receivers that took it
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    # names of the receivers that took the episode's firing or escalated notification: the
    # only ones told of its later transitions
    told: tuple[str, ...] = ()

    @property
    def idempotency_key(self) -> str:
        return f"{self.episode_id}:{self.state}"


@dataclass(frozen=True)
class Attempt:
    """The outcome of one row's delivery round: receivers that took it (names), and the
    last error (a receiver's name and what went wrong, never its URL). `held`: a receiver
    in a storm holds the row for a grouped notification, so it is not done yet."""

    row: OutboxRow
    delivered: tuple[str, ...]
    error: str | None
    held: bool = False


@dataclass
class Group:
    """A storm's grouped notification to one receiver, sent (and retried) as itself."""

    receiver: Receiver
    rows: tuple[OutboxRow, ...]
    next_at: float  # monotonic time of the next try
    tries: int = 0

    @property
    def key(self) -> str:
        return group_key([row.idempotency_key for row in self.rows])

    def body(self) -> bytes:
        return orjson.dumps(grouped_payload(orjson.loads(row.payload) for row in self.rows))


def storming(receiver: Receiver, config: AlertingConfig) -> bool:
    """Whether a receiver's notifications go through its storm: webhooks only
    (Alertmanager groups by itself; PagerDuty takes one event a request)."""
    return receiver.type == "webhook" and config.storm.enabled


def sendable(rows: Iterable[OutboxRow], now: datetime) -> list[OutboxRow]:
    """Rows to send now: per customer only the oldest pending row, when it is due."""
    first: dict[str, OutboxRow] = {}
    for row in sorted(rows, key=lambda r: r.outbox_id):
        first.setdefault(row.customer_id, row)
    return [row for row in first.values() if row.next_attempt_at <= now]


def backoff(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones."""
    return BACKOFF_S[min(attempts, len(BACKOFF_S)) - 1] if attempts else 0.0


def targets(row: OutboxRow, config: AlertingConfig) -> tuple[Receiver, ...]:
    """The receivers this row still has to reach. A firing episode goes to the receivers,
    an escalation to the escalation receivers (if there are any); every later transition
    (resolved, acknowledged, an escalation to the receivers themselves) only to those that
    took the firing or the escalation: none hears of an episode's end, or its escalation,
    out of nowhere (a receiver added since it fired, one that was down all along)."""
    if row.state == "firing":
        chosen = config.receivers
    elif row.state == "escalated" and config.escalation_receivers:
        chosen = config.escalation_receivers
    else:
        chosen = tuple(r for name, r in config.everyone.items() if name in row.told)
    return tuple(r for r in chosen if r.name not in row.delivered_to)


def failure(receiver: Receiver, exc: BaseException) -> str:
    """What last_error and the log keep of a failed POST: the receiver's name and the
    error, any copy of its URL replaced by the redacted one, cut to MAX_ERROR_CHARS."""
    text = str(exc) or type(exc).__name__
    text = text.replace(receiver.url, redact(receiver.url))
    if receiver.secret:
        text = text.replace(receiver.secret, "<secret>")
    return f"{receiver.name}: {text}"[:MAX_ERROR_CHARS]


_PENDING = f"""
SELECT o.outbox_id, o.episode_id, o.customer_id, o.state, o.payload::text, o.delivered_to,
       o.attempts, o.next_attempt_at, o.created_at,
       ARRAY(SELECT DISTINCT n FROM alert_outbox f, unnest(f.delivered_to) AS n
             WHERE f.episode_id = o.episode_id AND f.state IN ('firing', 'escalated')
               AND o.state <> 'firing')
FROM alert_outbox o WHERE o.done_at IS NULL AND o.gave_up_at IS NULL
ORDER BY o.outbox_id LIMIT {FETCH_LIMIT}
"""
# One statement per round, whatever the number of rows (receiver names hold no space).
_DELIVERED = """
UPDATE alert_outbox o SET
    delivered_to = o.delivered_to || string_to_array(u.urls, ' '),
    done_at = clock_timestamp(), attempts = o.attempts + 1, last_error = NULL
FROM unnest(%s::bigint[], %s::text[]) AS u(outbox_id, urls)
WHERE o.outbox_id = u.outbox_id
"""
# Receivers that took a row that is not done yet (others still hold it in a storm).
_TOOK = """
UPDATE alert_outbox o SET delivered_to = o.delivered_to || string_to_array(u.urls, ' ')
FROM unnest(%s::bigint[], %s::text[]) AS u(outbox_id, urls)
WHERE o.outbox_id = u.outbox_id
"""
_FAILED = """
UPDATE alert_outbox o SET
    delivered_to = o.delivered_to || string_to_array(u.urls, ' '),
    attempts = o.attempts + 1, last_error = u.error, next_attempt_at = u.next_attempt_at,
    gave_up_at = CASE WHEN u.give_up THEN clock_timestamp() END
FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[], %s::bool[])
    AS u(outbox_id, urls, error, next_attempt_at, give_up)
WHERE o.outbox_id = u.outbox_id
"""


class AlertDelivery:
    """The delivery thread: start(), then stop() when the consumer stops."""

    def __init__(
        self, database_url: str, config: AlertingConfig,
        post: Callable[[Receiver, OutboxRow], None] | None = None,
        post_group: Callable[[Group], None] | None = None,
    ):
        self.database_url = database_url
        self.config = config  # the settings' receivers
        self.in_force = config  # and the stored ones (`alerts receivers`), reloaded
        self._unusable: set[str] = set()  # stored receivers skipped, logged once
        self._post = post or self._http_post
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connections = _KeptAlive(config.timeout_s)
        self._refresh_failing: set[str] = set()  # Alertmanagers whose last re-send failed
        self._storms: dict[str, Storm[OutboxRow]] = {}  # per storming receiver (by name)
        self._offered: dict[str, set[int]] = {}  # outbox ids each storm was given
        self._let_through: dict[str, set[int]] = {}  # ...and sent on singly (retried so)
        self._groups: list[Group] = []  # released by a storm, not taken yet
        self._post_group = post_group or self._http_post_group
        self._wal_message = True  # pg_logical_emit_message allowed (until refused)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alert-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with connect(self.database_url, autocommit=True) as conn:
                    self._serve(conn)
            except psycopg.OperationalError as exc:
                log.warning("alert delivery: database unavailable (%s); retrying in 2 s", exc)
                self._stop.wait(2.0)
            except Exception:
                log.exception("alert delivery failed; restarting in 5 s")
                self._stop.wait(5.0)

    def _serve(self, conn: psycopg.Connection) -> None:
        """Wait for the leadership, then deliver until stopped."""
        while not self._stop.is_set():
            if episodes_lock(conn):
                break
            self._stop.wait(5.0)
        conn.execute(f"LISTEN {episodes.NOTIFY_CHANNEL}")
        escalated_at = refreshed_at = reloaded_at = 0.0
        with ThreadPoolExecutor(SENDERS, thread_name_prefix="alert-post") as pool:
            while not self._stop.is_set():
                if time.monotonic() - reloaded_at >= RECEIVERS_RELOAD_S:
                    self.reload_receivers(conn)
                    reloaded_at = time.monotonic()
                if time.monotonic() - escalated_at >= ESCALATION_EVERY_S:
                    self.escalate(conn)
                    escalated_at = time.monotonic()
                # Between rounds, never beside one: a resolution queued after the re-send
                # read its episodes goes out after it, so Alertmanager ends with endsAt.
                if time.monotonic() - refreshed_at >= self.config.alertmanager_refresh_s:
                    self.refresh_alertmanagers(conn)
                    refreshed_at = time.monotonic()
                wait = self.deliver_once(conn, pool)
                if wait > 0:
                    # short waits: a NOTIFY wakes it at once, and a stop is seen within one
                    for _ in conn.notifies(timeout=min(wait, IDLE_WAIT_S), stop_after=1):
                        pass

    # -- one round ----------------------------------------------------------------------
    def reload_receivers(self, conn: psycopg.Connection) -> AlertingConfig:
        """The settings' receivers and the stored ones in force now; a stored one named
        like one of the settings' is skipped (logged once)."""
        taken = {r.name for r in (*self.config.receivers, *self.config.escalation_receivers)}
        stored = []
        for receiver in alert_receivers.load(conn, self._unusable):
            if receiver.name in taken:
                if receiver.name not in self._unusable:
                    log.error("alert receiver %s is skipped: the settings name one so too",
                              receiver.name)
                    self._unusable.add(receiver.name)
                continue
            stored.append(receiver)
        before = self.in_force.receivers
        self.in_force = replace(self.config, receivers=(*self.config.receivers, *stored))
        if self.in_force.receivers != before:
            log.info("alert receivers in force: %s",
                     ", ".join(str(r) for r in self.in_force.receivers) or "none")
        return self.in_force

    def escalate(self, conn: psycopg.Connection) -> list[int]:
        now = datetime.now(UTC)
        with conn.transaction():
            ids = episodes.escalate_due(conn, now, timedelta(seconds=self.config.escalate_after_s))
        if ids:
            log.warning("escalated %d episode(s) firing unacknowledged for %.0f s",
                        len(ids), self.config.escalate_after_s)
        return ids

    def deliver_once(self, conn: psycopg.Connection, pool: ThreadPoolExecutor) -> float:
        """Send what is due; the seconds until something may be due again (0: go on)."""
        rows = [_row(r) for r in conn.execute(_PENDING).fetchall()]
        self._forget({row.outbox_id for row in rows})
        now, clock = datetime.now(UTC), time.monotonic()
        due = sendable(rows, now)
        self._offer(due, clock)
        groups = [g for g in self._groups if g.next_at <= clock]
        # a row with no receiver left to reach is done in this round's record
        if not groups and not any(self._to_send(row)
                                  or not targets(row, self.in_force) for row in due):
            return self._idle_for(rows, now, clock)
        # A row tried before was made durable before its first try.
        fresh = [row for row in (*due, *(r for g in groups for r in g.rows)) if row.attempts == 0]
        if fresh and not self.make_durable(conn):
            return 0.0  # stopping
        attempts = list(pool.map(self._attempt, due))
        self._record(conn, attempts, now)
        for group in groups:
            self._send_group(conn, group, now)
        return 0.0

    # -- storms: a receiver's notifications grouped (`storm`) ------------------------------
    def _offer(self, due: Sequence[OutboxRow], clock: float) -> None:
        """Give each storming receiver's storm the due rows it has not seen (once: a
        retry is no new notification); queue the groups they release, and note the rows
        they let through singly."""
        policy = self.in_force.storm
        for row in due:
            for receiver in targets(row, self.in_force):
                offered = self._offered.setdefault(receiver.name, set())
                if not storming(receiver, self.in_force) or row.outbox_id in offered:
                    continue
                offered.add(row.outbox_id)
                storm = self._storms.setdefault(receiver.name, Storm(policy))
                self._released(receiver, storm.offer(row, clock), clock)
        for name, storm in self._storms.items():
            found = self._receiver(name)
            if found is not None:
                self._released(found, storm.due(clock), clock)

    def _released(self, receiver: Receiver, releases: Sequence[Release[OutboxRow]],
                  clock: float) -> None:
        for release in releases:
            if release.grouped:
                self._groups.append(Group(receiver, release.items, clock))
            else:
                self._let_through.setdefault(receiver.name, set()).add(
                    release.items[0].outbox_id)

    def _receiver(self, name: str) -> Receiver | None:
        return self.in_force.everyone.get(name)

    def _to_send(self, row: OutboxRow) -> list[Receiver]:
        """The receivers to POST this row to now: the ones outside storms, and the storms'
        that let it through singly."""
        return [r for r in targets(row, self.in_force) if not storming(r, self.in_force)
                or row.outbox_id in self._let_through.get(r.name, ())]

    def _forget(self, pending: set[int]) -> None:
        """Rows no longer pending (done, given up) leave the storms' books; a receiver gone
        from the settings and the table takes its storm with it."""
        names = self.in_force.everyone.keys()
        for books in (self._offered, self._let_through):
            for name in list(books):
                if name in names:
                    books[name] &= pending
                else:
                    books.pop(name)
        self._storms = {n: storm for n, storm in self._storms.items() if n in names}
        self._groups = [g for g in self._groups if g.receiver.name in names]

    def _idle_for(self, rows: Sequence[OutboxRow], now: datetime, clock: float) -> float:
        """Nothing to send: until a row's retry, a storm's group or the next look."""
        waits = [ESCALATION_EVERY_S]
        waits += [(r.next_attempt_at - now).total_seconds() for r in rows
                  if r.next_attempt_at > now]
        waits += [at - clock for at in (s.next_due() for s in self._storms.values())
                  if at is not None]
        waits += [g.next_at - clock for g in self._groups]
        return max(0.05, min(waits))

    def _send_group(self, conn: psycopg.Connection, group: Group, now: datetime) -> None:
        """POST a group; its rows take the receiver, or it is tried again (the same rows,
        the same key) with backoff until its oldest row is given up."""
        try:
            self._post_group(group)
        except Exception as exc:  # any failure: try the same group again later
            error = failure(group.receiver, exc)
            group.tries += 1
            give_up = (now - min(r.created_at for r in group.rows)).total_seconds() \
                >= self.config.give_up_s
            ids = [r.outbox_id for r in group.rows]
            with conn.transaction():
                conn.execute(_FAILED, (
                    ids, [""] * len(ids), [error] * len(ids),
                    [now + timedelta(seconds=backoff(group.tries))] * len(ids),
                    [give_up] * len(ids),
                ))
            if give_up:
                self._groups.remove(group)
                log.error("gave up a group of %d notifications to %s after %d tries: %s",
                          len(ids), group.receiver.name, group.tries, error)
            else:
                group.next_at = time.monotonic() + backoff(group.tries)
                log.warning("a group of %d notifications to %s failed (try %d): %s",
                            len(ids), group.receiver.name, group.tries, error)
            return
        self._groups.remove(group)
        with conn.transaction():
            conn.execute(_TOOK, ([r.outbox_id for r in group.rows],
                                 [group.receiver.name] * len(group.rows)))
        log.info("sent %d notifications to %s as one (a storm)", len(group.rows),
                 group.receiver.name)

    def refresh_alertmanagers(self, conn: psycopg.Connection) -> int:
        """Send every firing episode again to each Alertmanager receiver (it forgets an
        alert not re-sent within its resolve_timeout); the episodes sent. Only episodes
        whose firing notification was tried (and so made durable first) go. Best effort:
        a failure is logged once until a re-send works again."""
        if not self.in_force.alertmanagers:
            return 0
        payloads = episodes.firing_payloads(conn)
        for receiver in self.in_force.alertmanagers:
            try:
                for start in range(0, len(payloads), REFRESH_CHUNK):
                    request = alertmanager_refresh(
                        receiver, payloads[start:start + REFRESH_CHUNK])
                    self._send(request)
            except Exception as exc:
                if receiver.name not in self._refresh_failing:
                    log.warning("re-sending %d firing episode(s) to %s failed: %s",
                                len(payloads), receiver.name, failure(receiver, exc))
                self._refresh_failing.add(receiver.name)
            else:
                if receiver.name in self._refresh_failing:
                    log.info("re-sending firing episodes to %s works again", receiver.name)
                self._refresh_failing.discard(receiver.name)
        return len(payloads)

    def make_durable(self, conn: psycopg.Connection) -> bool:
        """Return once every commit this session has seen is flushed to the WAL (False:
        stopped before that)."""
        if self._wal_message:
            try:
                with conn.transaction():
                    conn.execute(_SYNCHRONOUS_FLUSH)
                return True
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction) as exc:
                self._wal_message = False
                log.warning(
                    "alert delivery: pg_logical_emit_message is refused (%s); waiting for the "
                    "WAL writer to flush each round instead (up to wal_writer_delay longer)",
                    str(exc).strip(),
                )
        return wait_until_flushed(conn, self._stop)

    def _attempt(self, row: OutboxRow) -> Attempt:
        delivered, error = [], None
        sending = self._to_send(row)
        for receiver in sending:
            try:
                self._post(receiver, row)
                delivered.append(receiver.name)
            except Exception as exc:  # any failure of a receiver means: try again later
                error = failure(receiver, exc)
        held = len(sending) < len(targets(row, self.in_force))
        return Attempt(row, tuple(delivered), error, held)

    def _record(self, conn: psycopg.Connection, attempts: Sequence[Attempt], now: datetime) -> None:
        delivered = [a for a in attempts if a.error is None and not a.held]
        took = [a for a in attempts if a.error is None and a.held and a.delivered]
        failed = [a for a in attempts if a.error is not None]
        tries = [a.row.attempts + 1 for a in failed]
        give_up = [
            (now - a.row.created_at).total_seconds() >= self.config.give_up_s for a in failed
        ]
        with conn.transaction():
            if delivered:
                ids = [a.row.outbox_id for a in delivered]
                conn.execute(_DELIVERED, (ids, [" ".join(a.delivered) for a in delivered]))
            if took:
                conn.execute(_TOOK, ([a.row.outbox_id for a in took],
                                     [" ".join(a.delivered) for a in took]))
            if failed:
                conn.execute(_FAILED, (
                    [a.row.outbox_id for a in failed], [" ".join(a.delivered) for a in failed],
                    [a.error for a in failed],
                    [now + timedelta(seconds=backoff(n)) for n in tries], give_up,
                ))
        for attempt, n, gave_up in zip(failed, tries, give_up, strict=True):
            row = attempt.row
            if gave_up:
                log.error("gave up notifying %s of episode %d (%s) after %d tries: %s",
                          row.customer_id, row.episode_id, row.state, n, attempt.error)
            elif n == 1 or n % 10 == 0:
                log.warning("notification of episode %d (%s) failed (try %d): %s",
                            row.episode_id, row.state, n, attempt.error)

    def _http_post(self, receiver: Receiver, row: OutboxRow) -> None:
        self._send(encode(receiver, row.idempotency_key, row.payload, datetime.now(UTC)))

    def _http_post_group(self, group: Group) -> None:
        self._send(encode(group.receiver, group.key, group.body(), datetime.now(UTC)))

    def _send(self, request: Request) -> None:
        status = self._connections.post(request.url, request.body, dict(request.headers))
        if status >= 300:
            raise RuntimeError(f"HTTP {status}")


TEST_EPISODE_ID = 0  # no stored episode has it (ids start at 1)
TEST_CUSTOMER = "HEARTBEAT_TEST"


def test_payloads(now: datetime) -> list[tuple[str, bytes]]:
    """A made-up episode's firing and resolution (episode 0 of customer HEARTBEAT_TEST),
    shaped like the outbox's: what `alerts receivers test` sends, so a receiver shows
    it, and clears it, as it would a real one."""
    stamp = now.isoformat()
    episode = {"episode_id": TEST_EPISODE_ID, "customer_id": TEST_CUSTOMER,
               "kind": "TACHYCARDIA", "severity": "critical", "opened_at": stamp,
               "resolved_at": None, "first_heart_rate": 190, "worst_heart_rate": 190,
               "readings": 1, "first_reading_at": stamp, "last_reading_at": stamp,
               "acknowledged_at": None, "acknowledged_by": None, "resolved_by": "test",
               "test": True}
    return [(state, orjson.dumps({**episode, "state": state,
                                  "resolved_at": stamp if state == "resolved" else None}))
            for state in ("firing", "resolved")]


def send_test(receiver: Receiver, timeout_s: float = 5.0) -> list[tuple[str, int]]:
    """POST the test episode's two transitions to `receiver`; each state and the HTTP
    status it got. Raises what the POST raised (a refused connection, a deadline)."""
    sender, now, answered = _KeptAlive(timeout_s), datetime.now(UTC), []
    for state, payload in test_payloads(now):
        request = encode(receiver, f"{TEST_EPISODE_ID}:{state}:{now.timestamp():.0f}",
                         payload, now)
        answered.append((state, sender.post(request.url, request.body, dict(request.headers))))
    return answered


class _KeptAlive(threading.local):
    """One kept-alive connection per receiver and sending thread.

    The standard library's http.client, not requests or urllib3: measured on the build
    machine, a POST costs about 170 us of CPU here against 470 us through urllib3, and
    this thread shares the interpreter with the consumer at up to a thousand POSTs a
    second (the design rate with every anomaly opening an episode).

    Each POST has `timeout_s` in all: the connection is made within it (per socket
    operation, as http.client does), then `_WATCHDOG` shuts the socket down when the
    POST's deadline passes, whatever the receiver does (a per-operation timeout alone
    lets an answer that drips in a byte at a time hold a sender for ever). At most
    MAX_ANSWER_BYTES of the answer are read; a longer one closes the connection.
    """

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.open: dict[tuple[str, str, int | None], http.client.HTTPConnection] = {}

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        reused = origin in self.open
        deadline = time.monotonic() + self.timeout_s
        try:
            return self._post(origin, path, body, headers, deadline)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # the receiver closed an idle one: once more, within what is left
            return self._post(origin, path, body, headers, deadline)

    def _post(self, origin: tuple[str, str, int | None], path: str, body: bytes,
              headers: dict[str, str], deadline: float) -> int:
        connection = self.open.get(origin)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {self.timeout_s:g} s")
        if connection is None:
            scheme, host, port = origin
            kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            connection = self.open[origin] = kind(host, port, timeout=left)
        token, cut_off = None, False
        try:
            if connection.sock is None:
                connection.connect()
            connection.sock.settimeout(max(0.001, deadline - time.monotonic()))
            token = _WATCHDOG.watch(connection.sock, deadline)
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            del self.open[origin]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no answer within {self.timeout_s:g} s") from exc
            raise
        finally:
            if token is not None:
                cut_off = _WATCHDOG.release(token)
        if cut_off:  # http.client takes the EOF of a shut-down socket as an answer's end
            connection.close()
            del self.open[origin]
            raise TimeoutError(f"no answer within {self.timeout_s:g} s")
        if response.will_close or not response.isclosed() or len(answer) > MAX_ANSWER_BYTES:
            connection.close()  # closing, or an answer left unread
            del self.open[origin]
        return response.status


class _Watchdog:
    """Shuts down sockets whose deadline has passed: one thread for the process, woken
    every TICK_S (a deadline is kept within that much)."""

    TICK_S = 0.1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._released: set[int] = set()
        self._shut: set[int] = set()  # shut down, not released yet
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> int:
        with self._lock:
            token = next(self._tokens)
            heapq.heappush(self._heap, (deadline, token, sock))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="alert-post-deadline", daemon=True)
                self._thread.start()
        return token

    def release(self, token: int) -> bool:
        """The POST is over; True when its deadline passed first (its socket was shut)."""
        with self._lock:
            if token in self._shut:
                self._shut.discard(token)
                return True
            self._released.add(token)
            return False

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK_S)
            now, expired = time.monotonic(), []
            with self._lock:
                while self._heap and (self._heap[0][0] <= now
                                      or self._heap[0][1] in self._released):
                    _, token, sock = heapq.heappop(self._heap)
                    if token in self._released:
                        self._released.discard(token)
                    else:
                        expired.append(sock)
                        self._shut.add(token)
            for sock in expired:
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()


def wait_until_flushed(conn: psycopg.Connection, stop: threading.Event) -> bool:
    """Wait until the WAL is flushed past everything inserted when this is called (and so
    past every commit the session has seen); False when `stop` was set first."""
    target = one_value(conn, "SELECT pg_current_wal_insert_lsn()")
    while not stop.is_set():
        if one_value(conn, "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (target,)):
            return True
        stop.wait(FLUSH_POLL_S)
    return False


def one_value(conn: psycopg.Connection, sql: str, params: tuple = ()) -> object:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def episodes_lock(conn: psycopg.Connection) -> bool:
    """Try to become the deliverer (held while this session lives)."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LEADER_LOCK,)).fetchone()
    return bool(row and row[0])


def _row(values: tuple) -> OutboxRow:
    (outbox_id, episode_id, customer_id, state, payload, delivered_to, attempts,
     next_attempt_at, created_at, told) = values
    return OutboxRow(outbox_id, episode_id, customer_id, state, payload.encode(),
                     tuple(delivered_to), attempts, next_attempt_at, created_at, tuple(told))
