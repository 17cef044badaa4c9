"""What a person does with alerts (sql/009): list, acknowledge and resolve episodes, follow
notifications as they are queued, and set per-customer alert bounds.

The CLI (`heartbeat-platform alerts ...`) is a thin layer over these functions. Each change
runs in a transaction of its own (`conn.transaction()`: a savepoint when the caller already
has one), and a refusal is a typed `AlertOperationError` whose message is one line for a
person: the CLI prints it and exits 1.

- `acknowledge` only takes a firing episode that nobody acknowledged yet: the first
  acknowledgement (who, when, note) is kept, and stops escalation.
- `resolve` closes a firing episode by hand (`resolved_by` names the person; NULL means
  its readings resolved it) and queues its `resolved` notification in the same
  transaction, so receivers hear it like any other resolution.
- Alert bounds are a history: each `set_override` / `clear_override` inserts a row, none
  is ever updated; the newest row of a (customer, kind) is in force. A change that would
  leave a customer with a bradycardia bound above its tachycardia bound is refused (no
  heart rate would be NORMAL, so no episode of that customer could resolve).
- `OutboxFollower` follows `alert_outbox`: LISTEN on `episodes.NOTIFY_CHANNEL` to wake at
  each commit, and read rows after the last outbox_id seen, so a missed notification only
  delays a row until the next poll. Identities are handed out at INSERT, not at commit: a
  transaction may commit a lower outbox_id after a higher one was read, so ids skipped
  over are looked for again for `gap_grace_s` (ids of rolled-back inserts, or of
  `ON CONFLICT DO NOTHING` repeats, never appear and are forgotten then).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from heartbeat_platform.domain.episodes import AlertBounds, EpisodeKind, EpisodeState
from heartbeat_platform.domain.events import CUSTOMER_ID_RULE, MAX_HEART_RATE, is_customer_id
from heartbeat_platform.storage.database import one_row
from heartbeat_platform.storage.episodes import NOTIFY_CHANNEL, enqueue

OVERRIDE_KINDS = (EpisodeKind.BRADYCARDIA, EpisodeKind.TACHYCARDIA)
THRESHOLD_RANGE = (1, MAX_HEART_RATE)  # a bound a device can report; sql/009 CHECKs it too


class AlertOperationError(Exception):
    """A refused operation; the message is one line that says why."""


class UnknownEpisode(AlertOperationError, LookupError):
    pass


class EpisodeAlreadyResolved(AlertOperationError):
    pass


class EpisodeAlreadyAcknowledged(AlertOperationError):
    pass


class EpisodeNotFiring(AlertOperationError):
    """A pending episode: not notified yet, so nothing to acknowledge or resolve."""


class InvalidRequest(AlertOperationError, ValueError):
    """A value the operation cannot take (empty name, unknown customer id format...)."""


class InvalidOverride(InvalidRequest):
    pass


class NoOverrideInForce(AlertOperationError, LookupError):
    pass


# --- episodes --------------------------------------------------------------------------

@dataclass(frozen=True)
class EpisodeView:
    """An episode as a person sees it (a row of alert_episodes)."""

    episode_id: int
    customer_id: str
    kind: str
    state: str
    severity: str
    opened_at: datetime | None
    resolved_at: datetime | None
    first_heart_rate: int
    worst_heart_rate: int
    readings: int
    first_reading_at: datetime
    last_reading_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    acknowledge_note: str | None
    resolved_by: str | None
    escalated_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.state != EpisodeState.RESOLVED

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO-8601 UTC strings."""
        return {key: _json_value(value) for key, value in asdict(self).items()}


# The columns of alert_episodes a person sees: EpisodeView's fields, in their order.
_EPISODE_COLUMNS = ", ".join(f.name for f in fields(EpisodeView))
_SELECT_EPISODES = f"SELECT {_EPISODE_COLUMNS} FROM alert_episodes"


def list_episodes(
    conn: psycopg.Connection, *, open_only: bool = False, limit: int = 50
) -> list[EpisodeView]:
    """Newest first (by episode_id): the open ones (pending and firing) or the latest of all.

    Both are bounded reads: the open set through its partial index, the latest through the
    primary key, whatever the history holds.
    """
    if limit < 1:
        raise InvalidRequest(f"limit must be at least 1, not {limit}")
    if open_only:
        query = (
            f"WITH open AS MATERIALIZED ({_SELECT_EPISODES} WHERE state <> 'resolved') "
            "SELECT * FROM open ORDER BY episode_id DESC LIMIT %s"
        )
    else:
        query = f"{_SELECT_EPISODES} ORDER BY episode_id DESC LIMIT %s"
    return [EpisodeView(*row) for row in conn.execute(query, (limit,))]


