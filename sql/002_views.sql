-- Views of the original design, read by Grafana and the Dagster assets.

CREATE VIEW vw_customer_bpm_summary AS
WITH readings AS (
    SELECT customer_id,
           count(*)                         AS reading_count,
           round(avg(heart_rate), 1)        AS avg_bpm,
           min(heart_rate)                  AS min_bpm,
           max(heart_rate)                  AS max_bpm,
           round(stddev_samp(heart_rate), 1) AS stddev_bpm,
           min(event_timestamp)             AS first_reading_at,
           max(event_timestamp)             AS last_reading_at
    FROM heartbeat_records
    GROUP BY customer_id
), anomalies AS (
    SELECT customer_id,
           count(*)                                          AS anomaly_count,
           count(*) FILTER (WHERE anomaly_type = 'BRADYCARDIA') AS bradycardia_count,
           count(*) FILTER (WHERE anomaly_type = 'TACHYCARDIA') AS tachycardia_count,
           count(*) FILTER (WHERE anomaly_type = 'INVALID')     AS invalid_count,
           max(event_timestamp)                              AS last_anomaly_at
    FROM heartbeat_anomalies
    GROUP BY customer_id
)
SELECT coalesce(r.customer_id, a.customer_id)  AS customer_id,
       coalesce(r.reading_count, 0)            AS reading_count,
       r.avg_bpm, r.min_bpm, r.max_bpm, r.stddev_bpm,
       r.first_reading_at, r.last_reading_at,
       coalesce(a.anomaly_count, 0)            AS anomaly_count,
       coalesce(a.bradycardia_count, 0)        AS bradycardia_count,
       coalesce(a.tachycardia_count, 0)        AS tachycardia_count,
       coalesce(a.invalid_count, 0)            AS invalid_count,
       a.last_anomaly_at
FROM readings r
FULL OUTER JOIN anomalies a ON a.customer_id = r.customer_id;

-- Anomalies detected in the last 24 hours, newest first.
CREATE VIEW vw_recent_anomalies AS
SELECT id,
       customer_id,
       heart_rate,
       anomaly_type,
       CASE anomaly_type WHEN 'INVALID' THEN 'SENSOR_FAULT' ELSE 'CRITICAL' END AS severity,
       event_timestamp,
       detected_at,
       kafka_partition,
       kafka_offset
FROM heartbeat_anomalies
WHERE detected_at > now() - interval '24 hours'
ORDER BY detected_at DESC, id DESC;

-- One row: the health of the whole pipeline.
CREATE VIEW vw_pipeline_summary AS
SELECT
    (SELECT count(*) FROM heartbeat_records)                               AS total_records,
    (SELECT count(*) FROM heartbeat_anomalies)                             AS total_anomalies,
    (SELECT count(*) FROM heartbeat_anomalies WHERE anomaly_type = 'BRADYCARDIA') AS bradycardia_count,
    (SELECT count(*) FROM heartbeat_anomalies WHERE anomaly_type = 'TACHYCARDIA') AS tachycardia_count,
    (SELECT count(*) FROM heartbeat_anomalies WHERE anomaly_type = 'INVALID')     AS invalid_count,
    (SELECT count(*) FROM heartbeat_anomalies
      WHERE detected_at > now() - interval '5 minutes')                    AS anomalies_last_5m,
    (SELECT count(*) FROM heartbeat_dead_letters)                          AS dead_letter_count,
    (SELECT count(DISTINCT customer_id) FROM heartbeat_records
      WHERE event_timestamp > now() - interval '5 minutes')                AS active_customers_5m,
    (SELECT count(DISTINCT customer_id) FROM heartbeat_records)            AS total_customers,
    (SELECT max(event_timestamp) FROM heartbeat_records)                   AS latest_reading_at,
    (SELECT count(*) FROM pipeline_metrics WHERE metric_name LIKE 'alert\_%') AS alerts_total;
