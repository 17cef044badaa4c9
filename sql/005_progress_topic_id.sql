-- The Kafka topic id (a UUID the broker gives each topic when it is created) that the
-- stored progress belongs to. A topic deleted and created again, or a memory-only broker
-- restarted, gets a new id: its offsets start again from 0 and mean other messages, so
-- the consumer starts a new log epoch instead of trusting the stored offset. NULL when
-- the broker did not say (or before this column existed): the consumer then relies on the
-- log-end check alone.
ALTER TABLE consumer_progress ADD COLUMN topic_id text;