def acknowledge(
    conn: psycopg.Connection, episode_id: int, by: str, note: str | None = None
) -> EpisodeView:
    """Record that `by` has seen this firing episode (when: the database's clock).

    Refused for an unknown, pending, resolved or already acknowledged episode; the first
    acknowledgement stays. An acknowledged episode is not escalated. Its `acknowledged`
    notification is queued in the same transaction.
    """
    person = _person(by)
    with conn.transaction():
        row = conn.execute(
            "UPDATE alert_episodes SET acknowledged_at = clock_timestamp(), "
            "acknowledged_by = %s, acknowledge_note = %s "
            "WHERE episode_id = %s AND state = 'firing' AND acknowledged_at IS NULL "
            f"RETURNING {_EPISODE_COLUMNS}",
            (person, _note(note), episode_id),
        ).fetchone()
        if row is None:
            raise _refusal(conn, episode_id, "acknowledge")
        enqueue(conn, [episode_id], "acknowledged")  # PagerDuty's acknowledge, and others
    return EpisodeView(*row)


def resolve(conn: psycopg.Connection, episode_id: int, by: str) -> EpisodeView:
    """Resolve a firing episode by hand and queue its `resolved` notification, in one
    transaction. Refused for an unknown, pending or already resolved episode. Readings of
    the same kind that arrive later open a new episode."""
    person = _person(by)
    with conn.transaction():
        row = conn.execute(
            "UPDATE alert_episodes SET state = 'resolved', resolved_at = clock_timestamp(), "
            "resolved_by = %s, normal_streak = 0 "
            "WHERE episode_id = %s AND state = 'firing' "
            f"RETURNING {_EPISODE_COLUMNS}",
            (person, episode_id),
        ).fetchone()
        if row is None:
            raise _refusal(conn, episode_id, "resolve")
        enqueue(conn, [episode_id], "resolved")
    return EpisodeView(*row)


def _refusal(conn: psycopg.Connection, episode_id: int, action: str) -> AlertOperationError:
    """Why `action` found no firing (unacknowledged) episode `episode_id`."""
    found = conn.execute(
        "SELECT state, resolved_at, resolved_by, acknowledged_at, acknowledged_by "
        "FROM alert_episodes WHERE episode_id = %s",
        (episode_id,),
    ).fetchone()
    if found is None:
        return UnknownEpisode(f"no episode {episode_id}")
    state, resolved_at, resolved_by, acknowledged_at, acknowledged_by = found
    if state == EpisodeState.RESOLVED:
        return EpisodeAlreadyResolved(
            f"episode {episode_id} is already resolved ({_when(resolved_at)}, "
            f"{'by ' + resolved_by if resolved_by else 'by its readings'}); cannot {action} it"
        )
    if state == EpisodeState.PENDING:
        return EpisodeNotFiring(
            f"episode {episode_id} is pending (not firing, nobody was notified); "
            f"cannot {action} it"
        )
    return EpisodeAlreadyAcknowledged(
        f"episode {episode_id} was already acknowledged by {acknowledged_by} "
        f"({_when(acknowledged_at)})"
    )


# --- the outbox, followed ----------------------------------------------------------------


@dataclass(frozen=True)
class OutboxEntry:
    """One queued transition: a row of alert_outbox with its episode's kind and severity."""

    outbox_id: int
    queued_at: datetime
    episode_id: int
    customer_id: str
    kind: str
    state: str  # firing, resolved, escalated
    severity: str
    payload: dict[str, Any]  # the JSON object the webhooks receive

    def as_dict(self) -> dict[str, Any]:
        return {key: _json_value(value) for key, value in asdict(self).items()}


_SELECT_OUTBOX = """
SELECT o.outbox_id, o.created_at, o.episode_id, o.customer_id, e.kind, o.state, e.severity,
       o.payload
FROM alert_outbox o JOIN alert_episodes e USING (episode_id)
"""


def latest_outbox_id(conn: psycopg.Connection) -> int:
    """The newest outbox_id (0 when the outbox is empty)."""
    return int(one_row(conn.execute("SELECT coalesce(max(outbox_id), 0) FROM alert_outbox"))[0])


