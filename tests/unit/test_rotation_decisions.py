"""The rotation's decisions on scripted states: when to rotate, when it is safe, what next."""

from __future__ import annotations

import pytest

from heartbeat_platform.domain.broker_rotation import (
    MB,
    Abort,
    CreateTopic,
    Limits,
    MoveTo,
    Observation,
    Phase,
    Refuse,
    Restart,
    Stay,
    StoredPartition,
    decide,
    lag,
    memory_warning,
)

LIMITS = Limits(max_bytes=100 * MB, max_lag_to_start=1_000, pause_timeout_s=60, adopt_warn_s=60)
OLD, NEW = "old-id", "new-id"


def stored(*offsets: int, topic_id: str = OLD) -> dict[int, StoredPartition]:
    return {p: StoredPartition(o, topic_id) for p, o in enumerate(offsets)}


def seen(phase: Phase, **values) -> Observation:
    defaults = dict(
        in_phase_s=1.0,
        rss_bytes=50 * MB,
        producers_waiting=0,
        log_ends={0: 10, 1: 10, 2: 10},
        stored=stored(10, 10, 10),
        topic_id=OLD,
        topic_id_before=OLD,
        partitions=3,
        expected_partitions=3,
        consumer_members=1,
    )
    if phase is Phase.OPEN:
        defaults["topic_id_before"] = None
    defaults.update(values)
    return Observation(phase, **defaults)


# -- when -----------------------------------------------------------------------------------
def test_below_the_limit_nothing_happens():
    assert decide(seen(Phase.OPEN, rss_bytes=99 * MB), LIMITS) == Stay()


def test_a_broker_that_is_not_running_is_left_alone():
    assert decide(seen(Phase.OPEN, rss_bytes=None), LIMITS) == Stay()


def test_over_the_limit_with_the_consumer_close_behind_the_producers_pause():
    action = decide(seen(Phase.OPEN, rss_bytes=100 * MB, stored=stored(10, 10, 500)), LIMITS)
    assert isinstance(action, MoveTo) and action.phase is Phase.PAUSING


def test_over_the_limit_while_the_consumer_lags_the_rotation_is_refused():
    action = decide(seen(Phase.OPEN, rss_bytes=200 * MB, log_ends={0: 5_000}, stored={}), LIMITS)
    assert isinstance(action, Refuse) and "5,000" in action.reason


def test_over_the_limit_with_unknown_log_ends_the_rotation_is_refused():
    assert isinstance(decide(seen(Phase.OPEN, rss_bytes=200 * MB, log_ends=None), LIMITS), Refuse)


def test_warning_from_80_percent_of_the_limit():
    assert memory_warning(79 * MB, LIMITS) is None
    assert memory_warning(None, LIMITS) is None
    assert "80%" in memory_warning(80 * MB, LIMITS)


# -- whether it is safe -----------------------------------------------------------------------
def test_pausing_waits_for_every_producer():
    assert decide(seen(Phase.PAUSING, producers_waiting=2), LIMITS) == Stay()
    action = decide(seen(Phase.PAUSING, producers_waiting=0), LIMITS)
    assert action == MoveTo(Phase.DRAINING, action.reason)


def test_a_producer_that_never_pauses_aborts_the_rotation():
    action = decide(seen(Phase.PAUSING, producers_waiting=1, in_phase_s=61), LIMITS)
    assert isinstance(action, Abort)


def test_draining_restarts_only_once_every_partition_is_stored():
    assert decide(seen(Phase.DRAINING, stored=stored(10, 10, 9)), LIMITS) == Stay()
    assert decide(seen(Phase.DRAINING, stored=stored(10, 10)), LIMITS) == Stay()  # one never
    assert decide(seen(Phase.DRAINING), LIMITS) == Restart()


def test_draining_never_restarts_when_the_log_end_is_unknown():
    assert decide(seen(Phase.DRAINING, log_ends=None), LIMITS) == Stay()


def test_progress_of_an_earlier_log_does_not_count_as_stored():
    """Offsets stored under the previous topic id say nothing of the current log."""
    earlier = stored(10, 10, 10, topic_id="earlier-id")
    assert decide(seen(Phase.DRAINING, stored=earlier), LIMITS) == Stay()
    assert lag({0: 10}, earlier, OLD) == 10
    assert lag({0: 10}, earlier, None) == 0  # no ids: offsets are all there is


