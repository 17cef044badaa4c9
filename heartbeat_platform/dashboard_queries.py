"""The SQL of every panel of the monitoring dashboard, as written: one constant a query.

grafana/build_dashboards.py lays the panels out and points each target at one of these;
the committed dashboard JSON is its output. What Grafana then sends PostgreSQL (variables
and macros expanded) is `heartbeat_platform.grafana_queries`, which the tests and the
benchmark run, read back from that JSON. Each query reads bounded data (README, "Running for
months"): rollups for ranges, the writer's counts per minute for the tail newer than them,
vw_pipeline_summary for totals, raw rows only for one customer or through a partial index.

Names follow the panels: a panel with one query has its title's name; a panel with several
has one constant per target, in refId order (A, B, C).
"""

from __future__ import annotations

from heartbeat_platform.domain.episodes import EpisodeKind


def _sql(text: str) -> str:
    """Strip the indentation the query has in this file."""
    lines = text.strip("\n").splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines)


# -- fragments -----------------------------------------------------------------------------------

CUSTOMER = "${customer:sqlstring}"  # quoted and escaped by Grafana: never raw SQL
# Raw readings are kept 7 days and at 10,000 readings/s a dashboard range holds millions, so
# ranges are read from the rollups (sql/006) plus the raw rows newer than their newest window:
# the tail, a minute or an hour of readings whatever the history holds.
HOURLY_TAIL = ("(SELECT coalesce(max(hour) + interval '1 hour', '-infinity'::timestamptz) "
               "FROM customer_hourly_bpm_stats)")
RANGE = "($__timeTo()::timestamptz - $__timeFrom()::timestamptz)"
# A customer's raw readings over 6 hours are 21,600 rows at one a second: the limit for raw.
RAW_CUSTOMER_RANGE = f"({RANGE} <= interval '6 hours')"
# Consumer snapshots come about ten a second per consumer: an hour of them is the limit.
SNAPSHOT_RANGE = f"({RANGE} <= interval '1 hour')"

# The tail of the fleet rollup: heartbeat_records_tail and heartbeat_anomalies_tail
# (sql/011) give the fleet rollup's columns for the minutes of the range after the newest
# rolled-up minute, but at most the minute of the range's end and the one before it
# (sql/010), from the counts the writer keeps per minute (no raw read). Older minutes the
# rollups have not reached are not read: _not_rolled_up counts them. Fleet series count a
# minute when its start lies in the range, from the rollup and the tail alike.
RECORDS_TAIL = "heartbeat_records_tail($__timeFrom()::timestamptz, $__timeTo()::timestamptz)"
ANOMALIES_TAIL = ("heartbeat_anomalies_tail($__timeFrom()::timestamptz, "
                  "$__timeTo()::timestamptz)")
NOT_ROLLED_UP_SERIES = "minutes not rolled up yet"  # the series' name, styled by the builder

# Alert episodes (sql/009): one column per kind, in the domain's order.
EPISODE_KINDS = tuple(str(kind) for kind in EpisodeKind)


def _not_rolled_up(where: str = "true") -> str:
    """Per bucket, the minutes of the range with readings that neither the rollups nor the
    tail hold yet (the rollups are behind: a stopped Dagster daemon, `consume` without
    `maintain`); `where`: when the panel reads the fleet rollup at all."""
    return _sql(
        f"""
        SELECT $__timeGroupAlias(minute, $__interval), count(*) AS "{NOT_ROLLED_UP_SERIES}"
        FROM heartbeat_minutes_not_rolled_up($__timeFrom()::timestamptz,
                                             $__timeTo()::timestamptz) AS pending(minute)
        WHERE {where}
        GROUP BY 1
        ORDER BY 1
        """
    ).rstrip("\n")


def _summary(column: str, title: str) -> str:
    """One column of vw_pipeline_summary, named as its stat panel."""
    return f'SELECT {column} AS "{title}" FROM vw_pipeline_summary'


def _episode_counts(where: str) -> str:
    """One column per kind (a kind with no episode shows 0), from the rows `where` selects."""
    columns = ",\n".join(
        f"       count(*) FILTER (WHERE kind = '{kind}') AS \"{kind}\""
        for kind in EPISODE_KINDS
    )
    return f"SELECT\n{columns}\n{_sql(where)}".rstrip("\n")


