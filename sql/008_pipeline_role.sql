-- heartbeat_pipeline: the rights the running pipeline uses, and no right to change the schema.
--
-- Two kinds of database role work on this schema (README, "Security: roles and rights"):
-- - the setup role runs `heartbeat-platform init-db` / `up`: it owns the tables, may create
--   them (CREATE on the schema) and runs these migrations;
-- - the pipeline role runs `consume`, `produce`, `maintain` and Dagster's runs: it reads and
--   writes rows, and nothing else. It is any login role that is a member of
--   heartbeat_pipeline, e.g. (as a DBA):
--     CREATE ROLE heartbeat_app LOGIN PASSWORD '...' IN ROLE heartbeat_pipeline;
--
-- The pipeline does need a little DDL: the consumer and the hourly `raw_partitions` job
-- create the day partitions ahead (heartbeat_ensure_partitions), and retention detaches and
-- drops expired days. Those run as SECURITY DEFINER functions owned by the setup role, which
-- do exactly that and nothing more; the pipeline role may execute them, not ALTER or CREATE.
--
-- Like heartbeat_grafana_reader (003), the role is created NOLOGIN only if it is missing
-- (creating it needs CREATEROLE; a DBA may create it beforehand, then this only grants).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'heartbeat_pipeline') THEN
        BEGIN
            CREATE ROLE heartbeat_pipeline NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- the migration of another database of this cluster created it just now
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO heartbeat_pipeline', current_schema());
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I '
                   'TO heartbeat_pipeline', current_schema());
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO heartbeat_pipeline',
                   current_schema());
    -- Tables, day partitions and sequences created later by the setup role (migrations, and
    -- the SECURITY DEFINER functions below, which run as it) get the same rights.
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE '
                   'ON TABLES TO heartbeat_pipeline', current_schema());
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES '
                   'TO heartbeat_pipeline', current_schema());
END
$$;

-- Detach one day partition of a day-partitioned table (retention's first step; the caller
-- sets lock_timeout). Only our five tables, only their day partitions.
CREATE FUNCTION heartbeat_detach_partition(parent text, day date)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF parent <> ALL (ARRAY['heartbeat_records', 'heartbeat_anomalies', 'heartbeat_dead_letters',
                            'pipeline_metrics', 'customer_minute_stats']) THEN
        RAISE EXCEPTION 'heartbeat_detach_partition: % is not a day-partitioned table', parent;
    END IF;
    EXECUTE format('ALTER TABLE %I DETACH PARTITION %I',
                   parent, parent || to_char(day, '"_p"YYYYMMDD'));
END
$$;

-- Drop a day table that is no partition any more (retention's second step, in its own
-- transaction so the parent is not locked while the files go). Refuses anything else.
CREATE FUNCTION heartbeat_drop_detached_partition(name text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF name !~ '^(heartbeat_records|heartbeat_anomalies|heartbeat_dead_letters|pipeline_metrics|customer_minute_stats)_p[0-9]{8}$' THEN
        RAISE EXCEPTION 'heartbeat_drop_detached_partition: % is not a day table', name;
    END IF;
    IF EXISTS (SELECT FROM pg_class WHERE oid = to_regclass(format('%I', name))
                                      AND relispartition) THEN
        RAISE EXCEPTION 'heartbeat_drop_detached_partition: % is still attached', name;
    END IF;
    EXECUTE format('DROP TABLE %I', name);
END
$$;

-- The three run as their owner (the setup role), with a fixed search_path so a caller's
-- objects cannot stand in for ours; only the setup role and heartbeat_pipeline may call
-- them. A later migration that replaces one of them must keep SECURITY DEFINER (CREATE OR
-- REPLACE resets it) and these grants.
DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['heartbeat_ensure_partitions(date, date)',
                              'heartbeat_detach_partition(text, date)',
                              'heartbeat_drop_detached_partition(text)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       fn, current_schema());
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO heartbeat_pipeline', fn);
    END LOOP;
END
$$;
