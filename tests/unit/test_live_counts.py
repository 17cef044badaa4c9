"""What a batch adds to the writer's live counts (storage.live_counts, sql/011)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from heartbeat_platform.storage.copy_format import encode_records, minute_number
from heartbeat_platform.storage.live_counts import BatchCounts, count_batch, moved_customers

T = datetime(2026, 3, 4, 12, 0, 30, tzinfo=UTC)


def record(customer: str, when: datetime, bpm: int) -> tuple:
    return (customer, when, bpm, 0, 0, 0)


def anomaly(customer: str, when: datetime, kind: str) -> tuple:
    return (customer, when, 30, kind, "{}", 0, 0, 0)


def test_counts_are_per_minute_with_bpm_sums_and_anomalies_by_kind() -> None:
    counts = count_batch(
        [record("CUST_00001", T, 70), record("CUST_00002", T + timedelta(seconds=10), 90),
         record("CUST_00001", T + timedelta(seconds=40), 80)],
        [anomaly("CUST_00003", T, "BRADYCARDIA"), anomaly("CUST_00003", T, "INVALID"),
         anomaly("CUST_00004", T + timedelta(minutes=2), "TACHYCARDIA")],
    )
    m = minute_number(T)
    assert counts.per_minute == {m: [2, 160, 1, 0, 1], m + 1: [1, 80, 0, 0, 0],
                                 m + 2: [0, 0, 0, 1, 0]}
    assert moved_customers(counts, {}) == {"CUST_00001": T + timedelta(seconds=40),
                                           "CUST_00002": T + timedelta(seconds=10)}
    assert counts.newest_record == T + timedelta(seconds=40)


def test_newest_reading_of_a_customer_is_its_latest_even_out_of_order() -> None:
    counts = count_batch([record("CUST_00001", T + timedelta(minutes=3), 70),
                          record("CUST_00001", T, 70)], [])
    assert moved_customers(counts, {}) == {"CUST_00001": T + timedelta(minutes=3)}


def test_only_customers_in_a_later_minute_than_their_row_are_written() -> None:
    counts = count_batch([record("CUST_00001", T + timedelta(seconds=20), 70),
                          record("CUST_00002", T + timedelta(minutes=1), 70),
                          record("CUST_00003", T, 70)], [])
    known = {"CUST_00001": minute_number(T), "CUST_00002": minute_number(T)}
    assert moved_customers(counts, known) == {"CUST_00002": T + timedelta(minutes=1),
                                              "CUST_00003": T}
    assert count_batch([], []).newest_record is None


def test_encoding_a_batch_counts_its_records_as_count_batch_does() -> None:
    rows = [record("CUST_00002", T + timedelta(seconds=s), 60 + s) for s in (50, 5, 70)]
    rows.append(record("CUST_00001", T, 99))
    counts = BatchCounts()
    encode_records(rows, set(), counts.per_minute, counts.newest_micros)
    assert counts == count_batch(rows, [])
