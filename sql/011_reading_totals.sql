-- Counts the writer keeps in each batch's transaction, so the dashboard and the views read
-- a few rows instead of raw readings (README, "Storage: what is kept, for how long, and
-- what each query reads"; "The dashboard when the rollups lag").
--
-- A minute at the design rate is 600,000 raw readings: counting them takes 100-250 ms on
-- a small server even through a fresh BRIN index, and vw_pipeline_summary's totals (the
-- rollups plus every raw reading newer than them) grew without bound while the rollups
-- were stopped. Instead the writer adds what each batch stored (each reading once, a
-- repeat the tables refused not at all) to:
-- - reading_totals: readings and anomalies by type since the platform started, and the
--   newest valid reading: vw_pipeline_summary's totals, exact in every rollup state;
-- - fleet_minute_live: the same counts and the bpm sum per minute: the fleet panels' tail
--   (the minutes the rollups have not reached yet) without a raw read;
-- - customers: a customer's row once it has a valid reading in a minute newer than the
--   one its row holds, so the customer counts need no raw read either.
-- Rows are per Kafka partition (the one the batch's rollup marks go under), so the
-- consumers of a group never wait on each other's rows. Retention drops raw days, never
-- totals; fleet_minute_live keeps an hour behind the rollups (the rollup prunes it).

CREATE TABLE reading_totals (
    kafka_partition    integer PRIMARY KEY,  -- -1: this migration, or a bulk load
    reading_count      bigint NOT NULL DEFAULT 0,  -- valid (NORMAL) readings
    anomaly_count      bigint NOT NULL DEFAULT 0,  -- BRADYCARDIA + TACHYCARDIA + INVALID
    bradycardia_count  bigint NOT NULL DEFAULT 0,
    tachycardia_count  bigint NOT NULL DEFAULT 0,
    invalid_count      bigint NOT NULL DEFAULT 0,
    latest_reading_at  timestamptz                 -- event time of the newest valid reading
);

CREATE TABLE fleet_minute_live (
    minute             timestamptz NOT NULL,
    kafka_partition    integer     NOT NULL,
    reading_count      bigint NOT NULL,
    bpm_sum            bigint NOT NULL,
    anomaly_count      bigint NOT NULL,
    bradycardia_count  bigint NOT NULL,
    tachycardia_count  bigint NOT NULL,
    invalid_count      bigint NOT NULL,
    PRIMARY KEY (minute, kafka_partition)
);

-- Add readings just stored: per minute (the arrays, one element per minute) and in all.
CREATE FUNCTION heartbeat_count_readings(partition_key integer, minutes timestamptz[],
                                         records bigint[], bpm_sums bigint[],
                                         bradycardia bigint[], tachycardia bigint[],
                                         invalid bigint[], newest_record timestamptz)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO fleet_minute_live AS l (minute, kafka_partition, reading_count, bpm_sum,
                                        anomaly_count, bradycardia_count, tachycardia_count,
                                        invalid_count)
    SELECT m, partition_key, n, s, b + t + i, b, t, i
    FROM unnest(minutes, records, bpm_sums, bradycardia, tachycardia, invalid)
         AS u (m, n, s, b, t, i)
    ORDER BY m  -- rows locked in one order by every writer
    ON CONFLICT (minute, kafka_partition) DO UPDATE SET
        reading_count = l.reading_count + excluded.reading_count,
        bpm_sum = l.bpm_sum + excluded.bpm_sum,
        anomaly_count = l.anomaly_count + excluded.anomaly_count,
        bradycardia_count = l.bradycardia_count + excluded.bradycardia_count,
        tachycardia_count = l.tachycardia_count + excluded.tachycardia_count,
        invalid_count = l.invalid_count + excluded.invalid_count;
    INSERT INTO reading_totals AS t (kafka_partition, reading_count, anomaly_count,
                                     bradycardia_count, tachycardia_count, invalid_count,
                                     latest_reading_at)
    SELECT partition_key, sum(n), sum(b + t + i), sum(b), sum(t), sum(i), newest_record
    FROM unnest(records, bradycardia, tachycardia, invalid) AS u (n, b, t, i)
    ON CONFLICT (kafka_partition) DO UPDATE SET
        reading_count = t.reading_count + excluded.reading_count,
        anomaly_count = t.anomaly_count + excluded.anomaly_count,
        bradycardia_count = t.bradycardia_count + excluded.bradycardia_count,
        tachycardia_count = t.tachycardia_count + excluded.tachycardia_count,
        invalid_count = t.invalid_count + excluded.invalid_count,
        latest_reading_at = greatest(t.latest_reading_at, excluded.latest_reading_at);
$$;

-- Customers with valid readings between first_at and last_at (each customer once), merged
-- like the fleet-minute rollup merges them.
CREATE FUNCTION heartbeat_note_customers(customer_ids text[], first_at timestamptz[],
                                         last_at timestamptz[])
RETURNS void LANGUAGE sql AS $$
    INSERT INTO customers AS c (customer_id, first_reading_at, last_reading_at)
    SELECT * FROM unnest(customer_ids, first_at, last_at) AS u
    ORDER BY 1  -- rows locked in one order by every writer
    ON CONFLICT (customer_id) DO UPDATE SET
        first_reading_at = least(c.first_reading_at, excluded.first_reading_at),
        last_reading_at = greatest(c.last_reading_at, excluded.last_reading_at);
$$;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY[
        'heartbeat_count_readings(integer, timestamptz[], bigint[], bigint[], bigint[], '
        'bigint[], bigint[], timestamptz)',
        'heartbeat_note_customers(text[], timestamptz[], timestamptz[])'] LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO heartbeat_pipeline', fn);
    END LOOP;
END
$$;

-- What is stored now: the rolled-up totals, plus what the pending minutes hold beyond what
-- their rollup rows (if any) hold; the live minutes are those not rolled up yet. Run with
-- the consumer stopped, as every migration.
CREATE TEMP TABLE pending_minutes ON COMMIT DROP AS
SELECT p.minute, coalesce(r.readings, 0) AS readings, coalesce(r.bpm_sum, 0) AS bpm_sum,
       r.newest, coalesce(a.bradycardia, 0) AS bradycardia,
       coalesce(a.tachycardia, 0) AS tachycardia, coalesce(a.invalid, 0) AS invalid,
       f.minute IS NOT NULL AS rolled
FROM (SELECT DISTINCT window_start AS minute FROM rollup_pending
      WHERE rollup = 'fleet_minute') AS p
CROSS JOIN LATERAL (
    SELECT count(*) AS readings, sum(heart_rate) AS bpm_sum, max(event_timestamp) AS newest
    FROM heartbeat_records
    WHERE event_timestamp >= p.minute AND event_timestamp < p.minute + interval '1 minute'
) AS r
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE anomaly_type = 'BRADYCARDIA') AS bradycardia,
           count(*) FILTER (WHERE anomaly_type = 'TACHYCARDIA') AS tachycardia,
           count(*) FILTER (WHERE anomaly_type = 'INVALID') AS invalid
    FROM heartbeat_anomalies
    WHERE event_timestamp >= p.minute AND event_timestamp < p.minute + interval '1 minute'
) AS a
LEFT JOIN fleet_minute_stats f ON f.minute = p.minute;

