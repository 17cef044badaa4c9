-- A raw tail that stays small when readings stop or the rollups fall behind (DESIGN.md,
-- "Running for months"; README, "The dashboard when the rollups lag").
--
-- The views and dashboard panels add to the rollups the raw readings newer than the newest
-- rolled-up minute (the tail). With the rollups stopped (no Dagster daemon, `consume`
-- without `maintain`) that tail grew without bound, and the fleet panels read it a minute at
-- a time up to the end of their range, so an idle platform got slower the longer it was
-- idle. From here on the tail is at most the minute of `at` (or now) and the one before it:
-- what the scheduled rollups (a sensor every 30 s, a minute settles 5 s after it closes)
-- leave unrolled in normal operation, read with one range scan per raw table. Older minutes
-- that still hold readings not rolled up are not read; they are counted instead, from their
-- pending marks (rollup_pending), so a panel says "minutes not rolled up yet" rather than
-- scan.
--
-- Tail reads name heart_rate (a column no index holds): PostgreSQL 18 would otherwise read
-- a range of event times from the primary key (customer_id, event_timestamp) by skip scan,
-- customer by customer, instead of through the BRIN index on event_timestamp.

-- The newest minute a raw tail read at `at` holds: the minute of `at`, or of now for a
-- range that ends in the future.
CREATE FUNCTION heartbeat_raw_tail_end(at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT date_trunc('minute', least(at, now()))
$$;

-- Where the raw tail read at `at` starts: the first minute after the newest rolled-up one,
-- but never before the minute before heartbeat_raw_tail_end(at). The one place that bound
-- is written.
CREATE FUNCTION heartbeat_raw_tail_start(at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT greatest((SELECT max(minute) + interval '1 minute' FROM fleet_minute_stats),
                    heartbeat_raw_tail_end(at) - interval '1 minute')
$$;

-- The minutes in [from_at, the raw tail at to_at) whose readings are not (all) rolled up
-- yet: marked pending by the consumer and not read by the raw tail either. One index range
-- of rollup_pending (a row per minute and Kafka partition behind).
CREATE FUNCTION heartbeat_minutes_not_rolled_up(from_at timestamptz, to_at timestamptz)
RETURNS SETOF timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT DISTINCT window_start
    FROM rollup_pending
    WHERE rollup = 'fleet_minute' AND window_start >= from_at
      AND window_start < least(to_at, heartbeat_raw_tail_start(to_at))
    ORDER BY 1
$$;

-- The raw tail's minutes of the range [from_at, to_at]: those whose start lies in the range,
-- from heartbeat_raw_tail_start(to_at) to heartbeat_raw_tail_end(to_at), so at most two,
-- as [start, last_minute + 1 minute).
CREATE FUNCTION heartbeat_tail_minutes(from_at timestamptz, to_at timestamptz,
                                       OUT start timestamptz, OUT last_minute timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT greatest(heartbeat_raw_tail_start(to_at),
                    date_trunc('minute', from_at + interval '59.999999 s')),
           heartbeat_raw_tail_end(to_at)
$$;

-- The fleet rollup's reading columns for the raw tail's minutes of [from_at, to_at], a row
-- per minute that holds a valid reading: one range scan, bucketed by a comparison with the
-- minute of to_at (bucketing every row with date_trunc or date_bin costs twice as much).
CREATE FUNCTION heartbeat_records_tail(from_at timestamptz, to_at timestamptz)
RETURNS TABLE (minute timestamptz, reading_count bigint, bpm_sum bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH bounds AS MATERIALIZED (
        SELECT * FROM heartbeat_tail_minutes(from_at, to_at)
    ), buckets AS (
        SELECT event_timestamp >= (SELECT last_minute FROM bounds) AS newest,
               count(heart_rate) AS n, sum(heart_rate) AS s
        FROM heartbeat_records
        WHERE event_timestamp >= (SELECT start FROM bounds)
          AND event_timestamp < (SELECT last_minute FROM bounds) + interval '1 minute'
        GROUP BY 1
    )
    SELECT CASE WHEN newest THEN last_minute ELSE last_minute - interval '1 minute' END, n, s
    FROM buckets CROSS JOIN bounds
    ORDER BY 1
$$;

-- The fleet rollup's anomaly columns for the same minutes, a row per minute that holds an
-- anomaly; a reading stored twice (same customer and timestamp) counts once, as in the rollup.
CREATE FUNCTION heartbeat_anomalies_tail(from_at timestamptz, to_at timestamptz)
RETURNS TABLE (minute timestamptz, anomaly_count bigint, bradycardia_count bigint,
               tachycardia_count bigint, invalid_count bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH bounds AS MATERIALIZED (
        SELECT * FROM heartbeat_tail_minutes(from_at, to_at)
    ), buckets AS (
        SELECT event_timestamp >= (SELECT last_minute FROM bounds) AS newest,
               count(*) AS n,
               count(*) FILTER (WHERE anomaly_type = 'BRADYCARDIA') AS brady,
               count(*) FILTER (WHERE anomaly_type = 'TACHYCARDIA') AS tachy,
               count(*) FILTER (WHERE anomaly_type = 'INVALID') AS invalid
        FROM (SELECT DISTINCT ON (customer_id, event_timestamp) event_timestamp, anomaly_type
              FROM heartbeat_anomalies
              WHERE event_timestamp >= (SELECT start FROM bounds)
                AND event_timestamp < (SELECT last_minute FROM bounds) + interval '1 minute'
             ) AS a
        GROUP BY 1
    )
    SELECT CASE WHEN newest THEN last_minute ELSE last_minute - interval '1 minute' END,
           n, brady, tachy, invalid
    FROM buckets CROSS JOIN bounds
    ORDER BY 1
$$;

-- The same columns as sql/006's view, answered from the bounded tail: readings of the
-- minutes heartbeat_minutes_not_rolled_up counts are in no column until they are rolled up.
CREATE OR REPLACE VIEW vw_pipeline_summary AS
WITH frontier AS MATERIALIZED (
    SELECT heartbeat_raw_tail_start(now()) AS at
), totals AS MATERIALIZED (
    SELECT * FROM fleet_totals
), tail_anomalies AS MATERIALIZED (
    SELECT count(*) AS anomalies,
           count(*) FILTER (WHERE anomaly_type = 'BRADYCARDIA') AS bradycardia,
           count(*) FILTER (WHERE anomaly_type = 'TACHYCARDIA') AS tachycardia,
           count(*) FILTER (WHERE anomaly_type = 'INVALID') AS invalid
    FROM (SELECT DISTINCT ON (customer_id, event_timestamp) anomaly_type
          FROM heartbeat_anomalies
          WHERE event_timestamp >= (SELECT at FROM frontier)) AS a
)
SELECT
    (SELECT reading_count FROM totals)
      + (SELECT count(heart_rate) FROM heartbeat_records
          WHERE event_timestamp >= (SELECT at FROM frontier))       AS total_records,
    (SELECT anomaly_count FROM totals)
      + (SELECT anomalies FROM tail_anomalies)                      AS total_anomalies,
    (SELECT bradycardia_count FROM totals)
      + (SELECT bradycardia FROM tail_anomalies)                    AS bradycardia_count,
    (SELECT tachycardia_count FROM totals)
      + (SELECT tachycardia FROM tail_anomalies)                    AS tachycardia_count,
    (SELECT invalid_count FROM totals)
      + (SELECT invalid FROM tail_anomalies)                        AS invalid_count,
    (SELECT count(*) FROM heartbeat_anomalies
      WHERE detected_at > now() - interval '5 minutes')             AS anomalies_last_5m,
    (SELECT count(*) FROM heartbeat_dead_letters)                   AS dead_letter_count,
    (SELECT count(*) FROM (
        SELECT customer_id FROM customers
        WHERE last_reading_at > now() - interval '5 minutes'
        UNION
        SELECT customer_id FROM heartbeat_records
        WHERE event_timestamp >= greatest((SELECT at FROM frontier),
                                          now() - interval '5 minutes')
          AND heart_rate > 0) AS active)                            AS active_customers_5m,
    (SELECT count(*) FROM (
        SELECT customer_id FROM customers WHERE last_reading_at IS NOT NULL
        UNION
        SELECT customer_id FROM heartbeat_records
        WHERE event_timestamp >= (SELECT at FROM frontier) AND heart_rate > 0) AS seen)
                                                                    AS total_customers,
    greatest((SELECT max(last_reading_at) FROM customers),
             (SELECT max(event_timestamp) FROM heartbeat_records
              WHERE event_timestamp >= (SELECT at FROM frontier)
                AND heart_rate > 0))                                AS latest_reading_at,
    (SELECT anomaly_count FROM totals)
      + (SELECT anomalies FROM tail_anomalies)                      AS alerts_total;

-- Grafana's role and the pipeline's (sql/003, sql/008) call these functions; say so rather
-- than rely on PostgreSQL's default EXECUTE for PUBLIC.
DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['heartbeat_raw_tail_end(timestamptz)',
                              'heartbeat_raw_tail_start(timestamptz)',
                              'heartbeat_minutes_not_rolled_up(timestamptz, timestamptz)',
                              'heartbeat_tail_minutes(timestamptz, timestamptz)',
                              'heartbeat_records_tail(timestamptz, timestamptz)',
                              'heartbeat_anomalies_tail(timestamptz, timestamptz)'] LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO heartbeat_grafana_reader, '
                       'heartbeat_pipeline', fn);
    END LOOP;
END
$$;
