-- One identity for a reading, one for a message, on any Kafka cluster (issue 11).
--
-- A reading is identified by (customer_id, event_timestamp) in every table it can land in:
-- heartbeat_records (its primary key since 001) and now heartbeat_anomalies too, so the
-- same reading sent twice (a producer retry without idempotence, a re-sent backlog, a
-- second topic carrying it) is stored once and raises one alert row; the alert rows follow
-- the anomaly rows actually inserted (see the writer).
--
-- A message that is not a reading (a dead letter) is identified by its place in a log:
-- (log_epoch, kafka_partition, kafka_offset), where log_epoch names one log of one topic
-- partition in kafka_logs below. Epochs are drawn from one sequence and never reused, so
-- a second topic, a re-created topic (new topic id), a truncated log or a new consumer
-- group can never take another log's messages for replays.

CREATE SEQUENCE kafka_log_epochs AS integer;

-- Every log the consumers have read: a topic partition as long as its offsets mean the
-- same messages. A new row starts when the topic is created again (another topic_id) or
-- its log is truncated (unclean leader election: messages from start_offset on are new).
-- The epoch of a message at offset o under topic id t is that of the newest row for
-- (topic, partition, t) whose start_offset <= o.
CREATE TABLE kafka_logs (
    log_epoch        integer     NOT NULL DEFAULT nextval('kafka_log_epochs'),
    topic            text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    topic_id         text,       -- the broker's id of the topic; NULL when it gives none
    start_offset     bigint      NOT NULL CHECK (start_offset >= 0),
    reason           text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, log_epoch)
);
ALTER SEQUENCE kafka_log_epochs OWNED BY kafka_logs.log_epoch;

-- The logs read before this migration: epochs counted per partition from 0, so they are
-- unique per (topic, partition) only; new epochs start above all of them.
INSERT INTO kafka_logs (log_epoch, topic, kafka_partition, topic_id, start_offset, reason)
SELECT DISTINCT ON (topic, kafka_partition, log_epoch)
       log_epoch, topic, kafka_partition, topic_id, 0, 'read before message identities (007)'
FROM consumer_progress
ORDER BY topic, kafka_partition, log_epoch, updated_at DESC;
SELECT setval('kafka_log_epochs', greatest(
    (SELECT max(log_epoch) FROM consumer_progress),
    (SELECT max(log_epoch) FROM heartbeat_dead_letters),
    (SELECT max(log_epoch) FROM heartbeat_anomalies),
    0) + 1, false);

-- Anomalies: one row per reading. Repeats stored before (the same reading at two offsets)
-- leave, with the alert rows they raised; the first stored stays.
CREATE TEMP TABLE repeated_anomalies ON COMMIT DROP AS
SELECT a.log_epoch, a.kafka_partition, a.kafka_offset, a.event_timestamp
FROM heartbeat_anomalies a
JOIN heartbeat_anomalies b
  ON a.customer_id = b.customer_id AND a.event_timestamp = b.event_timestamp AND a.id > b.id;
DELETE FROM pipeline_metrics m USING repeated_anomalies r
WHERE m.metric_name LIKE 'alert\_%' AND m.log_epoch = r.log_epoch
  AND m.kafka_partition = r.kafka_partition AND m.kafka_offset = r.kafka_offset;
DELETE FROM heartbeat_anomalies a USING repeated_anomalies r
WHERE a.log_epoch = r.log_epoch AND a.kafka_partition = r.kafka_partition
  AND a.kafka_offset = r.kafka_offset AND a.event_timestamp = r.event_timestamp;

ALTER TABLE heartbeat_anomalies DROP CONSTRAINT heartbeat_anomalies_pkey;
ALTER TABLE heartbeat_anomalies ADD PRIMARY KEY (customer_id, event_timestamp);
DROP INDEX heartbeat_anomalies_customer_time_idx;  -- the primary key serves its queries
