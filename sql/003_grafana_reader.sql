-- heartbeat_grafana_reader: the role Grafana connects as. It can read every table and view
-- of this schema, including ones added by later migrations, and can change nothing.
--
-- The role is created NOLOGIN and without a password, so no secret lives in the repository.
-- Whoever deploys Grafana turns it into a login with a password of their own, e.g.
--   ALTER ROLE heartbeat_grafana_reader WITH LOGIN PASSWORD '...';
-- (docker-compose.yml's one-shot `db-setup` service does exactly that from
-- GRAFANA_DB_PASSWORD on every `docker compose up`).
--
-- Roles belong to the whole PostgreSQL cluster, not to one database: the role is created
-- only if it is missing (creating it needs CREATEROLE; a DBA may create it beforehand, then
-- this migration only grants), and the grants below are made in this database.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'heartbeat_grafana_reader') THEN
        BEGIN
            CREATE ROLE heartbeat_grafana_reader NOLOGIN;
            -- Defence in depth for a dashboard account: read-only sessions, bounded queries.
            ALTER ROLE heartbeat_grafana_reader SET default_transaction_read_only = on;
            ALTER ROLE heartbeat_grafana_reader SET statement_timeout = '30s';
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- the migration of another database of this cluster created it just now
        END;
    END IF;
    -- The schema the migrations create their tables in (the first one on the search path).
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO heartbeat_grafana_reader', current_schema());
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO heartbeat_grafana_reader',
                   current_schema());
    -- Tables and views that later migrations create (as the same owner) are readable too.
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES '
                   'TO heartbeat_grafana_reader', current_schema());
END
$$;