def outbox_after(
    conn: psycopg.Connection, after: int, *, also: Sequence[int] = (), limit: int = 500
) -> list[OutboxEntry]:
    """Outbox rows with outbox_id > `after` (and those of the ids in `also`), oldest first."""
    rows = conn.execute(
        f"{_SELECT_OUTBOX} WHERE o.outbox_id > %s OR o.outbox_id = ANY(%s) "
        "ORDER BY o.outbox_id LIMIT %s",
        (after, list(also), limit),
    )
    return [OutboxEntry(*row) for row in rows]


class OutboxFollower:
    """Transitions as they are queued, from an autocommit connection of its own.

    `poll()` returns what is new since the last call (never a row twice); `wait(timeout)`
    sleeps until an outbox commit is announced; `follow()` joins them until told to stop.
    Start at `after` (an outbox_id), or by default at the newest row: only what comes next.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        after: int | None = None,
        *,
        batch: int = 500,
        gap_grace_s: float = 60.0,
        max_gaps: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not conn.autocommit:
            raise ValueError("OutboxFollower needs an autocommit connection (LISTEN)")
        self.conn = conn
        self.batch, self.gap_grace_s, self.max_gaps, self._clock = (
            batch, gap_grace_s, max_gaps, clock
        )
        # LISTEN before reading the start: a commit in between is heard, not lost
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
        self.after = latest_outbox_id(conn) if after is None else after
        self._gaps: dict[int, float] = {}  # outbox_id skipped over -> when it was skipped

    @property
    def gaps(self) -> frozenset[int]:
        """Ids below `after` not seen yet (maybe still being committed)."""
        return frozenset(self._gaps)

    def poll(self) -> list[OutboxEntry]:
        now = self._clock()
        self._gaps = {i: t for i, t in self._gaps.items() if now - t < self.gap_grace_s}
        found = outbox_after(self.conn, self.after, also=sorted(self._gaps), limit=self.batch)
        for entry in found:
            if entry.outbox_id in self._gaps:
                del self._gaps[entry.outbox_id]
            elif entry.outbox_id > self.after:
                skipped = range(max(self.after + 1, entry.outbox_id - self.max_gaps),
                                entry.outbox_id)
                self._gaps.update(dict.fromkeys(skipped, now))
                self.after = entry.outbox_id
        if len(self._gaps) > self.max_gaps:
            for stale in sorted(self._gaps)[: len(self._gaps) - self.max_gaps]:
                del self._gaps[stale]
        return found

    def wait(self, timeout: float) -> bool:
        """Block until a commit queued outbox rows (True) or `timeout` seconds pass."""
        for _ in self.conn.notifies(timeout=timeout, stop_after=1):
            return True
        return False

    def follow(
        self, should_stop: Callable[[], bool] = lambda: False, *, wait_s: float = 1.0
    ) -> Iterator[OutboxEntry]:
        """Every new transition, in outbox_id order per poll, until `should_stop()`.

        Waits at most `wait_s` between polls, so a stop request is seen that quickly.
        """
        while not should_stop():
            found = self.poll()
            yield from found
            if len(found) < self.batch and not should_stop():
                self.wait(wait_s)


# --- per-customer alert bounds ------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """A row of alert_overrides (threshold None: the override was cleared)."""

    override_id: int | None  # None for rows read from vw_alert_overrides_in_force
    customer_id: str
    kind: str
    threshold: int | None
    set_by: str
    set_at: datetime
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        return {key: _json_value(value) for key, value in asdict(self).items()}


_OVERRIDE_COLUMNS = "override_id, customer_id, kind, threshold, set_by, set_at, note"
_INSERT_OVERRIDE = (
    "INSERT INTO alert_overrides (customer_id, kind, threshold, set_by, note) "
    f"VALUES (%s, %s, %s, %s, %s) RETURNING {_OVERRIDE_COLUMNS}"
)


def set_override(
    conn: psycopg.Connection,
    customer_id: str,
    kind: EpisodeKind | str,
    threshold: int,
    by: str,
    note: str | None = None,
) -> Override:
    """Put a customer's bound in force: BRADYCARDIA below `threshold` bpm, TACHYCARDIA above
    it. A new row of history; refused when out of 1..300 or crossing the other bound."""
    customer, chosen, person = _customer(customer_id), _override_kind(kind), _person(by)
    low, high = THRESHOLD_RANGE
    if not low <= threshold <= high:
        raise InvalidOverride(f"threshold {threshold} is outside {low}..{high} bpm")
    with conn.transaction():
        _lock_customer(conn, customer)
        in_force = _bounds_in_force(conn, customer)
        in_force[chosen] = threshold
        _check_bounds(customer, in_force, f"{chosen} {threshold}")
        row = one_row(conn.execute(
            _INSERT_OVERRIDE, (customer, chosen.value, threshold, person, _note(note))
        ))
    return Override(*row)


def clear_override(
    conn: psycopg.Connection,
    customer_id: str,
    kind: EpisodeKind | str,
    by: str,
    note: str | None = None,
) -> Override:
    """Return a customer's bound of `kind` to the default (a history row with no threshold).
    Refused when none is in force, or when the default would cross the other bound."""
    customer, chosen, person = _customer(customer_id), _override_kind(kind), _person(by)
    with conn.transaction():
        _lock_customer(conn, customer)
        in_force = _bounds_in_force(conn, customer)
        if chosen not in in_force:
            raise NoOverrideInForce(f"{customer} has no {chosen} override in force")
        del in_force[chosen]
        _check_bounds(customer, in_force, f"the default {chosen} bound")
        row = one_row(conn.execute(
            _INSERT_OVERRIDE, (customer, chosen.value, None, person, _note(note))
        ))
    return Override(*row)


def overrides_in_force(conn: psycopg.Connection) -> list[Override]:
    """Every override in force (newest row per customer and kind, not cleared)."""
    rows = conn.execute(
        "SELECT NULL::bigint, customer_id, kind, threshold, set_by, set_at, note "
        "FROM vw_alert_overrides_in_force ORDER BY customer_id, kind"
    )
    return [Override(*row) for row in rows]


def override_history(conn: psycopg.Connection, customer_id: str) -> list[Override]:
    """Every change of a customer's bounds, newest first (clears included)."""
    rows = conn.execute(
        f"SELECT {_OVERRIDE_COLUMNS} FROM alert_overrides WHERE customer_id = %s "
        "ORDER BY override_id DESC",
        (_customer(customer_id),),
    )
    return [Override(*row) for row in rows]


