"""Is the stored offset still right for the broker's log? A pure decision, no client in it.

What a consumer sees is ambiguous on Apache Kafka, and the wrong reading loses or doubles
data (README, "Guarantees: what survives what"):
- a fetch response right after a leader change can carry a high watermark below the
  previous one: the log did not shrink, nothing is to be done;
- an unclean leader election truncates a log under the same topic id: offsets below the
  new end are the messages already read, the ones from the end on are new;
- retention deletes messages nobody read: the log start passed the stored offset (or,
  for a partition the group never read, is above 0);
- a topic deleted and created again (or a memory-only broker restarted) has a new topic id
  and offsets that mean other messages from 0 on.
So a reset or a truncation is declared only on evidence a leader change cannot produce:
a changed topic id, the divergence point the client's leader-epoch validation found
(KIP-320), or a log end below the stored offset as answered by a ListOffsets request
(which KIP-207 makes monotonic). A fetch watermark alone only asks for that check.

The divergence point T matters because the new leader of an unclean election appends from
T: its offsets from T on are other messages than the ones stored there, and a log end
(already past T once the new leader took writes) cannot tell where they start. librdkafka
finds T when its position carries a leader epoch (after fetching; not after a seek or an
assign without one) and, with `auto.offset.reset=error`, reports it only in the text of
the `_AUTO_OFFSET_RESET` error: "Partition log truncation detected at offset P (leader
epoch E): broker end offset is T (offset leader epoch E'). Reset to INVALID.".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Observation:
    """What the client and the broker say about one assigned partition."""

    next_offset: int | None  # stored progress; None: never consumed (started at the log start)
    stored_topic_id: str | None  # the topic id stored with the progress (None: unknown)
    topic_id: str | None  # the topic's id now (None: the broker gives none, or did not say)
    out_of_range: bool = False  # the client reported OFFSET_OUT_OF_RANGE
    fetched_end: int | None = None  # high watermark of a fetch response since assignment
    listed: tuple[int, int] | None = None  # (log start, log end) from a ListOffsets request
    first_read: bool = False  # nothing stored and nothing read yet: where does the log start?
    truncated_at: int | None = None  # the divergence point the client's validation found
    seen_end: int | None = None  # the latest fetch watermark, fresh or not (None: none yet)


@dataclass(frozen=True)
class Continue:
    """Nothing wrong: keep reading where we are."""


@dataclass(frozen=True)
class AskBroker:
    """Ambiguous: ask the broker for the log's start and end (ListOffsets), then decide again."""


@dataclass(frozen=True)
class Resume:
    """Same log: read on from `offset` (retention deleted `lost` unread messages before it)."""

    offset: int
    lost: int = 0


@dataclass(frozen=True)
class NewLog:
    """Another log: a new epoch owns the offsets from `start_offset` on (0 for a whole new
    log, the divergence point or the new end for a truncated one); reading goes on at
    `read_from`. A truncation found by leader-epoch validation also says how many stored
    messages the broker's log no longer holds (`stored_lost`: their rows stay) and how many
    it held past them that were never stored (`unread_lost`, as far as the last fetch
    watermark shows)."""

    start_offset: int
    read_from: int
    reason: str
    stored_lost: int = 0
    unread_lost: int = 0


Action = Continue | AskBroker | Resume | NewLog


def decide(seen: Observation) -> Action:
    """The action for one partition; see the module docstring for why each rule holds."""
    stored, known_before, known_now = seen.next_offset, seen.stored_topic_id, seen.topic_id
    if stored is not None and known_before and known_now and known_before != known_now:
        return NewLog(
            0, 0, f"the topic's id is now {known_now}, progress was stored under {known_before}"
        )
    if stored is not None and seen.truncated_at is not None:
        return _diverged(stored, seen.truncated_at, seen.seen_end)
    suspicious = seen.out_of_range or seen.first_read or (
        stored is not None and seen.fetched_end is not None and seen.fetched_end < stored
    )
    if not suspicious:
        return Continue()
    if seen.listed is None:
        return AskBroker()
    start, end = max(seen.listed[0], 0), seen.listed[1]
    if stored is None or stored < start:  # offsets below the start were never stored
        return Resume(start, lost=start - (stored or 0))
    if stored <= end:
        return Resume(stored)  # a stale watermark (leader change) or a passing error
    if known_before and known_now:  # the same id: the log was truncated
        return NewLog(
            end, end,
            f"the log was truncated: it ends at offset {end} but {stored} were already "
            "stored (an unclean leader election); offsets below the end are the same messages",
        )
    return NewLog(
        0, start,
        f"the broker's log ends at offset {end} but {stored} were already stored, and no "
        "topic id tells a truncated log from a new one: reading the new log from its start "
        "(repeated readings are recognised; a repeated dead letter may be stored again)",
    )


