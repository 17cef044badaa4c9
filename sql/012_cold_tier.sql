-- The cold tier (README, "Cold tier"): every reading older than the hot days, packed per
-- customer and UTC hour into one row of arrays that TOAST compresses, in day partitions
-- dropped whole when their day leaves the cold retention.
--
-- The pack's format is heartbeat_platform/domain/cold_pack.py (its reference, in Python);
-- heartbeat_cold_unpack below is the same in SQL, and tests/integration/test_cold_tier.py
-- holds the two to each other. Compaction (heartbeat_platform/storage/cold.py) moves a hot
-- day here in one transaction that verifies the copy before it empties the hot day.

-- The class of a rate, as domain.events.classify_heart_rate (the limits 40/180/300:
-- tests/integration/test_shared_facts.py compares the two for every rate near them).
CREATE FUNCTION heartbeat_class(bpm integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN bpm BETWEEN 40 AND 180 THEN 'NORMAL'
                WHEN bpm <= 0 OR bpm > 300 THEN 'INVALID'
                WHEN bpm < 40 THEN 'BRADYCARDIA'
                ELSE 'TACHYCARDIA' END
$$;

-- One row per customer and UTC hour that holds a reading. `seconds`: whole seconds since
-- the previous reading (the first: since `hour`); `micros`: each reading's microsecond in
-- its second divided by `micro_step` (their gcd, 0 when all are 0), every entry as wide as
-- the largest needs (0-3 bytes, big-endian: length(micros) / readings); `bpm`: a byte per reading, the rate when it is 1..255,
-- else 0 and the rate is the next of `bpm_wide`; `payloads`: an anomaly's raw JSON unless
-- it is heartbeat_canonical_payload of the reading, NULL for a NORMAL reading. Readings
-- sorted by time, rate, payload.
CREATE TABLE heartbeat_cold (
    hour         timestamptz NOT NULL,
    readings     integer     NOT NULL CHECK (readings > 0),
    customer_id  text COLLATE "C" NOT NULL,
    seconds      smallint[]  NOT NULL,
    micro_step   integer     NOT NULL CHECK (micro_step BETWEEN 0 AND 999999),
    micros       bytea       NOT NULL,
    bpm          bytea       NOT NULL,
    bpm_wide     integer[],
    payloads     text[]      NOT NULL,
    CHECK (cardinality(seconds) = readings AND length(micros) % readings = 0
           AND length(micros) <= 3 * readings
           AND length(bpm) = readings AND cardinality(payloads) = readings),
    PRIMARY KEY (customer_id, hour)
) PARTITION BY RANGE (hour);

-- The raw JSON the producer (domain.events.encode_event) sends for a reading, where SQL
-- writes it exactly as Python does (a plain customer id, a four-digit year; else NULL):
-- such a payload is not stored cold but rebuilt (domain/cold_pack.py, canonical_payload).
CREATE FUNCTION heartbeat_canonical_payload(customer text, at timestamptz, bpm integer)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN customer ~ '^[A-Za-z0-9_]*$'
                 AND extract(year FROM at AT TIME ZONE 'UTC') BETWEEN 1000 AND 9999
           THEN format('{"customer_id":"%s","heart_rate":%s,"timestamp":"%s"}', customer, bpm,
                       to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')) END
$$;

-- Days compacted into the cold tier, and what their copy was verified to hold (a day
-- compacted again, for late readings, updates its row).
CREATE TABLE heartbeat_cold_days (
    day            date        PRIMARY KEY,
    readings       bigint      NOT NULL,
    compacted_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    compactions    integer     NOT NULL DEFAULT 1
);

-- The greatest common divisor of a pack's microseconds (0 for none but zeros).
CREATE AGGREGATE heartbeat_gcd(integer) (SFUNC = gcd, STYPE = integer, INITCOND = '0');

-- The readings of one pack, in its order: (event time, rate, raw payload). The bytea
-- columns are copied once per pack (OFFSET 0 keeps the copy): get_byte on the stored,
-- compressed value would decompress it again for every reading.
CREATE FUNCTION heartbeat_cold_unpack(customer text, hour timestamptz, seconds smallint[],
                                      micro_step integer, micros bytea, bpm bytea,
                                      bpm_wide integer[], payloads text[])
RETURNS TABLE (event_timestamp timestamptz, heart_rate integer, raw_payload text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT r.t, r.b,
           CASE WHEN r.p IS NULL AND heartbeat_class(r.b) <> 'NORMAL'
                THEN heartbeat_canonical_payload(customer, r.t, r.b) ELSE r.p END
    FROM (
        SELECT u.i,
               hour + sum(u.s::bigint) OVER w * interval '1 second'
                    + micro_step * CASE d.w
                          WHEN 0 THEN 0
                          WHEN 1 THEN get_byte(d.m, u.i::integer - 1)
                          WHEN 2 THEN (get_byte(d.m, 2 * u.i::integer - 2) << 8)
                                      | get_byte(d.m, 2 * u.i::integer - 1)
                          ELSE (get_byte(d.m, 3 * u.i::integer - 3) << 16)
                               | (get_byte(d.m, 3 * u.i::integer - 2) << 8)
                               | get_byte(d.m, 3 * u.i::integer - 1)
                      END * interval '1 microsecond'
                   AS t,
               CASE WHEN get_byte(d.b, u.i::integer - 1) = 0
                    THEN d.wide[sum((get_byte(d.b, u.i::integer - 1) = 0)::integer) OVER w]
                    ELSE get_byte(d.b, u.i::integer - 1) END AS b,
               u.p
        FROM (SELECT micros || ''::bytea AS m, bpm || ''::bytea AS b, bpm_wide AS wide,
                     length(micros) / cardinality(seconds) AS w
              OFFSET 0) AS d,
             unnest(seconds, payloads) WITH ORDINALITY AS u (s, p, i)
        WINDOW w AS (ORDER BY u.i)
    ) AS r
    ORDER BY r.i
$$;

-- Every cold reading of the given UTC hours, of every customer: what a rollup recomputing
-- windows of a compacted day reads beside the (emptied) hot day.
CREATE FUNCTION heartbeat_cold_rows(hours timestamptz[])
RETURNS TABLE (customer_id text, event_timestamp timestamptz, heart_rate integer,
               raw_payload text)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT c.customer_id, u.event_timestamp, u.heart_rate, u.raw_payload
    FROM heartbeat_cold c,
         heartbeat_cold_unpack(c.customer_id, c.hour, c.seconds, c.micro_step, c.micros, c.bpm,
                               c.bpm_wide, c.payloads) u
    WHERE c.hour >= (SELECT min(h) FROM unnest(hours) h)
      AND c.hour <= (SELECT max(h) FROM unnest(hours) h)
      AND c.hour = ANY(hours)
$$;

-- One customer's readings of [from_at, to_at) from both tiers, in time order, with their
-- class: the `readings` command and the Grafana drill-down read this. A reading is in one
-- tier only (compaction empties a hot day in the transaction that fills its cold copy).
CREATE FUNCTION heartbeat_readings(customer text, from_at timestamptz, to_at timestamptz)
RETURNS TABLE (event_timestamp timestamptz, heart_rate integer, reading_class text,
               raw_payload text, tier text)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT t, b, heartbeat_class(b), p, tier
    FROM (
        SELECT event_timestamp, heart_rate, NULL::text, 'hot' FROM heartbeat_records
        WHERE customer_id = customer AND event_timestamp >= from_at AND event_timestamp < to_at
        UNION ALL
        SELECT event_timestamp, heart_rate, raw_payload, 'hot' FROM heartbeat_anomalies
        WHERE customer_id = customer AND event_timestamp >= from_at AND event_timestamp < to_at
        UNION ALL
        SELECT u.event_timestamp, u.heart_rate, u.raw_payload, 'cold'
        FROM heartbeat_cold c,
             heartbeat_cold_unpack(c.customer_id, c.hour, c.seconds, c.micro_step,
                                   c.micros, c.bpm, c.bpm_wide, c.payloads) u
        WHERE c.customer_id = customer
          AND c.hour >= date_trunc('hour', from_at, 'UTC') AND c.hour < to_at
          AND u.event_timestamp >= from_at AND u.event_timestamp < to_at
    ) AS r (t, b, p, tier)
    ORDER BY t, b, p COLLATE "C" NULLS FIRST
$$;

-- The cold partition of one UTC day, created when missing (compaction calls it before it
-- copies a day). Rows of a few readings stay small, so TOAST is asked to compress any row
-- over 128 bytes (the default waits for about 2 kB). Returns whether it created one.
CREATE FUNCTION heartbeat_ensure_cold_partition(day date)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass(format('%I', 'heartbeat_cold' || to_char(day, '"_p"YYYYMMDD'))) IS NOT NULL
    THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF heartbeat_cold FOR VALUES FROM (%L) TO (%L) '
            'WITH (toast_tuple_target = 128)',
            'heartbeat_cold' || to_char(day, '"_p"YYYYMMDD'),
            day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    EXCEPTION WHEN duplicate_table OR unique_violation THEN
        RETURN false;  -- another session created it since the check above
    END;
    RETURN true;
END
$$;

-- Empty the hot partitions of one compacted day (TRUNCATE, which the pipeline role may not
-- run itself); the caller holds the day locked and has verified its cold copy in the same
-- transaction.
CREATE FUNCTION heartbeat_truncate_hot_day(day date)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('TRUNCATE %I, %I',
                   'heartbeat_records' || to_char(day, '"_p"YYYYMMDD'),
                   'heartbeat_anomalies' || to_char(day, '"_p"YYYYMMDD'));
END
$$;

-- Drop the cold partition of one day whole (cold retention), with its verification row.
CREATE FUNCTION heartbeat_drop_cold_day(day date)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TABLE IF EXISTS %I',
                   'heartbeat_cold' || to_char(day, '"_p"YYYYMMDD'));
    DELETE FROM heartbeat_cold_days d WHERE d.day = heartbeat_drop_cold_day.day;
END
$$;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['heartbeat_ensure_cold_partition(date)',
                              'heartbeat_truncate_hot_day(date)',
                              'heartbeat_drop_cold_day(date)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       fn, current_schema());
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO heartbeat_pipeline', fn);
    END LOOP;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'heartbeat_pipeline') THEN
        EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON heartbeat_cold, heartbeat_cold_days '
                'TO heartbeat_pipeline';
    END IF;
END
$$;
GRANT EXECUTE ON FUNCTION heartbeat_cold_rows(timestamptz[]) TO heartbeat_pipeline;
GRANT EXECUTE ON FUNCTION heartbeat_readings(text, timestamptz, timestamptz),
                          heartbeat_class(integer),
                          heartbeat_canonical_payload(text, timestamptz, integer),
                          heartbeat_cold_unpack(text, timestamptz, smallint[], integer,
                                                bytea, bytea, integer[], text[])
    TO heartbeat_grafana_reader;
GRANT SELECT ON heartbeat_cold TO heartbeat_grafana_reader;
