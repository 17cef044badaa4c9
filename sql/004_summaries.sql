-- Summary tables for dashboards, materialised by the Dagster assets of the same names with
-- REFRESH MATERIALIZED VIEW CONCURRENTLY: readers keep seeing the previous contents while a
-- refresh runs (that needs the unique index on each). A refresh recomputes from the raw
-- tables. Anomalies count each reading once (same customer and timestamp), so a reading
-- replayed at another Kafka offset does not inflate them.

CREATE MATERIALIZED VIEW customer_daily_bpm_stats AS
WITH readings AS (
    SELECT customer_id,
           (event_timestamp AT TIME ZONE 'UTC')::date AS day,
           count(*)                                    AS reading_count,
           round(avg(heart_rate), 1)                   AS avg_bpm,
           min(heart_rate)                             AS min_bpm,
           max(heart_rate)                             AS max_bpm,
           round(stddev_samp(heart_rate), 1)           AS stddev_bpm
    FROM heartbeat_records
    GROUP BY 1, 2
), anomalies AS (
    SELECT customer_id,
           (event_timestamp AT TIME ZONE 'UTC')::date           AS day,
           count(*)                                             AS anomaly_count,
           count(*) FILTER (WHERE anomaly_type = 'BRADYCARDIA') AS bradycardia_count,
           count(*) FILTER (WHERE anomaly_type = 'TACHYCARDIA') AS tachycardia_count,
           count(*) FILTER (WHERE anomaly_type = 'INVALID')     AS invalid_count
    FROM (SELECT DISTINCT ON (customer_id, event_timestamp) customer_id, event_timestamp,
                 anomaly_type
          FROM heartbeat_anomalies) AS a
    GROUP BY 1, 2
)
SELECT customer_id, day,
       coalesce(reading_count, 0)     AS reading_count,
       avg_bpm, min_bpm, max_bpm, stddev_bpm,
       coalesce(anomaly_count, 0)     AS anomaly_count,
       coalesce(bradycardia_count, 0) AS bradycardia_count,
       coalesce(tachycardia_count, 0) AS tachycardia_count,
       coalesce(invalid_count, 0)     AS invalid_count
FROM readings
FULL OUTER JOIN anomalies USING (customer_id, day);
CREATE UNIQUE INDEX customer_daily_bpm_stats_uq ON customer_daily_bpm_stats (customer_id, day);

CREATE MATERIALIZED VIEW fleet_minute_stats AS
WITH readings AS (
    SELECT date_trunc('minute', event_timestamp) AS minute,
           count(*)                              AS reading_count,
           count(DISTINCT customer_id)           AS customer_count,
           round(avg(heart_rate), 1)             AS avg_bpm,
           min(heart_rate)                       AS min_bpm,
           max(heart_rate)                       AS max_bpm
    FROM heartbeat_records
    GROUP BY 1
), anomalies AS (
    SELECT date_trunc('minute', event_timestamp)                AS minute,
           count(*)                                             AS anomaly_count,
           count(*) FILTER (WHERE anomaly_type = 'BRADYCARDIA') AS bradycardia_count,
           count(*) FILTER (WHERE anomaly_type = 'TACHYCARDIA') AS tachycardia_count,
           count(*) FILTER (WHERE anomaly_type = 'INVALID')     AS invalid_count
    FROM (SELECT DISTINCT ON (customer_id, event_timestamp) event_timestamp, anomaly_type
          FROM heartbeat_anomalies) AS a
    GROUP BY 1
)
SELECT minute,
       coalesce(reading_count, 0)     AS reading_count,
       coalesce(customer_count, 0)    AS customer_count,
       avg_bpm, min_bpm, max_bpm,
       coalesce(anomaly_count, 0)     AS anomaly_count,
       coalesce(bradycardia_count, 0) AS bradycardia_count,
       coalesce(tachycardia_count, 0) AS tachycardia_count,
       coalesce(invalid_count, 0)     AS invalid_count
FROM readings
FULL OUTER JOIN anomalies USING (minute);
CREATE UNIQUE INDEX fleet_minute_stats_uq ON fleet_minute_stats (minute);

-- The per-minute pipeline health snapshot counts what arrived in its window by arrival
-- time; these keep that a range scan instead of a full scan of every table each minute.
CREATE INDEX heartbeat_records_ingested_at_idx ON heartbeat_records (ingested_at);
CREATE INDEX heartbeat_anomalies_detected_at_idx ON heartbeat_anomalies (detected_at);
CREATE INDEX heartbeat_dead_letters_received_at_idx ON heartbeat_dead_letters (received_at);