INSERT INTO fleet_minute_live
SELECT minute, -1, readings, bpm_sum, bradycardia + tachycardia + invalid, bradycardia,
       tachycardia, invalid
FROM pending_minutes
WHERE minute > coalesce((SELECT max(minute) FROM fleet_minute_stats), '-infinity');

WITH rolled AS (
    SELECT coalesce(sum(reading_count), 0) AS readings,
           coalesce(sum(bradycardia_count), 0) AS bradycardia,
           coalesce(sum(tachycardia_count), 0) AS tachycardia,
           coalesce(sum(invalid_count), 0) AS invalid
    FROM fleet_minute_stats WHERE minute IN (SELECT minute FROM pending_minutes)
), raw AS (
    SELECT coalesce(sum(readings), 0) AS readings, coalesce(sum(bradycardia), 0) AS bradycardia,
           coalesce(sum(tachycardia), 0) AS tachycardia, coalesce(sum(invalid), 0) AS invalid,
           max(newest) AS newest
    FROM pending_minutes
)
INSERT INTO reading_totals
SELECT -1, (t.reading_count + raw.readings - rolled.readings)::bigint,
       (t.anomaly_count + raw.bradycardia + raw.tachycardia + raw.invalid
        - rolled.bradycardia - rolled.tachycardia - rolled.invalid)::bigint,
       (t.bradycardia_count + raw.bradycardia - rolled.bradycardia)::bigint,
       (t.tachycardia_count + raw.tachycardia - rolled.tachycardia)::bigint,
       (t.invalid_count + raw.invalid - rolled.invalid)::bigint,
       greatest((SELECT max(last_reading_at) FROM customers), raw.newest)
FROM fleet_totals t, rolled, raw;

-- Customers whose valid readings the rollups have not reached yet.
SELECT heartbeat_note_customers(array_agg(customer_id), array_agg(first_at),
                                array_agg(last_at))
