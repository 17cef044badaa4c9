"""Where consumed messages landed, as the integration tests count them.

A stored row names its message by (log_epoch, kafka_partition, kafka_offset); epochs are
drawn from one sequence for every topic (sql/007), so tests speak of a topic's n-th log
instead: (topic, n, partition, offset), n = 0 for the first log a consumer read.
"""

from __future__ import annotations

from collections import Counter

import psycopg

_POSITIONS = """
WITH logs AS (
    SELECT log_epoch, kafka_partition, topic,
           row_number() OVER (PARTITION BY topic, kafka_partition
                              ORDER BY created_at, log_epoch) - 1 AS nth
    FROM kafka_logs)
SELECT l.topic, l.nth, m.kafka_partition, m.kafka_offset
FROM (SELECT log_epoch, kafka_partition, kafka_offset FROM heartbeat_records
      UNION ALL SELECT log_epoch, kafka_partition, kafka_offset FROM heartbeat_anomalies
      UNION ALL SELECT log_epoch, kafka_partition, kafka_offset FROM heartbeat_dead_letters) m
LEFT JOIN logs l USING (log_epoch, kafka_partition)
"""


def landed_by_topic(conn: psycopg.Connection) -> Counter:
    """(topic, n-th log, partition, offset) -> rows holding that message, in the 3 tables."""
    return Counter(conn.execute(_POSITIONS).fetchall())


def landed(conn: psycopg.Connection) -> Counter:
    """(n-th log, partition, offset) -> rows holding that message (one topic in the test)."""
    counts: Counter = Counter()
    for (_, nth, partition, offset), n in landed_by_topic(conn).items():
        counts[(nth, partition, offset)] += n
    return counts


def delivered_positions(reports, nth: int = 0) -> set[tuple[int, int, int]]:
    """(n-th log, partition, offset) of every message the producer reports delivered."""
    spans: dict[int, list[int]] = {}
    for report in reports:
        for p, (low, high) in report.delivered_offsets.items():
            span = spans.setdefault(p, [low, high])
            span[0], span[1] = min(span[0], low), max(span[1], high)
    return {(nth, p, o) for p, (low, high) in spans.items() for o in range(low, high + 1)}