# -- pipeline health (stats) ---------------------------------------------------------------------

# NORMAL readings stored since the platform started (the writer's totals).
VALID_READINGS = _summary("total_records", "Valid readings")
# BRADYCARDIA, TACHYCARDIA and INVALID readings stored since the platform started.
ANOMALIES = _summary("total_anomalies", "Anomalies")
# Anomalies detected in the last five minutes.
ANOMALIES_LAST_5_MIN = _summary("anomalies_last_5m", "Anomalies (last 5 min)")
# Customers with a valid reading taken in the last five minutes.
ACTIVE_CUSTOMERS_5_MIN = _summary("active_customers_5m", "Active customers (5 min)")
# Dead letters in the raw retention window.
DEAD_LETTERS = _summary("dead_letter_count", "Dead letters")

# Event time of the newest valid reading, in epoch milliseconds.
LATEST_READING = _sql(
    """
    SELECT extract(epoch FROM latest_reading_at) * 1000 AS "Latest reading"
    FROM vw_pipeline_summary
    """
)

# Minutes with readings that neither the rollups nor the tail hold yet: 0 when all is well.
MINUTES_NOT_ROLLED_UP = _sql(
    """
    SELECT count(*) AS "Minutes not rolled up yet"
    FROM heartbeat_minutes_not_rolled_up('-infinity', now())
    """
)

# -- the fleet -----------------------------------------------------------------------------------

# Fleet Average BPM (A): the average heart rate per bucket of at least a minute.
FLEET_AVERAGE_BPM = _sql(
    f"""
    WITH minutes AS (
        SELECT minute, reading_count, bpm_sum
        FROM fleet_minute_stats
        WHERE $__timeFilter(minute)
        UNION ALL
        SELECT minute, reading_count, bpm_sum
        FROM {RECORDS_TAIL}
    )
    SELECT $__timeGroupAlias(minute, $__interval),
           round(sum(bpm_sum)::numeric / sum(reading_count), 1) AS "fleet average bpm"
    FROM minutes
    GROUP BY 1
    HAVING sum(reading_count) > 0
    ORDER BY 1
    """
)
# Fleet Average BPM (B): per bucket, the minutes the rollups have not reached yet.
FLEET_NOT_ROLLED_UP = _not_rolled_up()

# Anomaly Type breakdown: anomalous readings in the range by type, one row per type seen.
ANOMALY_TYPE_BREAKDOWN = _sql(
    f"""
    WITH counts AS (
        SELECT bradycardia_count, tachycardia_count, invalid_count
        FROM fleet_minute_stats
        WHERE $__timeFilter(minute)
        UNION ALL
        SELECT bradycardia_count, tachycardia_count, invalid_count
        FROM {ANOMALIES_TAIL}
    ), slices AS (
        SELECT unnest(ARRAY['BRADYCARDIA', 'TACHYCARDIA', 'INVALID']) AS "type",
               unnest(ARRAY[sum(bradycardia_count), sum(tachycardia_count),
                            sum(invalid_count)])::bigint AS "anomalies"
        FROM counts
    )
    SELECT "type", "anomalies"
    FROM slices
    WHERE "anomalies" > 0
    ORDER BY 1
    """
)

# -- streaming -----------------------------------------------------------------------------------