FROM (SELECT r.customer_id, min(r.event_timestamp) AS first_at,
             max(r.event_timestamp) AS last_at
      FROM pending_minutes p
      JOIN heartbeat_records r
        ON r.event_timestamp >= p.minute AND r.event_timestamp < p.minute + interval '1 minute'
      GROUP BY r.customer_id) AS seen
HAVING count(*) > 0;

-- The rollups no longer keep totals of their own.
DROP TABLE fleet_totals CASCADE;

-- The fleet rollup's reading columns for the tail's minutes of [from_at, to_at]
-- (heartbeat_tail_minutes, sql/010), a row per minute that holds a valid reading.
CREATE FUNCTION heartbeat_records_tail(from_at timestamptz, to_at timestamptz)
RETURNS TABLE (minute timestamptz, reading_count bigint, bpm_sum bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT l.minute, sum(l.reading_count)::bigint, sum(l.bpm_sum)::bigint
    FROM fleet_minute_live l, heartbeat_tail_minutes(from_at, to_at) AS b
    WHERE l.minute >= b.start AND l.minute <= b.last_minute
    GROUP BY l.minute
    HAVING sum(l.reading_count) > 0
    ORDER BY 1
$$;

-- The fleet rollup's anomaly columns for the same minutes, a row per minute that holds an
-- anomaly.
CREATE FUNCTION heartbeat_anomalies_tail(from_at timestamptz, to_at timestamptz)
RETURNS TABLE (minute timestamptz, anomaly_count bigint, bradycardia_count bigint,
               tachycardia_count bigint, invalid_count bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT l.minute, sum(l.anomaly_count)::bigint, sum(l.bradycardia_count)::bigint,
           sum(l.tachycardia_count)::bigint, sum(l.invalid_count)::bigint
    FROM fleet_minute_live l, heartbeat_tail_minutes(from_at, to_at) AS b
    WHERE l.minute >= b.start AND l.minute <= b.last_minute
    GROUP BY l.minute
    HAVING sum(l.anomaly_count) > 0
    ORDER BY 1
$$;
GRANT EXECUTE ON FUNCTION heartbeat_records_tail(timestamptz, timestamptz),
                          heartbeat_anomalies_tail(timestamptz, timestamptz)
    TO heartbeat_grafana_reader, heartbeat_pipeline;

-- The same columns as before, none of them read from the raw readings but the last five
-- minutes of anomalies (their detected_at index) and the dead letters. Totals and the
-- newest reading: reading_totals. Customers: the customers table, whose last_reading_at
-- lies in the newest minute holding a valid reading of the customer; only a customer
-- whose row falls in the minute five minutes ago is looked up in the raw rows (primary
-- key). Each column is its own subquery, so a stat panel computes only its own.
CREATE VIEW vw_pipeline_summary AS
WITH totals AS MATERIALIZED (
    SELECT coalesce(sum(reading_count), 0)::bigint AS readings,
           coalesce(sum(anomaly_count), 0)::bigint AS anomalies,
           coalesce(sum(bradycardia_count), 0)::bigint AS bradycardia,
           coalesce(sum(tachycardia_count), 0)::bigint AS tachycardia,
           coalesce(sum(invalid_count), 0)::bigint AS invalid,
           max(latest_reading_at) AS latest_reading_at
    FROM reading_totals
)
SELECT
    (SELECT readings FROM totals)                                   AS total_records,
    (SELECT anomalies FROM totals)                                  AS total_anomalies,
    (SELECT bradycardia FROM totals)                                AS bradycardia_count,
    (SELECT tachycardia FROM totals)                                AS tachycardia_count,
    (SELECT invalid FROM totals)                                    AS invalid_count,
    (SELECT count(*) FROM heartbeat_anomalies
      WHERE detected_at > now() - interval '5 minutes')             AS anomalies_last_5m,
    (SELECT count(*) FROM heartbeat_dead_letters)                   AS dead_letter_count,
    (SELECT count(*) FROM customers c
      WHERE c.last_reading_at > now() - interval '5 minutes'
         OR (c.last_reading_at >= date_trunc('minute', now() - interval '5 minutes')
             AND EXISTS (SELECT FROM heartbeat_records r
                         WHERE r.customer_id = c.customer_id
                           AND r.event_timestamp > now() - interval '5 minutes')))
                                                                    AS active_customers_5m,
    (SELECT count(*) FROM customers WHERE last_reading_at IS NOT NULL)
                                                                    AS total_customers,
    (SELECT latest_reading_at FROM totals)                          AS latest_reading_at,
    (SELECT anomalies FROM totals)                                  AS alerts_total;
