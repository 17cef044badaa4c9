"""What a stored reading costs on disk: every table's bytes, split into the raw readings and
everything kept beside them, per reading and projected to a day at the design rate."""

from __future__ import annotations

from heartbeat_platform.domain.generator import DESIGN_RATE
from heartbeat_platform.storage.database import connect, one_row
from heartbeat_platform.storage.partitions import RAW_TABLES

# Every table of the schema with its indexes and TOAST; a partitioned one summed over its
# partitions. The raw tables are one part; every other table (the rollups, the customer
# list, pending marks, consumer progress) is the rollup part, whatever the schema adds.
_TABLE_BYTES = """
SELECT relname,
       CASE WHEN relkind = 'p'
            THEN (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)
                  FROM pg_partition_tree(pg_class.oid))
            ELSE pg_total_relation_size(pg_class.oid) END::bigint
FROM pg_class
WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p')
  AND NOT relispartition
ORDER BY 2 DESC, 1
"""


def measure_storage(url: str) -> dict:
    """The database's bytes per stored reading (`storage_summary`) and every table's size."""
    with connect(url) as conn:
        sizes: dict[str, int] = dict(conn.execute(_TABLE_BYTES).fetchall())
        readings = one_row(conn.execute(
            "SELECT (SELECT count(*) FROM heartbeat_records) "
            "+ (SELECT count(*) FROM heartbeat_anomalies)"
        ))[0]
    raw = sum(size for table, size in sizes.items() if table in RAW_TABLES)
    summary = storage_summary(raw, sum(sizes.values()) - raw, readings)
    return {**summary, "raw_tables": list(RAW_TABLES), "table_bytes": sizes}


def storage_summary(raw_bytes: int, rollup_bytes: int, readings: int,
                    rate: float = DESIGN_RATE) -> dict:
    """Bytes per stored reading, raw and rollup parts, and GB (10^9 bytes) a day at `rate`."""
    per_day = rate * 86_400

    def per_reading(size: int) -> float:
        return size / readings

    return {
        "readings_stored": readings,
        "raw_bytes": raw_bytes,
        "rollup_bytes": rollup_bytes,
        "bytes_per_reading": round(per_reading(raw_bytes + rollup_bytes), 1),
        "raw_bytes_per_reading": round(per_reading(raw_bytes), 1),
        "rollup_bytes_per_reading": round(per_reading(rollup_bytes), 1),
        "projected_at_readings_per_s": rate,
        "projected_gb_per_day": round(per_reading(raw_bytes + rollup_bytes) * per_day / 1e9, 1),
        "projected_raw_gb_per_day": round(per_reading(raw_bytes) * per_day / 1e9, 1),
        "projected_rollup_gb_per_day": round(per_reading(rollup_bytes) * per_day / 1e9, 1),
    }
