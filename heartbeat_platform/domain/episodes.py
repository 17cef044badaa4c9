"""Episodes: the stretches of trouble that notify a person, as pure functions.

Single anomalous readings still give a banner and an ``alert_<type>`` row (domain.alerts);
a person is told about *episodes* instead, because most single-reading alarms are not
actionable (alarm fatigue). An episode is one stretch of trouble of one customer and one
:class:`EpisodeKind`. It starts firing once it holds both ``min_readings`` readings of its
kind in a row and ``delay`` of them sustained (from the first reading of the run to the
current one, by the readings' own times, so a replay decides the same), and resolves after
``resolve_after_normal`` NORMAL readings in a row; ``NO_SIGNAL`` is opened by a scheduled
job (:func:`silent_customers`) and resolved by the next reading.

The consumer's batch writer calls :func:`advance` inside the batch's transaction and
stores what it returns, so a crash or a replay never opens, resolves or notifies an
episode twice. Everything here is plain Python: no Kafka, database or orchestration.

Decisions the rules leave open, made here:

* A reading at or before the newest ``last_evaluated_at`` of the customer's episodes
  passed in (open or resolved) never *starts* an episode: it is a repeat or arrived late.
  Resolved episodes may be passed to :func:`advance` for exactly this, so that replaying
  a batch whose episode already resolved does not open it again.
* ``worst_heart_rate`` of a SENSOR_FAULT is measured against the fixed 40..180 range of
  the storage classification, not the customer's bounds; on a tie the earlier value stays.
* Within one reading, transitions come in this order: NO_SIGNAL resolved, other episodes
  resolved (by kind), then the reading's own kind firing.
* Sustained means seen throughout: while an episode is pending under a ``delay``, a
  silence between two of its readings longer than the delay itself restarts the run at the
  later reading (readings at 0 s and 60 s say nothing of the 59 s between). With no delay
  a silence changes nothing, as before delays existed.
* ``NO_SIGNAL`` takes neither ``min_readings`` nor ``delay``: the job opens it firing, its
  silence has already lasted ``HEARTBEAT_NO_SIGNAL_AFTER_S``.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal

from heartbeat_platform.domain.events import (
    NORMAL_HIGH,
    NORMAL_LOW,
    HeartbeatClass,
    classify_heart_rate,
)

__all__ = [
    "DEFAULT_DELAY",
    "SEVERITY",
    "AlertBounds",
    "Episode",
    "EpisodeKind",
    "EpisodeReading",
    "EpisodeState",
    "NO_SIGNAL_AFTER",
    "SEEN_WITHIN",
    "Outcome",
    "Rules",
    "Transition",
    "advance",
    "episode_kind",
    "no_signal_episode",
    "silent_customers",
]


class EpisodeKind(enum.StrEnum):
    """What is wrong; stored and sent as text."""

    TACHYCARDIA = "TACHYCARDIA"
    BRADYCARDIA = "BRADYCARDIA"
    SENSOR_FAULT = "SENSOR_FAULT"
    NO_SIGNAL = "NO_SIGNAL"


class EpisodeState(enum.StrEnum):
    """Where an episode is in its life; only ``firing`` and ``resolved`` are ever notified."""

    PENDING = "pending"  # fewer than min_readings of its kind in a row so far
    FIRING = "firing"
    RESOLVED = "resolved"


# A heart that is too fast or too slow may need help now; a device fault or silence needs
# someone to look at the device.
SEVERITY: Mapping[EpisodeKind, str] = MappingProxyType(
    {
        EpisodeKind.TACHYCARDIA: "critical",
        EpisodeKind.BRADYCARDIA: "critical",
        EpisodeKind.SENSOR_FAULT: "warning",
        EpisodeKind.NO_SIGNAL: "warning",
    }
)

# Kinds in the order their transitions are listed when one reading causes several.
_TRANSITION_ORDER = (
    EpisodeKind.NO_SIGNAL,
    EpisodeKind.TACHYCARDIA,
    EpisodeKind.BRADYCARDIA,
    EpisodeKind.SENSOR_FAULT,
)


@dataclass(frozen=True)  # no slots: AlertBounds.bradycardia_below reads the default
class AlertBounds:
    """A customer's episode thresholds, e.g. lower for an athlete resting at 38 bpm.

    Only episodes use them; storage keeps classifying with ``classify_heart_rate``. Never
    refused here, so a nonsensical override cannot stop the consumer: where the two
    overlap a rate is BRADYCARDIA (check overrides where people set them).
    """

    bradycardia_below: int = NORMAL_LOW  # BRADYCARDIA when 0 < bpm < this
    tachycardia_above: int = NORMAL_HIGH  # TACHYCARDIA when MAX_HEART_RATE >= bpm > this


DEFAULT_BOUNDS = AlertBounds()


def episode_kind(heart_rate: int, bounds: AlertBounds = DEFAULT_BOUNDS) -> EpisodeKind | None:
    """The kind of episode a reading belongs to, or None when it is NORMAL for episodes.

    A rate the storage classifies INVALID is a sensor fault whatever the bounds: bounds
    move the clinical thresholds, never what a device can physically report.
    """
    if classify_heart_rate(heart_rate) is HeartbeatClass.INVALID:
        return EpisodeKind.SENSOR_FAULT
    if heart_rate < bounds.bradycardia_below:
        return EpisodeKind.BRADYCARDIA
    if heart_rate > bounds.tachycardia_above:
        return EpisodeKind.TACHYCARDIA
    return None


def _every_kind_once() -> Mapping[EpisodeKind, int]:
    return MappingProxyType(dict.fromkeys(EpisodeKind, 1))


# The alarm-condition delay by default (README, Alerts: "Calm by default", has the figures):
# a heart too fast or too slow for 10 s (an ECG monitor must raise a tachycardia alarm
# within about 10 s, IEC 60601-2-27; a 14 s delay removes about half of the non-actionable
# alarms, Goerges et al. 2009), a device reading nonsense for 30 s (a warning: someone
# looks at the device, nobody runs).
DEFAULT_DELAY: Mapping[EpisodeKind, timedelta] = MappingProxyType(
    {
        EpisodeKind.TACHYCARDIA: timedelta(seconds=10),
        EpisodeKind.BRADYCARDIA: timedelta(seconds=10),
        EpisodeKind.SENSOR_FAULT: timedelta(seconds=30),
        EpisodeKind.NO_SIGNAL: timedelta(0),  # not used: see the module docstring
    }
)


def _default_delay() -> Mapping[EpisodeKind, timedelta]:
    return DEFAULT_DELAY


@dataclass(frozen=True, slots=True)
class Rules:
    """Debouncing: how many readings, sustained how long, open an episode, and how many
    NORMAL ones close it. An episode fires when both its ``min_readings`` and its
    ``delay`` are reached; ``min_readings=1`` and a zero delay fire at the first reading."""

    # readings of the kind in a row before it fires; kinds left out fire at the first one
    min_readings: Mapping[EpisodeKind, int] = field(default_factory=_every_kind_once)
    resolve_after_normal: int = 3  # NORMAL readings in a row that resolve an open episode
    # time from the run's first reading to the current one before it fires (reading
    # times, not the clock); kinds left out keep DEFAULT_DELAY's
    delay: Mapping[EpisodeKind, timedelta] = field(default_factory=_default_delay)

    def __post_init__(self) -> None:
        # a private read-only copy: the caller's dict may change, the rules must not
        complete = dict.fromkeys(EpisodeKind, 1) | dict(self.min_readings)
        if any(count < 1 for count in complete.values()):
            raise ValueError(f"min_readings must be at least 1 for every kind: {complete}")
        if self.resolve_after_normal < 1:
            raise ValueError(
                f"resolve_after_normal must be at least 1: {self.resolve_after_normal}"
            )
        delays = dict(DEFAULT_DELAY) | dict(self.delay)
        if any(delay < timedelta(0) for delay in delays.values()):
            raise ValueError(f"delay must not be negative for any kind: {delays}")
        object.__setattr__(self, "min_readings", MappingProxyType(complete))
        object.__setattr__(self, "delay", MappingProxyType(delays))

    def fires(self, episode: Episode) -> bool:
        """Whether a pending episode has what it takes to fire: enough readings of its
        kind in a row, sustained long enough."""
        return (
            episode.readings >= self.min_readings[episode.kind]
            and episode.last_reading_at - episode.first_reading_at >= self.delay[episode.kind]
        )

    def breaks_run(self, episode: Episode, at: datetime) -> bool:
        """Whether a reading at `at` of a pending episode's kind comes after a silence too
        long to count as sustained (longer than a delay; no delay: never)."""
        delay = self.delay[episode.kind]
        return bool(delay) and at - episode.last_reading_at > delay


DEFAULT_RULES = Rules()
# NO_SIGNAL: a customer seen within SEEN_WITHIN (a device put away for longer is no longer
# watched) but silent for NO_SIGNAL_AFTER (HEARTBEAT_NO_SIGNAL_AFTER_S reads this default).
NO_SIGNAL_AFTER = timedelta(minutes=10)
SEEN_WITHIN = timedelta(hours=24)
_NO_OVERRIDES: Mapping[str, AlertBounds] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class EpisodeReading:
    """The part of a reading that episodes need."""

    customer_id: str
    reading_at: datetime
    heart_rate: int


@dataclass(frozen=True, slots=True)
class Episode:
    """One stretch of trouble of one customer and kind: a row of the episodes table."""

    episode_id: int | None  # None until stored: the writer assigns ids
    customer_id: str
    kind: EpisodeKind
    state: EpisodeState
    opened_at: datetime | None  # the `now` of the batch that fired it; None while pending
    resolved_at: datetime | None
    first_heart_rate: int
    # max bpm for TACHYCARDIA, min for BRADYCARDIA, furthest from 40..180 for SENSOR_FAULT
    worst_heart_rate: int
    readings: int  # readings of its kind that joined it
    first_reading_at: datetime
    last_reading_at: datetime
    normal_streak: int  # NORMAL readings in a row since its last reading of its kind
    # event time of the newest reading of this customer applied to it; older or equal
    # readings are repeats and change nothing
    last_evaluated_at: datetime

    @property
    def is_open(self) -> bool:
        return self.state is not EpisodeState.RESOLVED

    @property
    def key(self) -> tuple[str, EpisodeKind, datetime]:
        """Identifies an episode before it has an id (within one :func:`advance` call, a
        transition's snapshot and the row in ``Outcome.episodes`` share it)."""
        return (self.customer_id, self.kind, self.first_reading_at)

    @property
    def severity(self) -> str:
        return SEVERITY[self.kind]


@dataclass(frozen=True, slots=True)
class Transition:
    """A change a person is told about; ``episode`` is the episode as it was at that moment
    (its ``episode_id`` is None when it was new in the batch: see :attr:`Episode.key`)."""

    episode: Episode
    state: Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the writer stores in the batch's transaction."""

    episodes: list[Episode]  # every episode whose row changed, in its latest version
    dropped: list[Episode]  # stored pending episodes broken before firing: delete them
    transitions: list[Transition]  # to the outbox, in order per customer


def advance(
    open_episodes: Iterable[Episode],
    readings: Iterable[EpisodeReading],
    now: datetime,
    rules: Rules = DEFAULT_RULES,
    bounds: Mapping[str, AlertBounds] = _NO_OVERRIDES,
) -> Outcome:
    """Apply a batch of readings to the customers' open episodes.

    Each customer's readings are applied one at a time in ``reading_at`` order (ties keep
    their order in ``readings``), and all the state carried from one reading to the next
    is in the episodes, so splitting a stream into batches differently gives the same
    transitions as long as the writer passes back what it stored. ``open_episodes`` holds
    the pending and firing episodes of the customers concerned (at most one per customer
    and kind); resolved ones may be added and are only used to recognise repeats.
    """
    customers: dict[str, _CustomerEpisodes] = {}
    for episode in open_episodes:
        customer = customers.get(episode.customer_id)
        if customer is None:
            customer = customers[episode.customer_id] = _CustomerEpisodes()
        customer.load(episode)

    readings_by_customer: dict[str, list[EpisodeReading]] = {}
    for reading in readings:
        readings_by_customer.setdefault(reading.customer_id, []).append(reading)

    outcome = Outcome([], [], [])
    for customer_id in sorted(readings_by_customer):
        customer = customers.get(customer_id)
        if customer is None:
            customer = _CustomerEpisodes()
        customer_bounds = bounds.get(customer_id, DEFAULT_BOUNDS)
        batch = readings_by_customer[customer_id]
        batch.sort(key=_reading_time)
        for reading in batch:
            customer.apply(reading, episode_kind(reading.heart_rate, customer_bounds), now, rules)
        customer.report_to(outcome)
    return outcome


def _reading_time(reading: EpisodeReading) -> datetime:
    return reading.reading_at


class _CustomerEpisodes:
    """The episodes of one customer while a batch is applied (mutable, private)."""

    __slots__ = ("changed", "dropped", "open", "stored_keys", "transitions", "watermark")

    def __init__(self) -> None:
        self.open: dict[EpisodeKind, Episode] = {}
        self.watermark: datetime | None = None  # newest last_evaluated_at of resolved ones
        self.stored_keys: set[tuple[str, EpisodeKind, datetime]] = set()
        self.changed: dict[tuple[str, EpisodeKind, datetime], Episode] = {}
        self.dropped: list[Episode] = []
        self.transitions: list[Transition] = []

    def load(self, episode: Episode) -> None:
        if not episode.is_open:
            self._raise_watermark(episode.last_evaluated_at)
            return
        if episode.kind in self.open:
            raise ValueError(
                f"two open {episode.kind} episodes of {episode.customer_id}: "
                f"{self.open[episode.kind]!r} and {episode!r}"
            )
        self.open[episode.kind] = episode
        self.stored_keys.add(episode.key)

    def apply(
        self, reading: EpisodeReading, kind: EpisodeKind | None, now: datetime, rules: Rules
    ) -> None:
        if kind is None and not self.open:
            return  # the common case: a NORMAL reading of a customer with nothing open
        at = reading.reading_at
        newest_applied = self.watermark
        for open_episode in self.open.values():
            if newest_applied is None or open_episode.last_evaluated_at > newest_applied:
                newest_applied = open_episode.last_evaluated_at
        for open_kind in _TRANSITION_ORDER:
            episode = self.open.get(open_kind)
            if episode is None:
                continue
            if at <= episode.last_evaluated_at:
                continue  # a repeat for this episode
            if open_kind is EpisodeKind.NO_SIGNAL:
                self._resolve(replace(episode, last_evaluated_at=at), now)
            elif open_kind is kind:
                if episode.state is EpisodeState.PENDING and rules.breaks_run(episode, at):
                    self._drop(episode)  # a new run starts at this reading, below
                else:
                    self._join(episode, reading, now, rules)
            elif episode.state is EpisodeState.PENDING:
                self._drop(episode)  # its readings are no longer in a row
            elif kind is None:
                self._count_normal(episode, at, now, rules)
            else:
                self._save(replace(episode, normal_streak=0, last_evaluated_at=at))
        if (
            kind is not None
            and kind not in self.open
            and (newest_applied is None or at > newest_applied)
        ):
            self._start(kind, reading, now, rules)

    def _start(
        self, kind: EpisodeKind, reading: EpisodeReading, now: datetime, rules: Rules
    ) -> None:
        # a run of one reading: enough when one reading is and no delay is asked for
        fires = rules.min_readings[kind] <= 1 and not rules.delay[kind]
        episode = Episode(
            episode_id=None,
            customer_id=reading.customer_id,
            kind=kind,
            state=EpisodeState.FIRING if fires else EpisodeState.PENDING,
            opened_at=now if fires else None,
            resolved_at=None,
            first_heart_rate=reading.heart_rate,
            worst_heart_rate=reading.heart_rate,
            readings=1,
            first_reading_at=reading.reading_at,
            last_reading_at=reading.reading_at,
            normal_streak=0,
            last_evaluated_at=reading.reading_at,
        )
        self._save(episode)
        if fires:
            self.transitions.append(Transition(episode, "firing"))

    def _join(self, episode: Episode, reading: EpisodeReading, now: datetime, rules: Rules) -> None:
        joined = replace(
            episode,
            readings=episode.readings + 1,
            worst_heart_rate=_worse(episode.kind, episode.worst_heart_rate, reading.heart_rate),
            last_reading_at=reading.reading_at,
            normal_streak=0,
            last_evaluated_at=reading.reading_at,
        )
        fires = joined.state is EpisodeState.PENDING and rules.fires(joined)
        if fires:
            joined = replace(joined, state=EpisodeState.FIRING, opened_at=now)
        self._save(joined)
        if fires:
            self.transitions.append(Transition(joined, "firing"))

    def _count_normal(self, episode: Episode, at: datetime, now: datetime, rules: Rules) -> None:
        counted = replace(episode, normal_streak=episode.normal_streak + 1, last_evaluated_at=at)
        if counted.normal_streak >= rules.resolve_after_normal:
            self._resolve(counted, now)
        else:
            self._save(counted)

    def _resolve(self, episode: Episode, now: datetime) -> None:
        resolved = replace(episode, state=EpisodeState.RESOLVED, resolved_at=now)
        del self.open[resolved.kind]
        self.changed[resolved.key] = resolved
        self._raise_watermark(resolved.last_evaluated_at)
        self.transitions.append(Transition(resolved, "resolved"))

    def _drop(self, episode: Episode) -> None:
        del self.open[episode.kind]
        self.changed.pop(episode.key, None)
        if episode.key in self.stored_keys:
            self.dropped.append(episode)  # one that was never stored needs no delete

    def _save(self, episode: Episode) -> None:
        self.open[episode.kind] = episode
        self.changed[episode.key] = episode

    def _raise_watermark(self, at: datetime) -> None:
        if self.watermark is None or at > self.watermark:
            self.watermark = at

    def report_to(self, outcome: Outcome) -> None:
        outcome.episodes.extend(self.changed.values())
        outcome.dropped.extend(self.dropped)
        outcome.transitions.extend(self.transitions)


def _worse(kind: EpisodeKind, worst: int, heart_rate: int) -> int:
    """The worse of two rates for an episode of `kind`; the earlier one on a tie."""
    if kind is EpisodeKind.TACHYCARDIA:
        return max(worst, heart_rate)
    if kind is EpisodeKind.BRADYCARDIA:
        return min(worst, heart_rate)
    if kind is EpisodeKind.SENSOR_FAULT:
        further = _distance_from_normal(heart_rate) > _distance_from_normal(worst)
        return heart_rate if further else worst
    return worst


def _distance_from_normal(heart_rate: int) -> int:
    """How far from the storage classification's NORMAL range (a sensor fault's worst)."""
    if heart_rate < NORMAL_LOW:
        return NORMAL_LOW - heart_rate
    return max(heart_rate - NORMAL_HIGH, 0)


def silent_customers(
    last_seen: Mapping[str, datetime],
    open_no_signal: Collection[str],
    now: datetime,
    after: timedelta = NO_SIGNAL_AFTER,
    seen_within: timedelta = SEEN_WITHIN,
) -> list[str]:
    """Customers that need a NO_SIGNAL episode, sorted.

    They sent a reading within ``seen_within`` (a device put away for good stops being
    watched) but none for ``after``, and have no NO_SIGNAL episode open already.
    """
    return sorted(
        customer_id
        for customer_id, seen in last_seen.items()
        if after <= now - seen <= seen_within and customer_id not in open_no_signal
    )


def no_signal_episode(customer_id: str, last_seen: datetime, now: datetime) -> Episode:
    """A NO_SIGNAL episode, firing at once (silence has already lasted long enough).

    Its reading times are the customer's last reading, so replayed older readings are
    repeats and only a newer reading resolves it.
    """
    return Episode(
        episode_id=None,
        customer_id=customer_id,
        kind=EpisodeKind.NO_SIGNAL,
        state=EpisodeState.FIRING,
        opened_at=now,
        resolved_at=None,
        first_heart_rate=0,
        worst_heart_rate=0,
        readings=0,
        first_reading_at=last_seen,
        last_reading_at=last_seen,
        normal_streak=0,
        last_evaluated_at=last_seen,
    )
