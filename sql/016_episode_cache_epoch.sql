-- The consumer keeps the open episodes and alert bounds of its customers in memory, so a
-- reading that changes no episode costs no SQL (README, "Alerts: episodes and
-- notifications": What alerting costs ingest). Customers are keyed to partitions, so no
-- other consumer changes them while it holds them, and it forgets them at every assignment.
-- Anything else that changes episodes or overrides (a person's ack or resolve, the
-- NO_SIGNAL job, a new override, a hand-written UPDATE) moves this epoch first, before its
-- statement touches a row; each batch reads the epoch FOR SHARE and reloads when it moved.
-- So a change waits for the batch in progress to commit, or the batch sees it: never a
-- batch that decides on what was true before it.
--
-- A writer whose changes the consumer does not keep (escalation's escalated_at, retention
-- of resolved episodes, the consumer's own writes) says so with
-- set_config('heartbeat.episode_cache_kept', 'on', ...), and moves nothing.
CREATE TABLE alert_episode_epoch (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    epoch    bigint  NOT NULL DEFAULT 0
);
INSERT INTO alert_episode_epoch DEFAULT VALUES;

CREATE FUNCTION alert_episode_epoch_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('heartbeat.episode_cache_kept', true), '') <> 'on' THEN
        UPDATE alert_episode_epoch SET epoch = epoch + 1;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER alert_episodes_move_epoch
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON alert_episodes
    FOR EACH STATEMENT EXECUTE FUNCTION alert_episode_epoch_move();
CREATE TRIGGER alert_overrides_move_epoch
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON alert_overrides
    FOR EACH STATEMENT EXECUTE FUNCTION alert_episode_epoch_move();
