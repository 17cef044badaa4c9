"""Receivers kept in PostgreSQL (`alert_receivers`, sql/015): add, list, remove, load.

What `heartbeat-platform alerts receivers` changes and the deliverer reads every few
seconds, so a receiver is in force without a restart. The URL policy is the settings'
(`receivers.check_url`); the secret is not stored, only the name of the environment
variable the deliverer reads it from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import psycopg

from heartbeat_platform.alerting.receivers import (
    RECEIVER_TYPES,
    Receiver,
    ReceiverType,
    check_url,
    redact,
)
from heartbeat_platform.storage.alert_operations import AlertOperationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredReceiver:
    name: str
    type: ReceiverType
    url: str
    secret_env: str | None
    allow_http: bool
    added_by: str
    added_at: datetime

    def as_dict(self) -> dict[str, object]:
        """What `list --json` shows: the URL redacted (it may carry a token)."""
        return {"name": self.name, "type": self.type, "url": redact(self.url),
                "secret_env": self.secret_env, "allow_http": self.allow_http,
                "added_by": self.added_by, "added_at": self.added_at.isoformat()}

    def receiver(self, environ: Mapping[str, str]) -> Receiver:
        """The receiver to send to; ValueError (one line) when it cannot be used now."""
        check_url(self.url, self.allow_http, setting=f"receiver {self.name}")
        secret = None
        if self.secret_env:
            secret = environ.get(self.secret_env)
            if not secret:
                raise ValueError(f"receiver {self.name}: ${self.secret_env} is not set in the "
                                 "deliverer's environment")
        return Receiver(self.name, self.type, self.url, secret)


_COLUMNS = "name, type, url, secret_env, allow_http, added_by, added_at"


def add(conn: psycopg.Connection, name: str, type: str, url: str, *, by: str,
        secret_env: str | None = None, allow_http: bool = False) -> StoredReceiver:
    """Add a receiver; AlertOperationError (one line) when it is refused."""
    if type not in RECEIVER_TYPES:
        raise AlertOperationError(f"type {type!r} is not one of {', '.join(RECEIVER_TYPES)}")
    try:
        check_url(url, allow_http, setting=f"receiver {name}")
    except ValueError as exc:
        raise AlertOperationError(str(exc)) from None
    if type == "pagerduty" and not secret_env:
        raise AlertOperationError(f"receiver {name}: pagerduty needs --secret-env, the variable "
                                  "holding its routing key")
    try:
        with conn.transaction():
            row = conn.execute(
                f"INSERT INTO alert_receivers (name, type, url, secret_env, allow_http, "
                f"added_by) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (name, type, url, secret_env, allow_http, by),
            ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise AlertOperationError(f"a receiver named {name} exists: remove it first") from None
    except psycopg.errors.CheckViolation:
        raise AlertOperationError(
            f"receiver name {name!r} or variable {secret_env!r} is not allowed (a name: "
            "letters, digits, '_', '.', '-'; a variable: an environment variable's name)"
        ) from None
    assert row is not None
    return StoredReceiver(*row)


def remove(conn: psycopg.Connection, name: str) -> None:
    with conn.transaction():
        gone = conn.execute("DELETE FROM alert_receivers WHERE name = %s", (name,)).rowcount
    if not gone:
        raise AlertOperationError(f"no receiver named {name}")


def stored(conn: psycopg.Connection) -> list[StoredReceiver]:
    return [StoredReceiver(*row) for row in conn.execute(
        f"SELECT {_COLUMNS} FROM alert_receivers ORDER BY name")]


def get(conn: psycopg.Connection, name: str) -> StoredReceiver:
    for receiver in stored(conn):
        if receiver.name == name:
            return receiver
    raise AlertOperationError(f"no receiver named {name}")


def usable(rows: list[StoredReceiver], environ: Mapping[str, str],
           warned: set[str]) -> tuple[Receiver, ...]:
    """The stored receivers that can be sent to now; one that cannot (its secret's
    variable unset, its URL refused) is logged once (`warned` remembers) and skipped."""
    found = []
    for row in rows:
        try:
            found.append(row.receiver(environ))
        except ValueError as exc:
            if row.name not in warned:
                log.error("alert receiver %s is skipped: %s", row.name, exc)
                warned.add(row.name)
            continue
        warned.discard(row.name)
    return tuple(found)


def load(conn: psycopg.Connection, warned: set[str]) -> tuple[Receiver, ...]:
    """What the deliverer sends to besides the settings' receivers (os.environ holds the
    secrets)."""
    return usable(stored(conn), os.environ, warned)
