"""Facts that Python and the schema both hold, read back from a migrated database and held
against the Python that is their home: neither language can change one alone.

The bpm limits live in `domain.events`, in CHECK constraints (sql/006, sql/009) and in
`heartbeat_class` (sql/012, the cold tier's class of a rate); the
customer-id pattern in `domain.events` and in the landing checks' SQL; the classes, kinds
and states in enums and in CHECK constraints; the writer's columns in `Table`s and in the
tables themselves. Migrations are checksummed and never edited: a limit changed in Python
fails here until a new migration changes the schema too.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Iterator

import psycopg
import pytest

from heartbeat_platform.alerting.receivers import TRANSITIONS
from heartbeat_platform.defs.landing.checks import WHOLE_CUSTOMER_ID
from heartbeat_platform.domain.episodes import Episode, EpisodeKind, EpisodeState
from heartbeat_platform.domain.events import (
    MAX_CUSTOMER_NUMBER,
    MAX_HEART_RATE,
    HeartbeatClass,
    classify_heart_rate,
    is_customer_id,
)
from heartbeat_platform.domain.generator import customer_id
from heartbeat_platform.storage import copy_format
from heartbeat_platform.storage.alert_operations import (
    OVERRIDE_KINDS,
    THRESHOLD_RANGE,
    EpisodeView,
)
from heartbeat_platform.storage.episodes import EPISODES
from heartbeat_platform.storage.migrations import migrate

RATES = range(-3, MAX_HEART_RATE + 4)  # every rate a limit could sit at, and beyond


@pytest.fixture(scope="module")
def schema(embedded_postgres) -> Iterator[psycopg.Connection]:
    """One migrated database for the module; each test's rows are rolled back."""
    url = embedded_postgres.ensure_database(f"facts_{uuid.uuid4().hex[:12]}")
    migrate(url)
    with psycopg.connect(url) as conn:
        yield conn


def stored(conn: psycopg.Connection, statement: str, values: Iterable) -> set:
    """The values `statement` stores as %(v)s (%(n)s: a number of its own for each, to keep
    keys apart); a CHECK refuses the others. Nothing stays."""
    taken = set()
    with conn.transaction(force_rollback=True):
        for n, value in enumerate(values):
            try:
                with conn.transaction():
                    conn.execute(statement, {"v": value, "n": n})
            except psycopg.errors.CheckViolation:
                continue
            taken.add(value)
    return taken


def test_heartbeat_records_takes_exactly_the_rates_classified_normal(schema) -> None:
    taken = stored(
        schema,
        "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
        "kafka_partition, kafka_offset) VALUES ('CUST_00001', now() + %(n)s * interval '1 ms', "
        "%(v)s, 0, %(n)s)",
        RATES,
    )
    assert taken == {bpm for bpm in RATES if classify_heart_rate(bpm) is HeartbeatClass.NORMAL}


def test_heartbeat_anomalies_takes_exactly_the_anomaly_classes(schema) -> None:
    taken = stored(
        schema,
        "INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate, "
        "anomaly_type, raw_payload, kafka_partition, kafka_offset) "
        "VALUES ('CUST_00001', now() + %(n)s * interval '1 ms', 0, %(v)s, '{}', 0, %(n)s)",
        [*HeartbeatClass, "SENSOR_FAULT"],
    )
    assert taken == set(HeartbeatClass) - {HeartbeatClass.NORMAL}


def test_postgresql_classifies_every_rate_as_classify_heart_rate_does(schema) -> None:
    """The cold tier keeps no class: heartbeat_class (sql/012) derives it from the rate."""
    rates = [*RATES, -(2**31), 2**31 - 1]
    got = dict(schema.execute(
        "SELECT r, heartbeat_class(r) FROM unnest(%s::integer[]) AS r", (rates,)).fetchall())
    assert got == {bpm: classify_heart_rate(bpm).value for bpm in rates}


