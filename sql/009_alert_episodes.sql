-- Alerting a person can live with (README, "Alerts: episodes and notifications").
--
-- An episode is one stretch of trouble of one customer and one kind. The consumer changes
-- episodes in the transaction of the batch that caused the change, and writes each
-- transition (firing, resolved; escalated later) to alert_outbox in that same transaction:
-- a crash, a replay or a rebalance never opens, resolves or notifies an episode twice, and
-- never loses one. A delivery thread sends outbox rows to the webhooks, at least once.

CREATE TABLE alert_episodes (
    episode_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id       text        NOT NULL,
    kind              text        NOT NULL
        CHECK (kind IN ('TACHYCARDIA', 'BRADYCARDIA', 'SENSOR_FAULT', 'NO_SIGNAL')),
    -- pending: fewer readings in a row than the kind's min_readings (never notified)
    state             text        NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    severity          text        NOT NULL,
    opened_at         timestamptz,              -- when it started firing
    resolved_at       timestamptz,
    first_heart_rate  integer     NOT NULL,
    worst_heart_rate  integer     NOT NULL,
    readings          integer     NOT NULL,
    first_reading_at  timestamptz NOT NULL,
    last_reading_at   timestamptz NOT NULL,
    normal_streak     integer     NOT NULL DEFAULT 0,
    last_evaluated_at timestamptz NOT NULL,     -- newest reading applied: older ones are repeats
    acknowledged_at   timestamptz,
    acknowledged_by   text,
    acknowledge_note  text,
    resolved_by       text,                     -- a person (alerts resolve); NULL: the readings
    escalated_at      timestamptz,
    CHECK ((state = 'resolved') = (resolved_at IS NOT NULL)),
    CHECK (state = 'pending' OR opened_at IS NOT NULL)
);

-- At most one open episode per customer and kind; also how a batch finds its customers' ones.
CREATE UNIQUE INDEX alert_episodes_one_open
    ON alert_episodes (customer_id, kind) WHERE state <> 'resolved';
-- Escalation and the "open episodes" panel read only firing episodes.
CREATE INDEX alert_episodes_firing ON alert_episodes (opened_at) WHERE state = 'firing';
-- Retention and statistics by time.
CREATE INDEX alert_episodes_resolved_at ON alert_episodes (resolved_at) WHERE state = 'resolved';

-- One row per transition to notify, written with the change that caused it. `payload` is the
-- JSON object a webhook receives; `delivered_to` the URLs that acknowledged it.
CREATE TABLE alert_outbox (
    outbox_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    episode_id      bigint      NOT NULL REFERENCES alert_episodes (episode_id) ON DELETE CASCADE,
    customer_id     text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('firing', 'resolved', 'escalated')),
    payload         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_to    text[]      NOT NULL DEFAULT '{}',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_error      text,
    done_at         timestamptz,               -- every configured receiver has it
    gave_up_at      timestamptz,               -- HEARTBEAT_ALERT_GIVE_UP_S passed undelivered
    UNIQUE (episode_id, state)                 -- one notification per transition, ever
);
CREATE INDEX alert_outbox_pending ON alert_outbox (outbox_id)
    WHERE done_at IS NULL AND gave_up_at IS NULL;
-- Lookups by episode (retention's cascade, the checks) use the UNIQUE (episode_id, state) index.

-- Per-customer alert bounds (an athlete resting at 38 bpm). Every change is a new row; the
-- newest row of a (customer, kind) is in force, a row with threshold NULL removes the
-- override. Storage classification (heartbeat_anomalies) never uses these.
CREATE TABLE alert_overrides (
    override_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('TACHYCARDIA', 'BRADYCARDIA')),
    threshold   integer     CHECK (threshold IS NULL OR threshold BETWEEN 1 AND 300),
    set_by      text        NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    note        text
);
CREATE INDEX alert_overrides_newest ON alert_overrides (customer_id, kind, override_id DESC);

CREATE VIEW vw_alert_overrides_in_force AS
SELECT customer_id, kind, threshold, set_by, set_at, note
FROM (SELECT DISTINCT ON (customer_id, kind) *
      FROM alert_overrides
      ORDER BY customer_id, kind, override_id DESC) newest
WHERE threshold IS NOT NULL;