# Throughput (A), ranges up to an hour: messages consumed per second, from the consumers'
# stats_messages_consumed snapshots (a counter restarting at a new process is a reset).
THROUGHPUT_CONSUMED = _sql(
    f"""
    SELECT $__timeGroupAlias(recorded_at, $__interval),
           sum(CASE WHEN delta >= 0 THEN delta ELSE metric_value END)
               / ($__interval_ms / 1000.0) AS "consumed msg/s"
    FROM (
        SELECT recorded_at, metric_value,
               metric_value - lag(metric_value) OVER (
                   PARTITION BY labels->>'consumer' ORDER BY recorded_at, id
               ) AS delta
        FROM pipeline_metrics
        WHERE metric_name = 'stats_messages_consumed'
          AND $__timeFilter(recorded_at) AND {SNAPSHOT_RANGE}
    ) AS snapshots
    WHERE delta IS NOT NULL
    GROUP BY 1
    ORDER BY 1
    """
)
# Throughput (B), longer ranges: readings stored per second by event time, from the rollup.
THROUGHPUT_STORED = _sql(
    f"""
    WITH minutes AS (
        SELECT minute, reading_count + anomaly_count AS readings
        FROM fleet_minute_stats
        WHERE $__timeFilter(minute) AND NOT {SNAPSHOT_RANGE}
        UNION ALL
        SELECT minute, reading_count
        FROM {RECORDS_TAIL}
        WHERE NOT {SNAPSHOT_RANGE}
        UNION ALL
        SELECT minute, anomaly_count
        FROM {ANOMALIES_TAIL}
        WHERE NOT {SNAPSHOT_RANGE}
    )
    SELECT $__timeGroupAlias(minute, $__interval),
           sum(readings) / greatest($__interval_ms / 1000.0, 60) AS "stored readings/s"
    FROM minutes
    GROUP BY 1
    HAVING sum(readings) > 0
    ORDER BY 1
    """
)
# Throughput (C), longer ranges: the minutes the rollups have not reached yet.
THROUGHPUT_NOT_ROLLED_UP = _not_rolled_up(f"NOT {SNAPSHOT_RANGE}")

# Consumer lag (A): messages behind per partition, from the Dagster health snapshots.
CONSUMER_LAG_SNAPSHOTS = _sql(
    """
    SELECT recorded_at AS "time",
           coalesce('partition ' || (labels->>'partition'), 'all partitions')
               || ' lag' AS metric,
           metric_value AS value
    FROM pipeline_metrics
    WHERE metric_name = 'health_consumer_lag' AND $__timeFilter(recorded_at)
    ORDER BY 1, 2
    """
)
# Consumer lag (B): event-to-database delay, the worst of the newest 30 anomalies stored before
# each of at most 300 sample points.
CONSUMER_LAG_DELAY = _sql(
    f"""
    WITH samples AS (
        SELECT moment, width
        FROM (SELECT greatest($__interval_ms * interval '1 millisecond',
                              {RANGE} / 300) AS width) AS step,
             generate_series($__timeTo()::timestamptz, $__timeFrom()::timestamptz,
                             -width) AS moment
    )
    SELECT moment AS "time",
           max(extract(epoch FROM detected_at - event_timestamp)) AS "sampled delay"
    FROM samples
    CROSS JOIN LATERAL (
        SELECT detected_at, event_timestamp
        FROM heartbeat_anomalies
        WHERE detected_at <= moment AND detected_at > moment - width
        ORDER BY detected_at DESC
        LIMIT 30
    ) AS newest
    GROUP BY 1
    ORDER BY 1
    """
)

# Recent Anomalies: the newest 100 anomalies of the last 24 hours.
RECENT_ANOMALIES = _sql(
    """
    SELECT detected_at AS "detected", event_timestamp AS "reading time",
           customer_id AS "customer", heart_rate AS "bpm", anomaly_type AS "type",
           severity, kafka_partition AS "partition", kafka_offset AS "offset"
    FROM vw_recent_anomalies
    ORDER BY detected_at DESC, id DESC
    LIMIT 100
    """
)

# -- alert episodes ------------------------------------------------------------------------------
# The panels read firing episodes through the partial index on state = 'firing', and resolved
# ones through the partial index on resolved_at: never the whole history of episodes.

# Open episodes by kind: episodes firing now, one column per kind.
OPEN_EPISODES_BY_KIND = _episode_counts(
    """
    FROM alert_episodes
    WHERE state = 'firing'
    """
)
# Episodes opened in the time range: by kind, still firing or resolved since.
EPISODES_OPENED_IN_RANGE = _episode_counts(
    """
    FROM alert_episodes
    WHERE state = 'firing' AND $__timeFilter(opened_at)
       OR state = 'resolved' AND resolved_at >= $__timeFrom()::timestamptz
          AND $__timeFilter(opened_at)
    """
)
# Open episodes: the firing episodes, newest first, at most 200.
OPEN_EPISODES = _sql(
    """
    SELECT opened_at AS "opened", customer_id AS "customer", kind, severity,
           readings, worst_heart_rate AS "worst bpm",
           last_reading_at AS "last reading",
           acknowledged_by AS "acknowledged by", acknowledged_at AS "acknowledged",
           escalated_at AS "escalated", episode_id AS "episode"
    FROM alert_episodes
    WHERE state = 'firing'
    ORDER BY opened_at DESC, episode_id DESC
    LIMIT 200
    """
)