def _lock_customer(conn: psycopg.Connection, customer: str) -> None:
    """Serialise bound changes of one customer: two at once must not cross each other."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"alert_overrides:{customer}",)
    )


def _bounds_in_force(conn: psycopg.Connection, customer: str) -> dict[EpisodeKind, int]:
    rows = conn.execute(
        "SELECT kind, threshold FROM vw_alert_overrides_in_force WHERE customer_id = %s",
        (customer,),
    )
    return {EpisodeKind(kind): threshold for kind, threshold in rows}


def _check_bounds(customer: str, bounds: dict[EpisodeKind, int], change: str) -> None:
    """At least one heart rate must stay NORMAL for the customer's episodes: otherwise
    the two bounds overlap (the writer would call such rates BRADYCARDIA) and no run of
    NORMAL readings could ever resolve an episode."""
    defaults = AlertBounds()
    below = bounds.get(EpisodeKind.BRADYCARDIA, defaults.bradycardia_below)
    above = bounds.get(EpisodeKind.TACHYCARDIA, defaults.tachycardia_above)
    if below > above:
        raise InvalidOverride(
            f"{change} for {customer} refused: the BRADYCARDIA bound ({below}) must not "
            f"exceed the TACHYCARDIA bound ({above}), or no heart rate is NORMAL"
        )


def _override_kind(kind: EpisodeKind | str) -> EpisodeKind:
    try:
        chosen = EpisodeKind(str(kind).strip().upper())
    except ValueError:
        chosen = None
    if chosen not in OVERRIDE_KINDS:
        raise InvalidOverride(
            f"{kind!r} has no bound to override; choose {' or '.join(OVERRIDE_KINDS)}"
        )
    return chosen


# --- small helpers -------------------------------------------------------------------------


def _person(by: str) -> str:
    person = by.strip()
    if not person:
        raise InvalidRequest("say who you are: --by NAME must not be empty")
    return person


def _note(note: str | None) -> str | None:
    return (note or "").strip() or None


def _customer(customer_id: str) -> str:
    customer = customer_id.strip()
    if not is_customer_id(customer):
        raise InvalidRequest(f"{customer_id!r} is not a customer id ({CUSTOMER_ID_RULE})")
    return customer


def _when(moment: datetime | None) -> str:
    return "at an unknown time" if moment is None else f"at {format_time(moment)}"


def format_time(moment: datetime) -> str:
    """UTC, to the second: 2026-12-02 05:04:07Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _json_value(value: object) -> object:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value
