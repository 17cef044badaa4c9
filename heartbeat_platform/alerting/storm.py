"""Storm grouping for one receiver, as a pure state machine: no SQL, no HTTP, no clock.

When more than ``group_over`` notifications are queued for one receiver within
``window_s`` seconds, the receiver is in a storm: from then on what is queued for it is
held and sent as grouped notifications (one JSON object, ``{"episodes": [...]}``, holding
the per-episode objects it would otherwise have received one by one), at most one every
``send_every_s``, until its last ``window_s`` seconds hold ``group_over`` notifications
or fewer again; then what is held goes out as a last group and single notifications
resume. ``group_over=0`` turns grouping off.

What it promises, whatever the times (tests/unit/test_storm.py):

* every item offered is released exactly once, in the order offered, so a customer's
  ``resolved`` never overtakes its ``firing`` (offer a receiver's every transition, not
  only its firings: a burst of resolutions or escalations floods a person as much);
* outside a storm an item is released the moment it is offered; in one, a group waits at
  most ``send_every_s`` after its first item;
* a receiver gets at most ``group_over`` single notifications in any ``window_s``, plus
  at most one group per ``send_every_s``: 1,000 episodes firing within 5 s are at most
  10 + 6 requests at the defaults.

The caller (`delivery.AlertDelivery`, one Storm per webhook receiver) owns the clock:
it calls :meth:`Storm.offer` as rows are queued, and :meth:`Storm.due` when
:meth:`Storm.next_due` says, and POSTs each :class:`Release`. What the wiring keeps:
one Storm per receiver, fed every transition queued for it as it becomes due (a customer's
next one once the one before is done); a group is POSTed as :func:`grouped_payload` with
:func:`group_key` as its Idempotency-Key, retried as the same group (same members, same
key) until it succeeds or is given up, and only then are its members' outbox rows marked
done, so delivery stays at least once per transition.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Release", "Storm", "StormPolicy", "group_key", "grouped_payload"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StormPolicy:
    """When a receiver's notifications are grouped (HEARTBEAT_ALERT_GROUP_*)."""

    # More than this many notifications within window_s: a storm. Ten at once is already
    # more than a person reads one by one; 0 turns grouping off.
    group_over: int = 10
    # The window that counts them; a storm ends once a whole window holds group_over or
    # fewer. A minute: the trickle after a burst (its resolutions) stays grouped too.
    window_s: float = 60.0
    # In a storm, a group at most this often: the latency a group adds (not a setting).
    send_every_s: float = 1.0

    def __post_init__(self) -> None:
        if self.group_over < 0:
            raise ValueError(f"group_over must be 0 (off) or more: {self.group_over}")
        if not self.window_s > 0 or not self.send_every_s > 0:
            raise ValueError(
                f"window_s and send_every_s must be positive: {self.window_s}, "
                f"{self.send_every_s}"
            )

    @property
    def enabled(self) -> bool:
        return self.group_over > 0


@dataclass(frozen=True, slots=True)
class Release(Generic[T]):
    """One request to the receiver: a single item, or a group of them (in a storm)."""

    items: tuple[T, ...]
    grouped: bool


class Storm(Generic[T]):
    """The storm state of one receiver. Times are seconds on any clock that does not go
    back (the delivery's monotonic clock); an earlier time than one seen counts as that."""

    __slots__ = ("_held", "_held_since", "_last_group_at", "_now", "_recent", "policy")

    def __init__(self, policy: StormPolicy | None = None) -> None:
        self.policy = policy or StormPolicy()
        # The newest group_over + 1 offer times: enough to tell "more than group_over
        # within the window" without keeping every time of a storm.
        self._recent: deque[float] = deque(maxlen=self.policy.group_over + 1)
        self._held: list[T] = []
        self._held_since: float | None = None  # None: not in a storm
        self._last_group_at = 0.0  # a storm's start counts as a send: its first group waits
        self._now = float("-inf")

    @property
    def in_storm(self) -> bool:
        return self._held_since is not None

    @property
    def held(self) -> int:
        return len(self._held)

    def offer(self, item: T, at: float) -> list[Release[T]]:
        """Queue `item` at time `at`; what to send now (the item itself outside a storm,
        possibly a group that became due or a storm that ended before it)."""
        if not self.policy.enabled:
            return [Release((item,), grouped=False)]
        now = self._now = max(self._now, at)
        released = self._end_if_calm(now)  # what an ended storm held goes first
        self._recent.append(now)
        if not self.in_storm and self._crowded(now):
            self._held_since, self._last_group_at = now, now
        if not self.in_storm:
            return [*released, Release((item,), grouped=False)]
        self._held.append(item)
        return released + self._send_if_due(now)

    def due(self, now: float) -> list[Release[T]]:
        """What has become due by `now`: a storm's group whose time has come, or, when
        the storm has ended, what it still holds."""
        now = self._now = max(self._now, now)
        if not self.in_storm:
            return []
        return self._end_if_calm(now) or self._send_if_due(now)

    def next_due(self) -> float | None:
        """When :meth:`due` next has something to do (None: only when offered more)."""
        if not self.in_storm:
            return None
        ends = self._recent[0] + self.policy.window_s  # the oldest of the newest over + 1
        if not self._held:
            return ends
        return min(ends, self._last_group_at + self.policy.send_every_s)

    def _crowded(self, now: float) -> bool:
        """More than group_over offers within the window ending at `now`."""
        recent = self._recent
        # written as next_due computes it, so that due(next_due()) always ends the storm
        return len(recent) == recent.maxlen and now < recent[0] + self.policy.window_s

    def _end_if_calm(self, now: float) -> list[Release[T]]:
        if not self.in_storm or self._crowded(now):
            return []
        self._held_since = None
        return self._flush()

    def _send_if_due(self, now: float) -> list[Release[T]]:
        if self._held and now >= self._last_group_at + self.policy.send_every_s:
            self._last_group_at = now
            return self._flush()
        return []

    def _flush(self) -> list[Release[T]]:
        if not self._held:
            return []
        group, self._held = tuple(self._held), []
        return [Release(group, grouped=True)]


def grouped_payload(payloads: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON object of a grouped notification: today's per-episode objects, in order."""
    return {"episodes": [dict(payload) for payload in payloads]}


def group_key(keys: Sequence[str]) -> str:
    """An Idempotency-Key for a group, from its items' own keys (`<episode_id>:<state>`):
    the same group sent again has the same key."""
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]
    return f"group:{len(keys)}:{digest}"
