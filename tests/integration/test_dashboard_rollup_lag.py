"""The fleet panels in the states where the raw tail used to grow (issue 23).

Each state is written with plain SQL, as the consumer would leave it (readings, anomalies,
a pending mark and the writer's counts per minute), then rolled up as far as the state says
with the real `rollups.refresh`, and every panel's SQL is run as Grafana's role with its
macros expanded:
- idle: the newest reading is almost seven hours old, the rollups are current;
- current: readings up to this minute, everything before the minute before rolled up;
- behind: the rollups stopped twenty minutes ago while readings kept arriving.
A minute the rollups have not reached is never read raw (unless it is the minute of the
range's end or the one before): the fleet panels leave it out and count it as "minutes not
rolled up yet", while the totals (kept by the writer, sql/011) count every reading. These
tests check answers, not speed (that is `heartbeat-platform bench --history`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import psycopg
import pytest

from heartbeat_platform.grafana_queries import QueryContext, dashboard_file, expand, panel_queries
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.storage.rollups import Rollup, refresh

READER = "heartbeat_grafana_reader"
CUSTOMERS = ["CUST_00001", "CUST_00002", "CUST_00003"]
SECONDS = range(0, 60, 10)  # each customer's readings in a minute
MINUTE = timedelta(minutes=1)


def heart_rate(customer: int, second: int, minute: datetime) -> int:
    """Different per customer, second and minute, always a valid (NORMAL) reading."""
    return 60 + 7 * customer + second // 10 + minute.minute % 13


@dataclass
class State:
    url: str
    now: datetime  # the moment the state was written; panels run over ranges ending here
    minutes: list[datetime]  # every minute holding readings
    rolled: list[datetime]  # rolled up
    not_rolled: list[datetime]  # neither rolled up nor in the raw tail

    @property
    def shown(self) -> list[datetime]:
        return [m for m in self.minutes if m not in self.not_rolled]


def write_state(url: str, minutes: list[datetime], rolled: list[datetime]) -> None:
    """Readings of every minute (three customers, and one anomaly) with their pending marks
    and totals, as a consumer's batches leave them, then the rollup of the `rolled` minutes."""
    with psycopg.connect(url, autocommit=True) as conn:
        days = sorted({m.date() for m in minutes})
        conn.execute("SELECT heartbeat_ensure_partitions(%s, %s)", (days[0], days[-1]))
        records, anomalies, offset = [], [], 0
        for minute in minutes:
            for c, customer in enumerate(CUSTOMERS):
                for second in SECONDS:
                    offset += 1
                    records.append((minute + timedelta(seconds=second), offset,
                                    heart_rate(c, second, minute), customer))
            kind = "TACHYCARDIA" if minute.minute % 2 else "BRADYCARDIA"
            offset += 1
            anomalies.append(("CUST_00009", minute + timedelta(seconds=5),
                              200 if kind == "TACHYCARDIA" else 30, kind, offset))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO heartbeat_records (event_timestamp, kafka_offset, heart_rate, "
                "kafka_partition, customer_id) VALUES (%s, %s, %s, 0, %s)", records)
            cur.executemany(
                "INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate, "
                "anomaly_type, raw_payload, kafka_partition, kafka_offset) "
                "VALUES (%s, %s, %s, %s, '{}', 0, %s)", anomalies)
            cur.execute(
                "INSERT INTO rollup_pending (rollup, window_start, kafka_partition) "
                "SELECT 'fleet_minute', m, 0 FROM unnest(%s::timestamptz[]) AS m", (minutes,))
            # what the writer counts (sql/011): every minute's readings, anomalies by kind
            per_minute = [(m, [r for r in records if m <= r[0] < m + MINUTE],
                           [a[3] for a in anomalies if m <= a[1] < m + MINUTE]) for m in minutes]
            cur.execute(
                "SELECT heartbeat_count_readings(0, %s, %s, %s, %s, %s, %s, %s)",
                ([m for m, _, _ in per_minute], [len(rs) for _, rs, _ in per_minute],
                 [sum(r[2] for r in rs) for _, rs, _ in per_minute],
                 [ks.count("BRADYCARDIA") for _, _, ks in per_minute],
                 [ks.count("TACHYCARDIA") for _, _, ks in per_minute],
                 [0 for _ in per_minute], max(r[0] for r in records)))
        if rolled:
            refresh(conn, Rollup.FLEET_MINUTE, min(rolled), max(rolled) + MINUTE)


