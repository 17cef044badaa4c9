-- Storage that keeps its speed for months (DESIGN.md, "Running for months").
--
-- 1. The four raw tables become PostgreSQL declarative partitions, one per UTC day:
--    readings by their event time, dead letters and metrics by their own time column.
--    Retention removes a day by dropping its partition (never a bulk DELETE), and every
--    query with a time filter touches only the days it asks for. Partitions are created by
--    heartbeat_ensure_partitions() below: for the retention window and a few days ahead at
--    init-db, then by the consumer itself and the scheduled `raw_partitions` Dagster job.
-- 2. Rollups (fleet per minute, customer per hour and per day) become plain tables that
--    are brought up to date window by window: the consumer marks the minutes each batch
--    touched in rollup_pending, in the batch's transaction, and the rollup jobs recompute
--    exactly those windows. A minute is read from the raw rows once, into
--    customer_minute_stats (kept as long as the raw rows); the fleet minute, the customer
--    hour and the customer day are built from the level below. Every level keeps sums and
--    sums of squares, so coarser windows and the views combine them exactly.
-- 3. The views of the original design keep their names and columns, answered from the
--    rollups plus the raw readings newer than the rollups (a bounded tail).
--
-- Existing rows are moved into the new layout; their windows are marked pending so the
-- first rollup run computes them. Run with the consumer stopped (init-db does).

-- The old layout leaves for a private schema while its rows are copied, then is dropped.
CREATE SCHEMA heartbeat_migration_006;
DROP VIEW vw_customer_bpm_summary, vw_recent_anomalies, vw_pipeline_summary;
DROP MATERIALIZED VIEW customer_daily_bpm_stats, fleet_minute_stats;
ALTER TABLE heartbeat_records SET SCHEMA heartbeat_migration_006;
ALTER TABLE heartbeat_anomalies SET SCHEMA heartbeat_migration_006;
ALTER TABLE heartbeat_dead_letters SET SCHEMA heartbeat_migration_006;
ALTER TABLE pipeline_metrics SET SCHEMA heartbeat_migration_006;