def test_an_alert_bound_is_stored_exactly_when_a_device_can_report_it(schema) -> None:
    """sql/009's CHECK, alert_operations' refusal and the classification agree: a bound is
    a rate that is not a sensor fault."""
    low, high = THRESHOLD_RANGE
    taken = stored(
        schema,
        "INSERT INTO alert_overrides (customer_id, kind, threshold, set_by) "
        "VALUES ('CUST_00001', 'TACHYCARDIA', %(v)s, 'test')",
        RATES,
    )
    assert taken == {t for t in RATES if low <= t <= high}
    assert taken == {t for t in RATES if classify_heart_rate(t) is not HeartbeatClass.INVALID}
    kinds = stored(
        schema,
        "INSERT INTO alert_overrides (customer_id, kind, threshold, set_by) "
        "VALUES ('CUST_00001', %(v)s, 100, 'test')",
        list(EpisodeKind),
    )
    assert kinds == set(OVERRIDE_KINDS)


def episode_insert(kind: str, state: str) -> str:
    """An episode of customer %(n)s (one open episode per customer and kind)."""
    return (
        "INSERT INTO alert_episodes (customer_id, kind, state, severity, opened_at, "
        "resolved_at, first_heart_rate, worst_heart_rate, readings, first_reading_at, "
        f"last_reading_at, last_evaluated_at) VALUES (%(n)s::text, {kind}, {state}, "
        f"'warning', now(), CASE WHEN {state} = 'resolved' THEN now() END, 0, 0, 1, now(), "
        "now(), now())"
    )


def test_alert_episodes_takes_every_kind_and_state_and_nothing_else(schema) -> None:
    kinds = stored(schema, episode_insert("%(v)s", "'firing'"), [*EpisodeKind, "INVALID"])
    assert kinds == set(EpisodeKind)
    states = stored(schema, episode_insert("'TACHYCARDIA'", "%(v)s::text"),
                    [*EpisodeState, "escalated"])
    assert states == set(EpisodeState)


def test_alert_outbox_takes_every_notified_transition_and_nothing_else(schema) -> None:
    """receivers.TRANSITIONS (each with its PagerDuty action) and sql/013's CHECK."""
    (episode_id,) = schema.execute(
        episode_insert("'TACHYCARDIA'", "'firing'") + " RETURNING episode_id", {"n": "C"}
    ).fetchone()
    states = stored(
        schema,
        "INSERT INTO alert_outbox (episode_id, customer_id, state, payload) "
        f"VALUES ({episode_id}, 'C', %(v)s, '{{}}')",
        [*TRANSITIONS, "pending", "acknowledge"],
    )
    schema.rollback()
    assert states == set(TRANSITIONS)


def test_postgresql_matches_customer_ids_as_validate_message_does(schema) -> None:
    """The landing checks match stored ids with the same pattern, in SQL."""
    samples = [
        customer_id(1), customer_id(10_000), customer_id(MAX_CUSTOMER_NUMBER),
        customer_id(MAX_CUSTOMER_NUMBER + 1), "CUST_1234", "CUST_0000000000", "CUST_",
        "cust_00001", "CUST_00001\n", "\nCUST_00001", "xCUST_00001", "CUST_00001x",
        "CUST_0000١", "CUST_ 00001", "CUST-00001", "",
    ]
    (matched,) = schema.execute(
        "SELECT array_agg(s ~ %s ORDER BY n) FROM unnest(%s::text[]) WITH ORDINALITY AS t(s, n)",
        (WHOLE_CUSTOMER_ID, samples),
    ).fetchone()
    expected = [is_customer_id(s) is not None for s in samples]
    assert matched == expected
    assert True in expected and False in expected


def columns(conn: psycopg.Connection, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (table,),
    )
    return dict(rows.fetchall())


@pytest.mark.parametrize("table", [
    copy_format.RECORDS, copy_format.ANOMALIES, copy_format.DEAD_LETTERS, copy_format.METRICS,
    EPISODES,
], ids=lambda t: t.name)
def test_each_table_the_writer_fills_has_its_columns_and_types(schema, table) -> None:
    found = columns(schema, table.name)
    declared = {
        name: schema.execute("SELECT format_type(%s::regtype, NULL)", (kind,)).fetchone()[0]
        for name, kind in table.columns
    }
    assert {name: found.get(name) for name in declared} == declared


def test_the_episode_columns_are_an_episodes_fields_and_what_a_person_sees_exists(schema) -> None:
    read = tuple(name for name in EPISODES.names if name != "severity")
    assert read == tuple(f.name for f in dataclasses.fields(Episode))
    seen = {f.name for f in dataclasses.fields(EpisodeView)}
    assert seen <= columns(schema, "alert_episodes").keys()
