-- A tail that stays small when readings stop or the rollups fall behind (README, "The
-- dashboard when the rollups lag").
--
-- The dashboard's fleet panels add to the rollups the minutes after the newest rolled-up
-- minute (the tail). With the rollups stopped (no Dagster daemon, `consume` without
-- `maintain`) that tail grew without bound, and the fleet panels read it from the raw
-- tables a minute at a time up to the end of their range, so an idle platform got slower
-- the longer it was idle. From here on the tail is at most the minute of `at` (or now) and
-- the one before it: what the scheduled rollups (a sensor every 30 s, a minute settles 5 s
-- after it closes) leave unrolled in normal operation. Older minutes that still hold
-- readings not rolled up are not read; they are counted instead, from their pending marks
-- (rollup_pending), so a panel says "minutes not rolled up yet" rather than scan. The
-- tail's minutes themselves are read from counters the writer keeps (sql/011), not from
-- the raw rows.

-- The newest minute a tail read at `at` holds: the minute of `at`, or of now for a
-- range that ends in the future.
CREATE FUNCTION heartbeat_raw_tail_end(at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT date_trunc('minute', least(at, now()))
$$;

-- Where the tail read at `at` starts: the first minute after the newest rolled-up one,
-- but never before the minute before heartbeat_raw_tail_end(at). The one place that bound
-- is written.
CREATE FUNCTION heartbeat_raw_tail_start(at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT greatest((SELECT max(minute) + interval '1 minute' FROM fleet_minute_stats),
                    heartbeat_raw_tail_end(at) - interval '1 minute')
$$;

-- The minutes in [from_at, the raw tail at to_at) whose readings are not (all) rolled up
-- yet: marked pending by the consumer and not read by the tail either. One index range
-- of rollup_pending (a row per minute and Kafka partition behind).
CREATE FUNCTION heartbeat_minutes_not_rolled_up(from_at timestamptz, to_at timestamptz)
RETURNS SETOF timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT DISTINCT window_start
    FROM rollup_pending
    WHERE rollup = 'fleet_minute' AND window_start >= from_at
      AND window_start < least(to_at, heartbeat_raw_tail_start(to_at))
    ORDER BY 1
$$;

-- The tail's minutes of the range [from_at, to_at]: those whose start lies in the range,
-- from heartbeat_raw_tail_start(to_at) to heartbeat_raw_tail_end(to_at), so at most two,
-- as [start, last_minute + 1 minute).
CREATE FUNCTION heartbeat_tail_minutes(from_at timestamptz, to_at timestamptz,
                                       OUT start timestamptz, OUT last_minute timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT greatest(heartbeat_raw_tail_start(to_at),
                    date_trunc('minute', from_at + interval '59.999999 s')),
           heartbeat_raw_tail_end(to_at)
$$;

-- Grafana's role and the pipeline's (sql/003, sql/008) call these functions; say so rather
-- than rely on PostgreSQL's default EXECUTE for PUBLIC.
DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['heartbeat_raw_tail_end(timestamptz)',
                              'heartbeat_raw_tail_start(timestamptz)',
                              'heartbeat_minutes_not_rolled_up(timestamptz, timestamptz)',
                              'heartbeat_tail_minutes(timestamptz, timestamptz)'] LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO heartbeat_grafana_reader, '
                       'heartbeat_pipeline', fn);
    END LOOP;
END
$$;