def _diverged(stored: int, at: int, seen_end: int | None) -> NewLog:
    """The log diverged at `at` (an unclean leader election): the offsets below it are the
    messages already read, the ones from it on belong to a new log. What was stored from
    `at` on stays stored under the old epoch; what the old log held past both was lost by
    the broker before it was stored."""
    stored_lost = max(0, stored - at)
    unread_lost = max(0, (seen_end or 0) - max(stored, at))
    reason = (f"the log was truncated at offset {at} (an unclean leader election: the "
              "client's leader-epoch validation found where the new leader's log diverges)")
    if stored_lost:
        reason += (f"; {stored_lost} stored messages at offsets {at}..{stored - 1} are no "
                   "longer in the broker's log (their rows stay, under the previous epoch)")
    if unread_lost:
        reason += (f"; {unread_lost} messages the old log held at offsets "
                   f"{max(stored, at)}..{max(stored, at) + unread_lost - 1} were lost by the "
                   "broker before they were stored")
    return NewLog(at, min(stored, at), reason, stored_lost, unread_lost)


_TRUNCATION = re.compile(r"log truncation detected at .*?broker end offset is (\d+)",
                         re.IGNORECASE | re.DOTALL)


def truncation_point(reset: str) -> int | None:
    """The divergence point in the text of librdkafka's offset-reset error (None: the reset
    was not a truncation found by leader-epoch validation, e.g. OFFSET_OUT_OF_RANGE)."""
    found = _TRUNCATION.search(reset)
    return int(found.group(1)) if found else None


def topic_id_to_decide(
    ask: Callable[[], str | None], stored_under_id: bool, waits: Iterable[float],
    wait: Callable[[float], bool],
) -> str | None:
    """The topic's id now, asked again after each of `waits` while the broker does not say
    and progress was stored under an id: without the id a topic created again, whose new
    log is already longer than the stored offset, looks like the old log, and reading it
    from the stored offset would skip its first messages. `wait` returns True to give up
    (stopping). A broker that never gives ids is asked once."""
    found = ask()
    if found is not None or not stored_under_id:
        return found
    for seconds in waits:
        if wait(seconds):
            return None
        found = ask()
        if found is not None:
            return found
    return None


class LogWatch:
    """Which assigned partitions need a decision, from what the client reported.

    A fetch watermark counts only once it differs from the one cached at assignment (or at
    the last decision): a value cached before any fetch response, or a broker query that
    lags behind (the embedded broker's does), must not look like a shrunken log. An
    out-of-range report stays pending until a decision was made on it.
    """

    def __init__(self) -> None:
        self._baseline: dict[int, int] = {}
        self._out_of_range: set[int] = set()
        self._truncated: dict[int, int] = {}

    def assigned(self, partition: int, cached_end: int) -> None:
        self._baseline[partition] = cached_end

    def forget(self, partition: int) -> None:
        self._baseline.pop(partition, None)
        self._out_of_range.discard(partition)
        self._truncated.pop(partition, None)

    def out_of_range(self, partitions: set[int]) -> None:
        self._out_of_range |= partitions

    def reset(self, partition: int, text: str) -> None:
        """The client reset its position; `text`: what it said (maybe a divergence point)."""
        self._out_of_range.add(partition)
        at = truncation_point(text)
        if at is not None:
            self._truncated[partition] = at

    def observe(
        self, partition: int, next_offset: int | None, topic_id: str | None, cached_end: int
    ) -> Observation:
        """What the client says now, for `decide` (the broker not asked yet)."""
        fresh = cached_end >= 0 and cached_end != self._baseline.get(partition)
        return Observation(
            next_offset, topic_id, topic_id,
            out_of_range=partition in self._out_of_range,
            fetched_end=cached_end if fresh else None,
            truncated_at=self._truncated.get(partition),
            seen_end=cached_end if cached_end >= 0 else None,
        )

    def decided(self, partition: int, cached_end: int) -> None:
        """A decision was acted on: the watermark seen then is the new baseline."""
        self._out_of_range.discard(partition)
        self._truncated.pop(partition, None)
        self._baseline[partition] = cached_end

    def retry(self, partition: int) -> None:
        """The broker did not answer: look again on the next round."""
        self._out_of_range.add(partition)
