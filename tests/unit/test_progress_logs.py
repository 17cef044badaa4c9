"""Which log (epoch) a message at an offset belongs to (storage.progress, no database)."""

from __future__ import annotations

from heartbeat_platform.storage.progress import KafkaLog, current_logs, epoch_at

FIRST = KafkaLog(1, "A", 0)
TRUNCATED = KafkaLog(4, "A", 1_000)  # unclean election: offsets from 1000 on are new
TRUNCATED_AGAIN = KafkaLog(6, "A", 800)
RECREATED = KafkaLog(5, "B", 0)


def test_offsets_below_a_truncation_keep_the_old_epoch() -> None:
    logs = [FIRST, TRUNCATED]
    assert epoch_at(logs, 0) == (1, 1_000)
    assert epoch_at(logs, 999) == (1, 1_000)
    assert epoch_at(logs, 1_000) == (4, None)


def test_a_second_truncation_below_the_first_takes_over_from_its_start() -> None:
    logs = [FIRST, TRUNCATED, TRUNCATED_AGAIN]
    assert epoch_at(logs, 500) == (1, 800)
    assert epoch_at(logs, 900) == (6, None)
    assert epoch_at(logs, 1_200) == (6, None)


def test_current_logs_are_those_of_the_topic_id() -> None:
    logs = [FIRST, TRUNCATED, RECREATED]
    assert current_logs(logs, "A") == [FIRST, TRUNCATED]
    assert current_logs(logs, "B") == [RECREATED]
    assert current_logs(logs, "C") == []


def test_without_an_id_the_newest_log_and_its_truncations() -> None:
    logs = [KafkaLog(1, None, 0), KafkaLog(2, None, 0), KafkaLog(3, None, 700)]
    assert current_logs(logs, None) == logs[1:]
    assert current_logs([], None) == []
