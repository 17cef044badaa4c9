-- Core tables of the original design, each row traceable to its Kafka message.
-- Keys make replays harmless: records are unique per reading (customer, timestamp) as in
-- the original design; anomalies and dead letters are unique per Kafka message.
--
-- A Kafka message is identified by (log_epoch, kafka_partition, kafka_offset). log_epoch
-- is 0 until the consumer finds that the broker's log was reset (offsets start again
-- below what it had stored, e.g. the memory-only embedded broker restarted); it then
-- counts up, so new messages at reused offsets are not mistaken for replays.

-- customer_id uses the "C" collation: ids are ASCII, and byte-wise comparison keeps the
-- primary-key index cheap to maintain at high ingest rates whatever the server's locale.
CREATE TABLE heartbeat_records (
    customer_id      text COLLATE "C" NOT NULL,
    event_timestamp  timestamptz NOT NULL,
    heart_rate       integer     NOT NULL CHECK (heart_rate BETWEEN 40 AND 180),
    log_epoch        integer     NOT NULL DEFAULT 0,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    -- when the row was written (not the transaction's start): end-to-end latency
    ingested_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (customer_id, event_timestamp)
);
-- BRIN, not B-tree: readings arrive roughly in time order, so block ranges summarise time
-- well for dashboards' time filters, and the index costs next to nothing per insert (the
-- B-tree cost about a fifth of ingest throughput).
CREATE INDEX heartbeat_records_event_timestamp_idx
    ON heartbeat_records USING brin (event_timestamp);

CREATE TABLE heartbeat_anomalies (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    UNIQUE (log_epoch, kafka_partition, kafka_offset)
);
CREATE INDEX heartbeat_anomalies_event_timestamp_idx ON heartbeat_anomalies (event_timestamp);
CREATE INDEX heartbeat_anomalies_customer_idx ON heartbeat_anomalies (customer_id);

-- Messages that are not readings at all (not JSON, missing fields, wrong types...), kept
-- byte for byte with a reason a person can act on.
CREATE TABLE heartbeat_dead_letters (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    log_epoch        integer     NOT NULL DEFAULT 0,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    message_key      bytea,
    raw_value        bytea,
    reason           text        NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (log_epoch, kafka_partition, kafka_offset)
);

-- Alerts (one row per anomaly, same transaction as the anomaly row) and cumulative stats
-- snapshots. Alert rows carry the Kafka position of the message that raised them.
CREATE TABLE pipeline_metrics (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    metric_name      text             NOT NULL,
    metric_value     double precision NOT NULL,
    customer_id      text,
    log_epoch        integer,
    kafka_partition  integer,
    kafka_offset     bigint,
    labels           jsonb            NOT NULL DEFAULT '{}'::jsonb,
    recorded_at      timestamptz      NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX pipeline_metrics_message_uq
    ON pipeline_metrics (metric_name, log_epoch, kafka_partition, kafka_offset)
    WHERE kafka_offset IS NOT NULL;
CREATE INDEX pipeline_metrics_name_time_idx ON pipeline_metrics (metric_name, recorded_at);

-- The consumer's progress: the next offset to read per (group, topic, partition), written
-- in the same transaction as the rows it covers. This, not Kafka's committed offset, is
-- where a restarted consumer resumes.
CREATE TABLE consumer_progress (
    consumer_group   text        NOT NULL,
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    log_epoch        integer     NOT NULL DEFAULT 0,
    next_offset      bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);
