-- Receivers by name, and the acknowledged transition (README, "Alerts: episodes and
-- notifications": Receivers).
--
-- alert_outbox.delivered_to held the webhook URLs that took a notification, and
-- last_error began with the URL that failed. Webhook URLs often carry a token in their
-- path or query, and heartbeat_grafana_reader (003) reads every table. From here on both
-- hold a receiver's name, never its URL; rows written before are rewritten with the names
-- the code gives the same URLs (`receivers.default_name`: 'webhook-' and the first 12 hex
-- digits of sha256('webhook ' || url); test_receiver_names holds the two to each other),
-- so a row half delivered before the upgrade is not sent twice to the same receiver.
--
-- `acknowledged`: `alerts ack` now queues a notification too (PagerDuty's acknowledge).

CREATE FUNCTION pg_temp.heartbeat_receiver_name(url text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'webhook-' || left(encode(sha256(convert_to('webhook ' || url, 'UTF8')), 'hex'), 12)
$$;

UPDATE alert_outbox SET delivered_to = ARRAY(
    SELECT CASE WHEN u ~ '^[A-Za-z][A-Za-z0-9+.-]*://' THEN pg_temp.heartbeat_receiver_name(u)
                ELSE u END
    FROM unnest(delivered_to) WITH ORDINALITY AS d(u, n) ORDER BY n)
WHERE delivered_to::text ~ '://';

UPDATE alert_outbox
SET last_error = pg_temp.heartbeat_receiver_name(substring(last_error FROM '^(\S+?): '))
    || substr(last_error, length(substring(last_error FROM '^(\S+?): ')) + 1)
WHERE last_error ~ '^[A-Za-z][A-Za-z0-9+.-]*://\S*?: ';

-- Whatever else still looks like a URL in an error: only its scheme and host stay.
UPDATE alert_outbox
SET last_error = regexp_replace(
    last_error, '([A-Za-z][A-Za-z0-9+.-]*://)(?:[^@/\s]*@)?([^/?#\s)]+)[^\s)]*', '\1\2/…', 'g')
WHERE last_error ~ '://';

ALTER TABLE alert_outbox DROP CONSTRAINT alert_outbox_state_check;
ALTER TABLE alert_outbox ADD CONSTRAINT alert_outbox_state_check
    CHECK (state IN ('firing', 'acknowledged', 'escalated', 'resolved'));

COMMENT ON COLUMN alert_outbox.delivered_to IS
    'names of the receivers that took this notification (never their URLs)';
COMMENT ON COLUMN alert_outbox.last_error IS
    'the last failure: a receiver''s name and what went wrong (never its URL)';
