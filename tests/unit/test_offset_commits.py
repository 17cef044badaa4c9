from __future__ import annotations

from heartbeat_platform.streaming.offset_commits import OffsetCommitPolicy


def test_commits_at_most_once_a_second_with_the_latest_offsets() -> None:
    policy = OffsetCommitPolicy(every_s=1.0)
    assert policy.due(0.0) == {}
    policy.stored(0, 10)
    assert policy.due(100.0) == {0: 10}
    policy.stored(0, 20)
    policy.stored(1, 5)
    assert policy.due(100.5) == {}  # too soon
    policy.stored(0, 30)
    assert policy.due(101.0) == {0: 30, 1: 5}
    assert policy.due(200.0) == {}  # nothing new


def test_force_commits_now_and_lost_partitions_are_not_committed() -> None:
    policy = OffsetCommitPolicy(every_s=1.0)
    policy.stored(0, 10)
    assert policy.due(0.0) == {0: 10}
    policy.stored(0, 11)
    policy.stored(2, 7)
    policy.forget([2])
    assert policy.due(0.1, force=True) == {0: 11}
