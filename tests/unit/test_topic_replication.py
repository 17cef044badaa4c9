"""How many copies `init-db` gives the topic (streaming/topics.planned_replication)."""

from __future__ import annotations

import pytest

from heartbeat_platform.streaming.topics import planned_replication


@pytest.mark.parametrize(
    ("brokers", "factor", "min_insync", "expected"),
    [
        (1, None, None, (1, None)),  # one broker: one copy, the broker's min.insync (1)
        (2, None, None, (2, None)),
        (3, None, None, (3, 2)),  # one broker may fail without stopping acks=all writes
        (6, None, None, (3, 2)),
        (3, 2, None, (2, None)),  # set by hand
        (3, None, 3, (3, 3)),
        (3, -1, None, (-1, None)),  # the broker's default.replication.factor
    ],
)
def test_copies_and_min_insync(brokers, factor, min_insync, expected) -> None:
    assert planned_replication(brokers, factor, min_insync) == expected
