-- Receivers as data (README, "Alerts: episodes and notifications": Receivers): added,
-- listed, removed and tested with `heartbeat-platform alerts receivers`, in force within
-- seconds for a running deliverer, beside the ones the settings name.
--
-- A receiver's URL often carries a token, and heartbeat_grafana_reader (003) is granted
-- every table by default: it may not read this one. The secret itself is never stored:
-- `secret_env` names the environment variable the deliverer reads it from.
CREATE TABLE alert_receivers (
    name        text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    type        text        NOT NULL CHECK (type IN ('webhook', 'alertmanager', 'pagerduty')),
    url         text        NOT NULL,
    secret_env  text        CHECK (secret_env ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
    allow_http  boolean     NOT NULL DEFAULT false,
    added_by    text        NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'heartbeat_grafana_reader') THEN
        REVOKE ALL ON alert_receivers FROM heartbeat_grafana_reader;
    END IF;
END $$;
