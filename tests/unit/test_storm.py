"""Storm grouping (alerting/storm.py): examples, the issue's burst of 1,000 episodes in 5 s,
and properties over random arrival times."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heartbeat_platform.alerting.storm import (
    Release,
    Storm,
    StormPolicy,
    group_key,
    grouped_payload,
)

POLL_EVERY_S = 0.05  # how often the simulated delivery wakes up besides next_due


def deliver(policy: StormPolicy, arrivals: list[tuple[int, float]], until: float | None = None
            ) -> list[tuple[float, Release[int]]]:
    """A delivery loop on a simulated clock: items offered at their times, `due` called
    whenever next_due says and every POLL_EVERY_S; each release is one request."""
    storm: Storm[int] = Storm(policy)
    sent: list[tuple[float, Release[int]]] = []
    end = until if until is not None else max((t for _, t in arrivals), default=0.0) + 120
    pending = sorted(arrivals, key=lambda arrival: arrival[1])
    now, i = 0.0, 0
    while now <= end:
        wake = now + POLL_EVERY_S
        due = storm.next_due()
        if due is not None:
            wake = min(wake, max(due, now))
        if i < len(pending):
            wake = min(wake, pending[i][1])
        now = wake
        sent += [(now, r) for r in storm.due(now)]
        while i < len(pending) and pending[i][1] <= now:
            sent += [(now, r) for r in storm.offer(*pending[i])]
            i += 1
        if i == len(pending) and not storm.in_storm and now > end - 1:
            break
    return sent


def released_items(sent: list[tuple[float, Release[int]]]) -> list[int]:
    return [item for _, release in sent for item in release.items]


# --- the "Done when": 1,000 customers firing within 5 s --------------------------

BURSTS = {
    "uniform": lambda rng: [rng.uniform(0, 5) for _ in range(1000)],
    "all at once": lambda rng: [2.0] * 1000,
    "one every 5 ms": lambda rng: [i * 0.005 for i in range(1000)],
    "a trickle then the rest": lambda rng: [i * 0.5 for i in range(10)] + [4.99] * 990,
    "front loaded": lambda rng: sorted(rng.expovariate(2.0) % 5 for _ in range(1000)),
}


@pytest.mark.parametrize("shape", sorted(BURSTS))
def test_a_burst_of_1000_firings_within_5_s_reaches_the_receiver_in_at_most_20_requests(
    shape: str,
) -> None:
    times = BURSTS[shape](random.Random(20))
    assert len(times) == 1000 and all(0 <= t < 5 for t in times)
    sent = deliver(StormPolicy(), list(enumerate(sorted(times))))
    assert len(sent) <= 20, [(round(at, 2), len(r.items), r.grouped) for at, r in sent]
    assert released_items(sent) == list(range(1000))  # all 1,000 named, once, in order
    singles = [r for _, r in sent if not r.grouped]
    assert len(singles) == StormPolicy().group_over  # the first ten, one by one


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_any_1000_firings_within_5_s_take_at_most_16_requests_at_the_defaults(seed: int) -> None:
    rng = random.Random(seed)
    times = sorted(rng.choice([rng.uniform(0, 5), rng.uniform(0, 0.1), 4.999])
                   for _ in range(1000))
    sent = deliver(StormPolicy(), list(enumerate(times)))
    assert released_items(sent) == list(range(1000))
    assert len(sent) <= 10 + 6  # group_over singles, then at most one group a second


def test_a_group_is_one_json_object_with_the_per_episode_objects() -> None:
    payloads = [{"episode_id": 1, "state": "firing"}, {"episode_id": 2, "state": "firing"}]
    assert grouped_payload(payloads) == {"episodes": payloads}
    assert group_key(["1:firing", "2:firing"]) == group_key(["1:firing", "2:firing"])
    assert group_key(["1:firing", "2:firing"]) != group_key(["1:firing", "3:firing"])
    assert group_key(["1:firing"]).startswith("group:1:")


# --- examples ----------------------------------------------------------------------------


def test_below_the_limit_every_notification_goes_out_at_once_and_alone() -> None:
    storm: Storm[str] = Storm(StormPolicy(group_over=3, window_s=10))
    for n, at in enumerate([0.0, 1.0, 2.0, 20.0, 21.0, 22.0]):
        assert storm.offer(f"e{n}", at) == [Release((f"e{n}",), grouped=False)]
    assert not storm.in_storm and storm.next_due() is None


def test_past_the_limit_notifications_are_held_and_grouped_until_the_storm_ends() -> None:
    storm: Storm[str] = Storm(StormPolicy(group_over=2, window_s=10, send_every_s=1))
    assert storm.offer("a", 0.0) == [Release(("a",), False)]
    assert storm.offer("b", 0.1) == [Release(("b",), False)]
    assert storm.offer("c", 0.2) == []  # the third within 10 s: a storm, held
    assert storm.in_storm and storm.next_due() == pytest.approx(1.2)
    assert storm.offer("d", 0.5) == []
    assert storm.due(1.2) == [Release(("c", "d"), grouped=True)]
    assert storm.offer("e", 1.5) == []
    assert storm.offer("f", 2.3) == [Release(("e", "f"), grouped=True)]  # a second on
    assert storm.offer("g", 2.4) == []
    assert storm.next_due() == pytest.approx(3.3)
    # "g" would go at 3.3; with nothing more the storm ends 10 s after "e", the oldest of
    # the newest three: then single notifications again
    assert storm.due(3.3) == [Release(("g",), grouped=True)]
    assert storm.next_due() == pytest.approx(11.5)
    assert storm.due(11.5) == [] and not storm.in_storm
    assert storm.offer("h", 12.3) == [Release(("h",), False)]  # "f" (2.3) is 10 s old
    assert storm.offer("i", 12.35) == []  # "g", "h", "i" within 10 s: a storm again


def test_a_storm_that_ends_sends_what_it_holds_before_anything_later() -> None:
    storm: Storm[str] = Storm(StormPolicy(group_over=1, window_s=2, send_every_s=5))
    storm.offer("a", 0.0)
    assert storm.offer("b", 0.5) == []  # storm
    assert storm.next_due() == pytest.approx(2.0)  # "a" 2 s old: ends before the 5 s
    assert storm.offer("c", 3.0) == [Release(("b",), grouped=True), Release(("c",), False)]


def test_group_over_zero_turns_grouping_off() -> None:
    storm: Storm[int] = Storm(StormPolicy(group_over=0))
    assert [storm.offer(n, 0.0) for n in range(100)] == [[Release((n,), False)] for n in range(100)]
    assert not storm.in_storm and storm.next_due() is None


def test_a_clock_that_goes_back_counts_as_the_time_already_seen() -> None:
    storm: Storm[str] = Storm(StormPolicy(group_over=1, window_s=10, send_every_s=1))
    storm.offer("a", 5.0)
    assert storm.offer("b", 1.0) == []  # counted at 5.0: a storm
    assert storm.due(5.5) == [] and storm.due(6.0) == [Release(("b",), True)]


@pytest.mark.parametrize(
    "arguments", [{"group_over": -1}, {"window_s": 0}, {"send_every_s": 0.0}]
)
def test_a_policy_refuses_nonsense(arguments: dict) -> None:
    with pytest.raises(ValueError):
        StormPolicy(**arguments)


# --- properties over random arrivals -----------------------------------------------------

policies = st.builds(
    StormPolicy,
    group_over=st.integers(0, 5),
    window_s=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    send_every_s=st.sampled_from([0.2, 1.0, 2.0]),
)
gaps = st.lists(st.sampled_from([0.0, 0.001, 0.05, 0.3, 1.0, 4.0, 15.0]), max_size=150)


def arrivals_of(gap_list: list[float]) -> list[tuple[int, float]]:
    at, arrivals = 0.0, []
    for n, gap in enumerate(gap_list):
        at += gap
        arrivals.append((n, at))
    return arrivals


@settings(max_examples=200, deadline=None)
@given(policy=policies, gap_list=gaps)
def test_every_item_goes_out_once_in_order_and_no_group_waits_longer_than_it_should(
    policy: StormPolicy, gap_list: list[float]
) -> None:
    arrivals = arrivals_of(gap_list)
    offered_at = dict(arrivals)
    sent = deliver(policy, arrivals)
    assert released_items(sent) == [n for n, _ in arrivals]
    for at, release in sent:
        first = offered_at[release.items[0]]
        if release.grouped:
            assert policy.enabled
            # a group waits for its cadence (or the storm's end), plus the poll's step
            assert at - first <= max(policy.send_every_s, policy.window_s) + POLL_EVERY_S
        else:
            assert len(release.items) == 1 and at == pytest.approx(first, abs=POLL_EVERY_S)


@settings(max_examples=200, deadline=None)
@given(policy=policies, gap_list=gaps)
def test_at_most_group_over_single_notifications_in_any_window(
    policy: StormPolicy, gap_list: list[float]
) -> None:
    sent = deliver(policy, arrivals_of(gap_list))
    if not policy.enabled:
        assert all(not r.grouped for _, r in sent)
        return
    singles = [at for at, r in sent if not r.grouped]
    for i, at in enumerate(singles):
        within = [t for t in singles[i:] if t - at < policy.window_s - POLL_EVERY_S]
        assert len(within) <= policy.group_over