# -- one customer --------------------------------------------------------------------------------

# The customer variable: every customer seen, the one with the most recent anomaly first.
CUSTOMER_VARIABLE = _sql(
    """
    SELECT customer_id
    FROM customers
    ORDER BY last_anomaly_at DESC NULLS LAST, customer_id
    """
)

# BPM of $customer (A): every valid reading up to 6 hours, hourly averages for longer ranges.
CUSTOMER_BPM = _sql(
    f"""
    SELECT event_timestamp AS "time", heart_rate AS "bpm"
    FROM heartbeat_records
    WHERE customer_id = {CUSTOMER} AND $__timeFilter(event_timestamp)
      AND {RAW_CUSTOMER_RANGE}
    UNION ALL
    SELECT hour, round(bpm_sum::numeric / reading_count, 1)
    FROM customer_hourly_bpm_stats
    WHERE customer_id = {CUSTOMER} AND $__timeFilter(hour) AND reading_count > 0
      AND NOT {RAW_CUSTOMER_RANGE}
    UNION ALL
    SELECT date_trunc('hour', event_timestamp), round(avg(heart_rate), 1)
    FROM heartbeat_records
    WHERE customer_id = {CUSTOMER} AND $__timeFilter(event_timestamp)
      AND event_timestamp >= {HOURLY_TAIL} AND NOT {RAW_CUSTOMER_RANGE}
    GROUP BY 1
    ORDER BY 1
    """
)
# BPM of $customer (B): the customer's anomalies as points, one series per type.
CUSTOMER_ANOMALY_POINTS = _sql(
    f"""
    SELECT event_timestamp AS "time", anomaly_type AS metric, heart_rate AS value
    FROM heartbeat_anomalies
    WHERE customer_id = {CUSTOMER} AND $__timeFilter(event_timestamp)
    ORDER BY 1, 2
    """
)
# $customer in the time range: readings, average, min and max bpm and anomalies in the range.
CUSTOMER_SUMMARY = _sql(
    f"""
    WITH parts AS (
        SELECT reading_count AS readings, bpm_sum, min_bpm, max_bpm,
               anomaly_count AS anomalies
        FROM customer_hourly_bpm_stats
        WHERE customer_id = {CUSTOMER} AND $__timeFilter(hour)
          AND NOT {RAW_CUSTOMER_RANGE}
        UNION ALL
        SELECT count(*), sum(heart_rate), min(heart_rate), max(heart_rate), 0
        FROM heartbeat_records
        WHERE customer_id = {CUSTOMER} AND $__timeFilter(event_timestamp)
          AND ({RAW_CUSTOMER_RANGE} OR event_timestamp >= {HOURLY_TAIL})
        UNION ALL
        SELECT 0, 0, NULL, NULL, count(DISTINCT event_timestamp)
        FROM heartbeat_anomalies
        WHERE customer_id = {CUSTOMER} AND $__timeFilter(event_timestamp)
          AND ({RAW_CUSTOMER_RANGE} OR event_timestamp >= {HOURLY_TAIL})
    )
    SELECT sum(readings)::bigint AS "readings",
           round(sum(bpm_sum)::numeric / nullif(sum(readings), 0), 1) AS "avg bpm",
           min(min_bpm) AS "min bpm",
           max(max_bpm) AS "max bpm",
           sum(anomalies)::bigint AS "anomalies"
    FROM parts
    """
)
# Anomalies of $customer (last 24 h): the customer's newest 50 anomalies.
CUSTOMER_ANOMALIES = _sql(
    f"""
    SELECT detected_at AS "detected", event_timestamp AS "reading time",
           heart_rate AS "bpm", anomaly_type AS "type", severity
    FROM vw_recent_anomalies
    WHERE customer_id = {CUSTOMER}
    ORDER BY detected_at DESC, id DESC
    LIMIT 50
    """
)
