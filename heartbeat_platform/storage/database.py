"""Connections and URL dialects: one DATABASE_URL, spelled for each client that reads it."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

CONNECT_TIMEOUT_S = 5


def connect(database_url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """A psycopg 3 connection that fails fast when the server is not there."""
    return psycopg.connect(database_url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)


def sqlalchemy_url(database_url: str, driver: str = "psycopg") -> str:
    """The same URL for SQLAlchemy; Dagster's storage needs driver='psycopg2' (see DESIGN.md)."""
    scheme, _, rest = database_url.partition("://")
    return f"postgresql+{driver}://{rest}"


def describe(database_url: str) -> str:
    """host:port/dbname without the password, for logs and status output."""
    params = conninfo_to_dict(database_url)
    host, port = params.get("host", "localhost"), params.get("port", 5432)
    return f"{host}:{port}/{params.get('dbname', '')}"