@pytest.fixture
def make_state(embedded_postgres) -> Callable[..., State]:
    """A database of its own in one state: `minutes` and `rolled` are offsets in minutes
    from the current one (0), `not_rolled` is what the panels should leave out."""

    def make(minutes: Iterable[int], rolled: range, not_rolled: range) -> State:
        url = embedded_postgres.ensure_database(f"lag_{uuid.uuid4().hex[:12]}")
        migrate(url)
        now = datetime.now(UTC)
        current = now.replace(second=0, microsecond=0)
        at = [current + k * MINUTE for k in minutes]
        write_state(url, at, [current + k * MINUTE for k in rolled])
        return State(url, now, at, [current + k * MINUTE for k in rolled],
                     [current + k * MINUTE for k in not_rolled])

    return make


@pytest.fixture
def queries() -> dict[str, str]:
    return dict(panel_queries(json.loads(dashboard_file().read_text())))


@pytest.fixture
def reader_of() -> Iterator[Callable[[State], psycopg.Connection]]:
    opened: list[psycopg.Connection] = []

    def connect(state: State) -> psycopg.Connection:
        conn = psycopg.connect(state.url, autocommit=True)
        conn.execute(f"SET ROLE {READER}")
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def run(conn: psycopg.Connection, sql: str, ctx: QueryContext) -> list[tuple]:
    return conn.execute(expand(sql, ctx)).fetchall()


def over(state: State, span: timedelta, interval: timedelta = MINUTE) -> QueryContext:
    return QueryContext(state.now - span, state.now, interval)


def epoch(minute: datetime) -> int:
    return int(minute.timestamp())


def fleet_average(state: State, minutes: list[datetime]) -> list[tuple]:
    """What Fleet Average BPM shows per one-minute bucket: the readings' average."""
    rows = []
    for minute in minutes:
        rates = [heart_rate(c, s, minute) for c in range(len(CUSTOMERS)) for s in SECONDS]
        average = (Decimal(sum(rates)) / len(rates)).quantize(Decimal("0.1"), ROUND_HALF_UP)
        rows.append((epoch(minute), float(average)))
    return rows


def readings_of(minutes: list[datetime]) -> int:
    return len(minutes) * len(CUSTOMERS) * len(SECONDS)


def summary(conn: psycopg.Connection, queries: dict[str, str], ctx: QueryContext) -> dict:
    """The health stats that read vw_pipeline_summary (now(), not the range): run again if
    a minute began while they ran, so all of them see one raw tail."""
    names = ["Valid readings/A", "Anomalies/A", "Minutes not rolled up yet/A"]
    for _ in range(3):
        before = datetime.now(UTC).replace(second=0, microsecond=0)
        values = {name: run(conn, queries[name], ctx)[0][0] for name in names}
        if datetime.now(UTC).replace(second=0, microsecond=0) == before:
            return values
    raise AssertionError("a minute began during every attempt")


def check_fleet_panels(state: State, conn: psycopg.Connection, queries: dict[str, str],
                       ctx: QueryContext) -> None:
    shown = [m for m in state.shown if m >= ctx.time_from]
    hidden = [m for m in state.not_rolled if m >= ctx.time_from]
    assert [tuple(float(v) for v in row) for row in run(conn, queries["Fleet Average BPM/A"],
                                                        ctx)] == fleet_average(state, shown)
    marked = [(float(epoch(m)), 1) for m in hidden]
    assert [(float(t), n) for t, n in run(conn, queries["Fleet Average BPM/B"], ctx)] == marked
    kinds = {"BRADYCARDIA": 0, "TACHYCARDIA": 0}
    for m in shown:
        kinds["TACHYCARDIA" if m.minute % 2 else "BRADYCARDIA"] += 1
    pie = run(conn, queries["Anomaly Type breakdown/A"], ctx)
    assert pie == [(kind, n) for kind, n in sorted(kinds.items()) if n]


