"""Connections and URL dialects: one DATABASE_URL, spelled for each client that reads it."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

CONNECT_TIMEOUT_S = 5


def connect(database_url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """A psycopg 3 connection that fails fast when the server is not there."""
    return psycopg.connect(database_url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)


def one_row(cursor: psycopg.Cursor[TupleRow]) -> TupleRow:
    """The row of a query that always returns one (an aggregate, a SELECT of expressions)."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("expected one row, the query returned none")
    return row


def sqlalchemy_url(database_url: str, driver: str = "psycopg") -> str:
    """The same URL for SQLAlchemy. Dagster's storage needs driver='psycopg2': for a plain
    postgresql:// SQLAlchemy 2.1 picks psycopg 3, which dagster-postgres does not support
    (README "Configuration", DAGSTER_POSTGRES_URL)."""
    _, _, rest = database_url.partition("://")
    return f"postgresql+{driver}://{rest}"


def describe(database_url: str) -> str:
    """host:port/dbname without the password, for logs and status output."""
    params = conninfo_to_dict(database_url)
    host, port = params.get("host", "localhost"), params.get("port", 5432)
    return f"{host}:{port}/{params.get('dbname', '')}"


def sibling_url(database_url: str, name: str) -> str:
    """The URL of database `name` on the same server, with the same credentials."""
    return urlsplit(database_url)._replace(path=f"/{name}").geturl()


def ensure_database(database_url: str, name: str, *, recreate: bool = False) -> str:
    """Create database `name` next to `database_url`'s (if missing, or afresh); its URL.

    Used for Dagster's own database, the benchmark's, and test databases. Raises
    psycopg.errors.InsufficientPrivilege when the role may not create databases.
    """
    with connect(database_url, autocommit=True) as conn:
        if recreate:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not found:
            conn.execute(f'CREATE DATABASE "{name}"')
    return sibling_url(database_url, name)
