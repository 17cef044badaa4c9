"""Apply the numbered files in `sql/` once each, in order, recorded in `schema_migrations`.

Two processes may start at once (the CLI, Dagster, several consumers): a PostgreSQL
advisory lock serialises them, so the second one finds the work done and applies nothing.

Only `init-db` and `up` migrate (with a role that may create tables). The pipeline's
commands and Dagster's runs call `check_schema()`, which reads `schema_migrations` and
changes nothing, so they can run as a role that has no right to change the schema.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from heartbeat_platform.storage.database import connect, describe, one_row

log = logging.getLogger(__name__)

_LOCK_KEY = 0x4842_5350  # "HBSP": any fixed 64-bit number unique to this schema
_FILE_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """The database holds a schema that the files on disk do not describe."""


class SchemaNotReady(MigrationError):
    """The schema is missing or older than this code; `heartbeat-platform init-db` fixes it."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_dir() -> Path:
    """The schema files: packaged in a wheel as `_sql`, or `sql/` next to a source checkout."""
    packaged = Path(str(resources.files("heartbeat_platform"))) / "_sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or sql_dir()
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: schema files are named NNN_what_it_does.sql")
        migrations.append(Migration(int(match.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two schema files share a number in {directory}")
    if not migrations:
        raise MigrationError(f"no schema files found in {directory}")
    return migrations


def migrate(database_url: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    migrations = load_migrations(directory)
    applied_now: list[str] = []
    with connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text        NOT NULL,
                       checksum   text        NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                version: (name, checksum)
                for version, name, checksum in conn.execute(
                    "SELECT version, name, checksum FROM schema_migrations"
                )
            }
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version][1] != migration.checksum:
                        raise MigrationError(
                            f"{migration.name}.sql changed after it was applied; schema changes "
                            "go in a new numbered file"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                log.info("applied migration %s", migration.name)
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def check_schema(database_url: str, directory: Path | None = None) -> int:
    """The schema version, when every migration this code knows is applied; else
    SchemaNotReady saying to run `init-db`. Reads only (no lock, no DDL)."""
    migrations = load_migrations(directory)
    where = describe(database_url)
    with connect(database_url) as conn:
        exists = one_row(conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL"))
        if not exists[0]:
            raise SchemaNotReady(
                f"PostgreSQL {where} has no heartbeat schema: run `heartbeat-platform init-db` "
                "first (as a role that may create tables)"
            )
        done: dict[int, str] = dict(
            conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
        )
    for migration in migrations:
        if migration.version in done and done[migration.version] != migration.checksum:
            raise MigrationError(
                f"{migration.name}.sql changed after it was applied to {where}; schema "
                "changes go in a new numbered file"
            )
    pending = [m.name for m in migrations if m.version not in done]
    if pending:
        raise SchemaNotReady(
            f"PostgreSQL {where} has schema version {max(done, default=0)}, this "
            f"heartbeat-platform needs {migrations[-1].version} ({', '.join(pending)} not "
            "applied): run `heartbeat-platform init-db` (as a role that may create tables)"
        )
    return max(done)


def schema_version(database_url: str) -> int | None:
    """Highest applied migration number, or None on a database never initialised."""
    with connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return row[0] if row else None