-- Columns are ordered widest first: no alignment padding between them, 8 bytes less per
-- row than the original order. customer_id keeps the "C" collation (see 001).
CREATE TABLE heartbeat_records (
    event_timestamp  timestamptz NOT NULL,
    kafka_offset     bigint      NOT NULL,
    -- when the row was written (not the transaction's start): end-to-end latency
    ingested_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    heart_rate       integer     NOT NULL CHECK (heart_rate BETWEEN 40 AND 180),
    log_epoch        integer     NOT NULL DEFAULT 0,
    kafka_partition  integer     NOT NULL,
    customer_id      text COLLATE "C" NOT NULL,
    PRIMARY KEY (customer_id, event_timestamp)
) PARTITION BY RANGE (event_timestamp);
-- BRIN on both times: rows arrive in time order, so block ranges summarise them well, and a
-- BRIN index costs next to nothing per insert. (The B-tree on ingested_at that 004 added
-- for the health snapshot cost every insert about a fifth of its time.)
CREATE INDEX heartbeat_records_event_timestamp_brin
    ON heartbeat_records USING brin (event_timestamp);
CREATE INDEX heartbeat_records_ingested_at_brin ON heartbeat_records USING brin (ingested_at);

-- A message is stored once: its Kafka position plus its event time (the partition key must
-- be part of every unique key; a replay of a message has the same event time).
CREATE TABLE heartbeat_anomalies (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    customer_id      text COLLATE "C" NOT NULL,
    event_timestamp  timestamptz NOT NULL,
    heart_rate       integer     NOT NULL,
    anomaly_type     text        NOT NULL
        CHECK (anomaly_type IN ('BRADYCARDIA', 'TACHYCARDIA', 'INVALID')),
    raw_payload      text        NOT NULL,
    log_epoch        integer     NOT NULL DEFAULT 0,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    detected_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (log_epoch, kafka_partition, kafka_offset, event_timestamp)
) PARTITION BY RANGE (event_timestamp);
CREATE INDEX heartbeat_anomalies_customer_time_idx
    ON heartbeat_anomalies (customer_id, event_timestamp);
CREATE INDEX heartbeat_anomalies_detected_at_idx ON heartbeat_anomalies (detected_at);
-- The views' and panels' raw tail (anomalies newer than the newest rolled-up minute).
CREATE INDEX heartbeat_anomalies_event_timestamp_brin
    ON heartbeat_anomalies USING brin (event_timestamp);

-- Dead letters by arrival time. No unique key can name a message here (the partition key,
-- received_at, differs on a replay); the writer skips a message already stored instead,
-- through this index.
CREATE TABLE heartbeat_dead_letters (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    log_epoch        integer     NOT NULL DEFAULT 0,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    message_key      bytea,
    raw_value        bytea,
    reason           text        NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (received_at);
CREATE INDEX heartbeat_dead_letters_message_idx
    ON heartbeat_dead_letters (kafka_partition, kafka_offset, log_epoch);
CREATE INDEX heartbeat_dead_letters_received_at_idx ON heartbeat_dead_letters (received_at);

-- Alerts, stats snapshots and health rows by the time they were recorded. An alert row is
-- written only with its anomaly row (the writer inserts the alerts of the anomalies it
-- actually inserted), which is what keeps a replay from doubling it.
CREATE TABLE pipeline_metrics (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    metric_name      text             NOT NULL,
    metric_value     double precision NOT NULL,
    customer_id      text,
    log_epoch        integer,
    kafka_partition  integer,
    kafka_offset     bigint,
    labels           jsonb            NOT NULL DEFAULT '{}'::jsonb,
    recorded_at      timestamptz      NOT NULL DEFAULT now()
) PARTITION BY RANGE (recorded_at);
CREATE INDEX pipeline_metrics_name_time_idx ON pipeline_metrics (metric_name, recorded_at);

-- The first rollup level, one row per customer and minute, computed from the raw rows of
-- the minute (each reading once); partitioned and kept like the raw rows it summarises.
-- The customer hour and the fleet minute are built from it: a minute of the fleet is read
-- from the raw tables once, whichever rollups need it.
CREATE TABLE customer_minute_stats (
    minute             timestamptz NOT NULL,
    reading_count      bigint  NOT NULL,
    bpm_sum            bigint  NOT NULL,
    bpm_sum_squares    bigint  NOT NULL,
    min_bpm            integer,
    max_bpm            integer,
    anomaly_count      bigint  NOT NULL,
    bradycardia_count  bigint  NOT NULL,
    tachycardia_count  bigint  NOT NULL,
    invalid_count      bigint  NOT NULL,
    first_reading_at   timestamptz,
    last_reading_at    timestamptz,
    last_anomaly_at    timestamptz,
    customer_id        text COLLATE "C" NOT NULL,
    PRIMARY KEY (minute, customer_id)
) PARTITION BY RANGE (minute);

-- Day partitions of every raw table (and of customer_minute_stats, which lives as long)
-- for the UTC days first_day..last_day that are missing;
-- returns how many it created. Named <table>_pYYYYMMDD. Cheap when nothing is missing (no
-- lock is taken then), and safe from several processes at once: a partition another
-- session created meanwhile is taken as created.
CREATE FUNCTION heartbeat_ensure_partitions(first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    parent  text;
    day     date;
    created integer := 0;
BEGIN
    FOREACH parent IN ARRAY ARRAY['heartbeat_records', 'heartbeat_anomalies',
                                  'heartbeat_dead_letters', 'pipeline_metrics',
                                  'customer_minute_stats'] LOOP
        day := first_day;
        WHILE day <= last_day LOOP
            IF to_regclass(format('%I', parent || to_char(day, '"_p"YYYYMMDD'))) IS NULL THEN
                BEGIN
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                        parent || to_char(day, '"_p"YYYYMMDD'), parent,
                        day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
                    created := created + 1;
                EXCEPTION WHEN duplicate_table OR unique_violation THEN
                    NULL;  -- another session created it since the check above
                END;
            ELSIF NOT EXISTS (
                SELECT FROM pg_inherits
                WHERE inhrelid = to_regclass(format('%I', parent || to_char(day, '"_p"YYYYMMDD'))))
            THEN
                -- left detached by a retention run that stopped before its DROP: attach it
                -- again (retention drops it whole if it is still expired)
                EXECUTE format(
                    'ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                    parent, parent || to_char(day, '"_p"YYYYMMDD'),
                    day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
                created := created + 1;
            END IF;
            day := day + 1;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;

-- Partitions for every day that holds existing rows, and for a week back and three days
-- ahead (the defaults; `init-db` and the `raw_partitions` job apply the configured window).
SELECT heartbeat_ensure_partitions(day, day)
FROM (
    SELECT (event_timestamp AT TIME ZONE 'UTC')::date AS day FROM heartbeat_migration_006.heartbeat_records
    UNION SELECT (event_timestamp AT TIME ZONE 'UTC')::date FROM heartbeat_migration_006.heartbeat_anomalies
    UNION SELECT (received_at AT TIME ZONE 'UTC')::date FROM heartbeat_migration_006.heartbeat_dead_letters
    UNION SELECT (recorded_at AT TIME ZONE 'UTC')::date FROM heartbeat_migration_006.pipeline_metrics
) AS days;
SELECT heartbeat_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 7,
                                   (now() AT TIME ZONE 'UTC')::date + 3);

INSERT INTO heartbeat_records (event_timestamp, kafka_offset, ingested_at, heart_rate, log_epoch,
                               kafka_partition, customer_id)
SELECT event_timestamp, kafka_offset, ingested_at, heart_rate, log_epoch, kafka_partition,
       customer_id
FROM heartbeat_migration_006.heartbeat_records;

INSERT INTO heartbeat_anomalies (id, customer_id, event_timestamp, heart_rate, anomaly_type,
                                 raw_payload, log_epoch, kafka_partition, kafka_offset, detected_at)
OVERRIDING SYSTEM VALUE
SELECT id, customer_id, event_timestamp, heart_rate, anomaly_type, raw_payload, log_epoch,
       kafka_partition, kafka_offset, detected_at
FROM heartbeat_migration_006.heartbeat_anomalies;

INSERT INTO heartbeat_dead_letters (id, log_epoch, kafka_partition, kafka_offset, message_key,
                                    raw_value, reason, received_at)
OVERRIDING SYSTEM VALUE
SELECT id, log_epoch, kafka_partition, kafka_offset, message_key, raw_value, reason, received_at
FROM heartbeat_migration_006.heartbeat_dead_letters;

INSERT INTO pipeline_metrics (id, metric_name, metric_value, customer_id, log_epoch,
                              kafka_partition, kafka_offset, labels, recorded_at)
OVERRIDING SYSTEM VALUE
SELECT id, metric_name, metric_value, customer_id, log_epoch, kafka_partition, kafka_offset,
       labels, recorded_at
FROM heartbeat_migration_006.pipeline_metrics;

-- New ids continue after the copied ones.
SELECT setval(pg_get_serial_sequence(t, 'id'), coalesce(max_id, 0) + 1, false)
FROM (VALUES ('heartbeat_anomalies', (SELECT max(id) FROM heartbeat_anomalies)),
             ('heartbeat_dead_letters', (SELECT max(id) FROM heartbeat_dead_letters)),
             ('pipeline_metrics', (SELECT max(id) FROM pipeline_metrics))) AS ids (t, max_id);

-- Windows whose rollups are out of date. The consumer marks the minute of every reading it
-- stores (one row per Kafka partition, so consumers never wait on each other's marks);
-- recomputing a minute marks its hour, recomputing an hour marks its day. A rollup job
-- takes the marks of its range and recomputes those windows from the level below.
CREATE TABLE rollup_pending (
    rollup          text        NOT NULL
        CHECK (rollup IN ('fleet_minute', 'customer_hourly', 'customer_daily')),
    window_start    timestamptz NOT NULL,
    kafka_partition integer     NOT NULL DEFAULT -1,  -- -1: marked by a job or a migration
    marked_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (rollup, window_start, kafka_partition)
);

-- Fleet per minute (the original columns first). Sums make any coarser bucket exact:
-- avg = bpm_sum / reading_count, and the variance follows from bpm_sum_squares.
CREATE TABLE fleet_minute_stats (
    minute             timestamptz PRIMARY KEY,
    reading_count      bigint  NOT NULL,
    customer_count     integer NOT NULL,
    avg_bpm            numeric,
    min_bpm            integer,
    max_bpm            integer,
    anomaly_count      bigint  NOT NULL,
    bradycardia_count  bigint  NOT NULL,
    tachycardia_count  bigint  NOT NULL,
    invalid_count      bigint  NOT NULL,
    stddev_bpm         numeric,
    bpm_sum            bigint  NOT NULL,
    bpm_sum_squares    bigint  NOT NULL,
    computed_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customer_hourly_bpm_stats (
    customer_id        text COLLATE "C" NOT NULL,
    hour               timestamptz NOT NULL,
    reading_count      bigint  NOT NULL,
    avg_bpm            numeric,
    min_bpm            integer,
    max_bpm            integer,
    stddev_bpm         numeric,
    anomaly_count      bigint  NOT NULL,
    bradycardia_count  bigint  NOT NULL,
    tachycardia_count  bigint  NOT NULL,
    invalid_count      bigint  NOT NULL,
    bpm_sum            bigint  NOT NULL,
    bpm_sum_squares    bigint  NOT NULL,
    first_reading_at   timestamptz,
    last_reading_at    timestamptz,
    last_anomaly_at    timestamptz,
    computed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hour, customer_id)
);
CREATE INDEX customer_hourly_bpm_stats_customer_idx
    ON customer_hourly_bpm_stats (customer_id, hour);

-- Per customer and UTC day: the original columns first, then the mergeable ones.
CREATE TABLE customer_daily_bpm_stats (
    customer_id        text COLLATE "C" NOT NULL,
    day                date    NOT NULL,
    reading_count      bigint  NOT NULL,
    avg_bpm            numeric,
    min_bpm            integer,
    max_bpm            integer,
    stddev_bpm         numeric,
    anomaly_count      bigint  NOT NULL,
    bradycardia_count  bigint  NOT NULL,
    tachycardia_count  bigint  NOT NULL,
    invalid_count      bigint  NOT NULL,
    bpm_sum            bigint  NOT NULL,
    bpm_sum_squares    bigint  NOT NULL,
    first_reading_at   timestamptz,
    last_reading_at    timestamptz,
    last_anomaly_at    timestamptz,
    computed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, customer_id)
);
CREATE INDEX customer_daily_bpm_stats_customer_idx ON customer_daily_bpm_stats (customer_id, day);

-- Fleet totals since the platform started: each fleet-minute recompute subtracts what the
-- minute held and adds what it holds now, in its own transaction, so the totals equal the
-- sum of every minute ever rolled up (also after the minutes leave with the rollups'
-- retention) and reading them costs one row, whatever history holds.
CREATE TABLE fleet_totals (
    only_row           boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    reading_count      bigint NOT NULL DEFAULT 0,
    anomaly_count      bigint NOT NULL DEFAULT 0,
    bradycardia_count  bigint NOT NULL DEFAULT 0,
    tachycardia_count  bigint NOT NULL DEFAULT 0,
    invalid_count      bigint NOT NULL DEFAULT 0
);
INSERT INTO fleet_totals DEFAULT VALUES;

-- Every customer ever seen, kept current by the fleet-minute rollup: the dashboard's
-- customer list and the "active customers" count read this small table, not the readings.
CREATE TABLE customers (
    customer_id       text COLLATE "C" PRIMARY KEY,
    first_reading_at  timestamptz,  -- valid readings (NULL: only anomalies so far)
    last_reading_at   timestamptz,
    last_anomaly_at   timestamptz
);
CREATE INDEX customers_last_reading_at_idx ON customers (last_reading_at);

-- Migrated rows: every minute that holds one is pending (its hour and day follow).
INSERT INTO rollup_pending (rollup, window_start)
SELECT DISTINCT 'fleet_minute', date_trunc('minute', event_timestamp)
FROM (SELECT event_timestamp FROM heartbeat_records
      UNION ALL SELECT event_timestamp FROM heartbeat_anomalies) AS readings;

DROP SCHEMA heartbeat_migration_006 CASCADE;
-- Fresh statistics for the planner (and for `status`, which reads its row estimates).
ANALYZE heartbeat_records, heartbeat_anomalies, heartbeat_dead_letters, pipeline_metrics;

-- The views of the original design: same names and columns. Totals come from the rollups
-- plus the raw readings newer than the newest rolled-up window (a tail of a minute or an
-- hour, whatever history holds). Late readings inside rolled-up windows count once their
-- window is recomputed, within a minute or two.

-- Per customer: days from customer_daily_bpm_stats, the last two days from the hourly
-- rollup (so a day whose daily row is being recomputed is never missing), the minutes
-- after the newest rolled-up hour from customer_minute_stats, and the raw readings after
-- the newest rolled-up minute. Filter by customer_id: the filter reaches every part.
CREATE VIEW vw_customer_bpm_summary AS
WITH frontier AS MATERIALIZED (
    SELECT coalesce((SELECT max(hour) + interval '1 hour' FROM customer_hourly_bpm_stats),
                    '-infinity'::timestamptz) AS hour_at,
           coalesce((SELECT date_trunc('day', max(hour) AT TIME ZONE 'UTC')::date - 1
                     FROM customer_hourly_bpm_stats), '-infinity'::date) AS hourly_from_day,
           coalesce((SELECT max(minute) + interval '1 minute' FROM fleet_minute_stats),
                    '-infinity'::timestamptz) AS minute_at
), parts AS (
    SELECT customer_id, reading_count, bpm_sum, bpm_sum_squares, min_bpm, max_bpm,
           first_reading_at, last_reading_at, anomaly_count, bradycardia_count,
           tachycardia_count, invalid_count, last_anomaly_at
    FROM customer_daily_bpm_stats
    WHERE day < (SELECT hourly_from_day FROM frontier)
    UNION ALL
    SELECT customer_id, reading_count, bpm_sum, bpm_sum_squares, min_bpm, max_bpm,
           first_reading_at, last_reading_at, anomaly_count, bradycardia_count,
           tachycardia_count, invalid_count, last_anomaly_at
    FROM customer_hourly_bpm_stats
    WHERE hour >= (SELECT hourly_from_day FROM frontier)::timestamp AT TIME ZONE 'UTC'
    UNION ALL
    SELECT customer_id, reading_count, bpm_sum, bpm_sum_squares, min_bpm, max_bpm,
           first_reading_at, last_reading_at, anomaly_count, bradycardia_count,
           tachycardia_count, invalid_count, last_anomaly_at
    FROM customer_minute_stats
    WHERE minute >= (SELECT hour_at FROM frontier) AND minute < (SELECT minute_at FROM frontier)
    UNION ALL
    SELECT customer_id, count(*), sum(heart_rate), sum(heart_rate::bigint * heart_rate),
           min(heart_rate), max(heart_rate), min(event_timestamp), max(event_timestamp),
           0, 0, 0, 0, NULL
    FROM heartbeat_records
    WHERE event_timestamp >= (SELECT greatest(hour_at, minute_at) FROM frontier)
    GROUP BY customer_id
    UNION ALL
    SELECT customer_id, 0, 0, 0, NULL, NULL, NULL, NULL, count(*),
           count(*) FILTER (WHERE anomaly_type = 'BRADYCARDIA'),
           count(*) FILTER (WHERE anomaly_type = 'TACHYCARDIA'),
           count(*) FILTER (WHERE anomaly_type = 'INVALID'),
           max(event_timestamp)
    FROM (SELECT DISTINCT ON (customer_id, event_timestamp) customer_id, event_timestamp,
                 anomaly_type
          FROM heartbeat_anomalies
          WHERE event_timestamp >= (SELECT greatest(hour_at, minute_at) FROM frontier)) AS a
    GROUP BY customer_id
), totals AS (
    SELECT customer_id,
           sum(reading_count)::bigint AS n, sum(bpm_sum)::numeric AS s,
           sum(bpm_sum_squares)::numeric AS ss,
           min(min_bpm) AS min_bpm, max(max_bpm) AS max_bpm,
           min(first_reading_at) AS first_reading_at, max(last_reading_at) AS last_reading_at,
           sum(anomaly_count)::bigint AS anomaly_count,
           sum(bradycardia_count)::bigint AS bradycardia_count,
           sum(tachycardia_count)::bigint AS tachycardia_count,
           sum(invalid_count)::bigint AS invalid_count,
           max(last_anomaly_at) AS last_anomaly_at
    FROM parts
    GROUP BY customer_id
)
SELECT customer_id,
       n                                              AS reading_count,
       round(s / nullif(n, 0), 1)                     AS avg_bpm,
       min_bpm, max_bpm,
       CASE WHEN n > 1 THEN round(sqrt(greatest((ss - s * s / n) / (n - 1), 0)), 1) END
                                                      AS stddev_bpm,
       first_reading_at, last_reading_at,
       anomaly_count, bradycardia_count, tachycardia_count, invalid_count,
       last_anomaly_at
FROM totals;

-- Anomalies detected in the last 24 hours, newest first (index on detected_at in every
-- partition: a LIMIT reads only the newest rows).
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

-- One row: the health of the whole pipeline. Totals are fleet_totals (every minute ever
-- rolled up) plus the raw readings newer than the newest rolled-up minute; each column is
-- its own subquery, so a panel that reads one column computes only that one.
CREATE VIEW vw_pipeline_summary AS
WITH frontier AS MATERIALIZED (
    SELECT coalesce(max(minute) + interval '1 minute', '-infinity'::timestamptz) AS at
    FROM fleet_minute_stats
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
      + (SELECT count(*) FROM heartbeat_records
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
        SELECT DISTINCT customer_id FROM heartbeat_records
        WHERE event_timestamp >= greatest((SELECT at FROM frontier),
                                          now() - interval '5 minutes')) AS active)
                                                                    AS active_customers_5m,
    (SELECT count(*) FROM (
        SELECT customer_id FROM customers WHERE last_reading_at IS NOT NULL
        UNION
        SELECT DISTINCT customer_id FROM heartbeat_records
        WHERE event_timestamp >= (SELECT at FROM frontier)) AS seen)
                                                                    AS total_customers,
    greatest((SELECT max(last_reading_at) FROM customers),
             (SELECT max(event_timestamp) FROM heartbeat_records
               WHERE event_timestamp >= (SELECT at FROM frontier)))  AS latest_reading_at,
    (SELECT anomaly_count FROM totals)
      + (SELECT anomalies FROM tail_anomalies)                      AS alerts_total;