def test_a_consumer_that_does_not_catch_up_aborts_the_rotation():
    action = decide(seen(Phase.DRAINING, stored=stored(0, 0, 0), in_phase_s=61), LIMITS)
    assert isinstance(action, Abort) and "60 s" in action.reason


def test_a_producer_appearing_while_draining_must_pause_first():
    action = decide(seen(Phase.DRAINING, producers_waiting=1), LIMITS)
    assert isinstance(action, MoveTo) and action.phase is Phase.PAUSING


# -- what comes next (and after a crash) ------------------------------------------------------
def test_restarting_with_the_old_log_still_there_and_drained_restarts():
    assert decide(seen(Phase.RESTARTING), LIMITS) == Restart()


def test_restarting_with_the_old_log_not_drained_goes_back_to_draining():
    action = decide(seen(Phase.RESTARTING, log_ends={0: 11, 1: 10, 2: 10}), LIMITS)
    assert isinstance(action, MoveTo) and action.phase is Phase.DRAINING


def test_restarting_with_the_broker_stopped_starts_it():
    assert decide(seen(Phase.RESTARTING, rss_bytes=None, partitions=None), LIMITS) == Restart()


def test_a_restarted_broker_without_the_topic_gets_it_created():
    assert decide(seen(Phase.RESTARTING, partitions=None, topic_id=None), LIMITS) == CreateTopic()
    assert decide(seen(Phase.ADOPTING, partitions=None, topic_id=None), LIMITS) == CreateTopic()


@pytest.mark.parametrize("phase", [Phase.PAUSING, Phase.DRAINING, Phase.RESTARTING])
def test_a_broker_restarted_under_the_rotation_goes_to_adopting(phase):
    action = decide(seen(phase, topic_id=NEW, log_ends={0: 0, 1: 0, 2: 0}), LIMITS)
    assert isinstance(action, MoveTo) and action.phase is Phase.ADOPTING


def test_producers_resume_once_the_consumer_reads_the_new_log():
    ends = {0: 0, 1: 0, 2: 0}
    waiting = seen(Phase.ADOPTING, topic_id=NEW, log_ends=ends)
    assert decide(waiting, LIMITS) == Stay()
    moved = {0: StoredPartition(0, NEW), 1: StoredPartition(0, OLD), 2: StoredPartition(7, NEW)}
    action = decide(seen(Phase.ADOPTING, topic_id=NEW, log_ends=ends, stored=moved), LIMITS)
    assert isinstance(action, MoveTo) and action.phase is Phase.OPEN


def test_producers_wait_while_the_consumers_group_joins_again():
    moved = {0: StoredPartition(0, NEW), 1: StoredPartition(0, NEW), 2: StoredPartition(0, NEW)}
    joining = seen(Phase.ADOPTING, topic_id=NEW, stored=moved, consumer_rebalancing=True)
    assert decide(joining, LIMITS) == Stay()
    not_yet = seen(Phase.ADOPTING, topic_id=NEW, stored=moved, consumer_members=0)
    assert decide(not_yet, LIMITS) == Stay()


def test_producers_resume_when_no_consumer_runs():
    action = decide(seen(Phase.ADOPTING, topic_id=NEW, consumer_members=0, in_phase_s=16), LIMITS)
    assert isinstance(action, MoveTo) and action.phase is Phase.OPEN


def test_an_empty_group_right_after_the_restart_may_be_a_consumer_reconnecting():
    """Its fetch position is still in the old log: producers wait until it could rejoin."""
    assert decide(seen(Phase.ADOPTING, topic_id=NEW, consumer_members=0), LIMITS) == Stay()


def test_an_unknown_group_keeps_producers_paused_and_says_so_after_a_while():
    assert decide(seen(Phase.ADOPTING, topic_id=NEW, consumer_members=None), LIMITS) == Stay()
    late = decide(seen(Phase.ADOPTING, topic_id=NEW, consumer_members=None, in_phase_s=61), LIMITS)
    assert isinstance(late, Stay) and late.note


def test_a_topic_auto_created_with_other_partitions_keeps_producers_paused():
    action = decide(
        seen(Phase.ADOPTING, topic_id=NEW, partitions=4, consumer_members=0, in_phase_s=16), LIMITS
    )
    assert isinstance(action, Stay) and "4 partitions" in action.note
