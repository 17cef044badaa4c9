"""Producer -> broker -> consumer -> PostgreSQL on the real services."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import Producer, TopicPartition

from heartbeat_platform import readiness
from heartbeat_platform.domain.events import classify_heart_rate
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.producer import HeartbeatProducer
from tests.support.stored import landed

ALERT_ROWS = "SELECT count(*) FROM pipeline_metrics WHERE metric_name LIKE 'alert\\_%'"


def produce(settings, events: int, seed: int = 7):
    prepared = readiness.prepare(settings)
    with HeartbeatProducer(readiness.producer_config(settings, prepared.endpoints)) as producer:
        report = producer.run(readiness.generator(settings, seed), events=events)
    assert report.delivered == events and report.undelivered == 0
    return report


def consume(settings, idle: float = 1.5, **overrides):
    prepared = readiness.prepare(settings)
    consumer = HeartbeatConsumer(
        readiness.consumer_config(settings, prepared.endpoints, **overrides)
    )
    return consumer.run(stop_when_idle=idle)


def table_counts(conn: psycopg.Connection) -> tuple[int, int, int, int]:
    return (
        conn.execute("SELECT count(*) FROM heartbeat_records").fetchone()[0],
        conn.execute("SELECT count(*) FROM heartbeat_anomalies").fetchone()[0],
        conn.execute("SELECT count(*) FROM heartbeat_dead_letters").fetchone()[0],
        conn.execute(ALERT_ROWS).fetchone()[0],
    )


def test_every_message_lands_exactly_once(settings_factory, database_url, db) -> None:
    settings = settings_factory(database_url=database_url, heartbeat_consume_batch_size=500)
    events = 6_000
    report = produce(settings, events, seed=11)
    result = consume(settings)
    assert result.stats.messages_consumed == events

    positions = landed(db)
    assert set(positions.values()) == {1}  # nothing doubled
    expected = {
        (0, p, o)
        for p, (low, high) in report.delivered_offsets.items()
        for o in range(low, high + 1)
    }
    assert set(positions) == expected  # nothing lost
    assert len(expected) == events

    # classes match the rule applied to what was produced (same seed, same readings)
    generated = readiness.generator(settings, 11).generate_events(events)
    want = Counter(classify_heart_rate(e["heart_rate"]).value for e in generated)
    got = Counter(
        dict(db.execute("SELECT anomaly_type, count(*) FROM heartbeat_anomalies GROUP BY 1"))
    )
    got["NORMAL"] = db.execute("SELECT count(*) FROM heartbeat_records").fetchone()[0]
    assert got == want
    mismatched = db.execute(
        """SELECT count(*) FROM heartbeat_anomalies WHERE anomaly_type <> CASE
             WHEN heart_rate <= 0 OR heart_rate > 300 THEN 'INVALID'
             WHEN heart_rate < 40 THEN 'BRADYCARDIA' ELSE 'TACHYCARDIA' END"""
    ).fetchone()[0]
    assert mismatched == 0

    # one alert row per anomaly row, tied to the same message
    alerts = set(
        db.execute(
            "SELECT log_epoch, kafka_partition, kafka_offset FROM pipeline_metrics "
            "WHERE metric_name LIKE 'alert\\_%'"
        ).fetchall()
    )
    anomalies = set(
        db.execute("SELECT log_epoch, kafka_partition, kafka_offset FROM heartbeat_anomalies")
    )
    assert alerts == anomalies and alerts

    # stats snapshots, the last one cumulative over everything consumed
    snapshots = db.execute(
        "SELECT max(metric_value), count(*) FROM pipeline_metrics "
        "WHERE metric_name = 'stats_messages_consumed'"
    ).fetchone()
    assert snapshots[0] == events and snapshots[1] >= events // 500 - 1

    # progress stored in the database matches the log end; Kafka got the commits too
    progress = dict(
        db.execute("SELECT kafka_partition, next_offset FROM consumer_progress").fetchall()
    )
    assert progress == {p: high + 1 for p, (_, high) in report.delivered_offsets.items()}
    kafka = KafkaConsumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": settings.kafka_group_id}
    )
    committed = kafka.committed(
        [TopicPartition(settings.kafka_topic, p) for p in progress], timeout=10
    )
    kafka.close()
    assert {tp.partition: tp.offset for tp in committed} == progress


def test_replay_adds_no_row(settings_factory, database_url, db) -> None:
    settings = settings_factory(database_url=database_url)
    produce(settings, 2_000)
    consume(settings)
    before = table_counts(db)
    assert sum(before[:3]) == 2_000

    # 1. Kafka's committed offsets rewound: the database's progress wins
    kafka = KafkaConsumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": settings.kafka_group_id}
    )
    kafka.commit(
        offsets=[TopicPartition(settings.kafka_topic, p, 0) for p in range(3)],
        asynchronous=False,
    )
    kafka.close()
    again = consume(settings, idle=1.0)
    assert again.stats.messages_consumed == 0
    assert table_counts(db) == before

    # 2. the stored progress itself erased: everything is read again, nothing is added
    db.execute("DELETE FROM consumer_progress")
    replay = consume(settings)
    assert replay.stats.messages_consumed == 2_000
    assert replay.stats.duplicates_dropped == before[0] + before[1]  # readings, not letters
    assert table_counts(db) == before
    # the totals the writer keeps with each batch (sql/011) count each reading once too
    assert db.execute("SELECT total_records, total_anomalies, total_customers "
                      "FROM vw_pipeline_summary").fetchone() == (
        before[0], before[1],
        db.execute("SELECT count(DISTINCT customer_id) FROM heartbeat_records").fetchone()[0])


BAD_PAYLOADS: list[tuple[bytes | None, str]] = [
    (b"\xff\xfe\x00garbage", "UTF-8"),
    (b"not json at all", "JSON"),
    (b'{"customer_id": "CUST_00001", "heart_rate": 7', "JSON"),
    (b'{"customer_id": "CUST_00001", "heart_rate": NaN, "timestamp": "2026-01-01T00:00:00Z"}',
     "JSON"),
    (None, "tombstone"),
    (b"", "empty"),
    (b"[1, 2, 3]", "array"),
    (b'"a string"', "string"),
    (b"42", "number"),
    (b"null", "null"),
    (b'{"heart_rate": 70, "timestamp": "2026-01-01T00:00:00Z"}', "customer_id"),
    (b'{"customer_id": "CUST_00001", "heart_rate": null, "timestamp": "2026-01-01T00:00:00Z"}',
     "heart_rate"),
    (b'{"customer_id": "CUST_00001", "heart_rate": "72", "timestamp": "2026-01-01T00:00:00Z"}',
     "heart_rate"),
    (b'{"customer_id": "CUST_00001", "heart_rate": true, "timestamp": "2026-01-01T00:00:00Z"}',
     "bool"),
    (b'{"customer_id": "CUST_00001", "heart_rate": 99999999999, '
     b'"timestamp": "2026-01-01T00:00:00Z"}', "99999999999"),
    (b'{"customer_id": "CUST_00001", "heart_rate": 72, "timestamp": "2026-01-01T00:00:00"}',
     "time zone"),
    (b'{"customer_id": "CUST_00001", "heart_rate": 72, "timestamp": "yesterday"}', "timestamp"),
    (b'{"customer_id": "bob\\u0000", "heart_rate": 72, "timestamp": "2026-01-01T00:00:00Z"}',
     "customer_id"),
    (b"[" * 100_000, "JSON"),
    (b'{"customer_id": "CUST_00001", "heart_rate": 72, "timestamp": "2026-01-01T00:00:00Z", '
     b'"note": "' + b"x" * 500_000 + b'"', "JSON"),
]


def test_bad_input_lands_in_dead_letters_and_good_input_still_flows(
    settings_factory, database_url, db
) -> None:
    settings = settings_factory(database_url=database_url, heartbeat_consume_batch_size=7)
    prepared = readiness.prepare(settings)
    raw = Producer({"bootstrap.servers": prepared.endpoints.bootstrap_servers})
    good = 0
    hour_ago = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    for i, (payload, _) in enumerate(BAD_PAYLOADS):
        raw.produce(settings.kafka_topic, value=payload, key=b"k", partition=i % 3)
        event = {"customer_id": f"CUST_{i + 1:05d}", "heart_rate": 60 + i,
                 "timestamp": (hour_ago + timedelta(seconds=i)).isoformat(),
                 "extra": [1, {"x": None}]}
        raw.produce(settings.kafka_topic, value=orjson.dumps(event), partition=i % 3)
        good += 1
    in_plus_two = (hour_ago + timedelta(hours=2)).replace(tzinfo=None).isoformat() + "+02:00"
    raw.produce(settings.kafka_topic, value=orjson.dumps(  # no key at all, still a reading
        {"customer_id": "CUST_09999", "heart_rate": 301, "timestamp": in_plus_two}
    ), partition=0)
    assert raw.flush(10) == 0

    result = consume(settings)
    assert result.stats.messages_consumed == len(BAD_PAYLOADS) + good + 1
    dead = db.execute(
        "SELECT raw_value, reason FROM heartbeat_dead_letters"
    ).fetchall()
    assert len(dead) == len(BAD_PAYLOADS)
    by_value = {bytes(v) if v is not None else None: reason for v, reason in dead}
    for payload, hint in BAD_PAYLOADS:
        stored = payload if payload != b"" else b""
        assert stored in by_value, payload[:40] if payload else payload
        assert hint.lower() in by_value[stored].lower(), (payload[:60], by_value[stored])
    assert db.execute("SELECT count(*) FROM heartbeat_records").fetchone()[0] == good
    fault = db.execute("SELECT anomaly_type, event_timestamp FROM heartbeat_anomalies").fetchall()
    assert fault == [("INVALID", hour_ago)]