@pytest.mark.parametrize("span", [timedelta(hours=6), timedelta(days=7)])
def test_idle_for_hours_reads_rollups_only(span, make_state, queries, reader_of) -> None:
    """No reading for almost seven hours: the 6 h range is empty, the 7 d range all rollup;
    no minute is pending, and nothing is read raw for the hours in between."""
    state = make_state(range(-415, -405), rolled=range(-415, -405), not_rolled=range(0))
    conn = reader_of(state)
    ctx = over(state, span)
    check_fleet_panels(state, conn, queries, ctx)
    assert bool(run(conn, queries["Fleet Average BPM/A"], ctx)) == (span > timedelta(hours=7))
    values = summary(conn, queries, ctx)
    assert values == {"Valid readings/A": readings_of(state.minutes),
                      "Anomalies/A": len(state.minutes), "Minutes not rolled up yet/A": 0}
    (latest,) = run(conn, queries["Latest reading/A"], ctx)[0]
    newest = state.minutes[-1] + timedelta(seconds=SECONDS[-1])
    assert float(latest) == pytest.approx(newest.timestamp() * 1000)


def test_current_rollups_and_the_raw_tail_add_up(make_state, queries, reader_of) -> None:
    """Rolled up to three minutes ago; the minute before this one and this one are raw (two
    buckets of the one tail scan): every minute shows, exactly."""
    state = make_state(range(-6, 1), rolled=range(-6, -2), not_rolled=range(-2, -1))
    conn = reader_of(state)
    ctx = over(state, timedelta(hours=6))
    # minute -2 is neither rolled up nor (the tail is at most two minutes) read raw
    check_fleet_panels(state, conn, queries, ctx)
    tail = conn.execute(
        "SELECT minute, reading_count FROM heartbeat_records_tail(%s, %s)",
        (ctx.time_from, ctx.time_to)).fetchall()
    assert tail == [(m, readings_of([m])) for m in state.minutes[-2:]]


def test_rollups_behind_say_so_instead_of_scanning(make_state, queries, reader_of) -> None:
    """The rollups stopped 20 minutes ago, readings kept coming: the fleet panels show the
    rolled minutes and this minute, and count the 19 in between as not rolled up yet; the
    totals count every reading all the same."""
    # nothing in minute -1: should a minute begin while the test runs, the tail moves on
    # to this minute alone and every answer stays the same
    minutes = [*range(-30, -1), 0]
    state = make_state(minutes, rolled=range(-30, -20), not_rolled=range(-20, -1))
    conn = reader_of(state)
    for span, interval in ((timedelta(hours=6), MINUTE), (timedelta(days=7), MINUTE)):
        check_fleet_panels(state, conn, queries, over(state, span, interval))
    values = summary(conn, queries, over(state, timedelta(hours=6)))
    assert values == {"Valid readings/A": readings_of(state.minutes),
                      "Anomalies/A": len(state.minutes), "Minutes not rolled up yet/A": 19}
    # long ranges: Throughput counts the stored readings of the minutes it shows, and
    # marks the others
    week = over(state, timedelta(days=7), timedelta(minutes=10))
    rates = run(conn, queries["Throughput/B"], week)
    total = readings_of(state.shown) + len(state.shown)
    assert float(sum(r for _, r in rates)) * 600 == pytest.approx(total)
    assert sum(n for _, n in run(conn, queries["Throughput/C"], week)) == 19
    assert run(conn, queries["Throughput/C"], over(state, timedelta(hours=1))) == []
