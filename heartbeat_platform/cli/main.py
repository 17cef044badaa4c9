"""The `heartbeat-platform` app: its options (logging, --version), the command modules put
together (typer's one file per command group), and the entry point."""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

import psycopg
import typer

from heartbeat_platform import readiness
from heartbeat_platform.cli import (
    alerts,
    bench,
    logs,
    maintenance,
    pipeline,
    readings,
    services,
)
from heartbeat_platform.cli.base import Group, console, error, log
from heartbeat_platform.local.broker import EmbeddedBrokerError
from heartbeat_platform.local.postgres import EmbeddedPostgresError
from heartbeat_platform.storage.migrations import MigrationError
from heartbeat_platform.streaming.kafka_config import KafkaConfigError
from heartbeat_platform.streaming.topics import BrokerUnavailable, TopicMissing

# The order `--help` lists the commands in: a new user's, not the modules'.
_COMMANDS = ("init-db", "status", "maintain", "readings", "down", "produce", "consume", "demo",
             "bench", "up", "alerts")


class _App(Group):
    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        found = super().list_commands(ctx)
        return sorted(found, key=lambda n: _COMMANDS.index(n) if n in _COMMANDS else len(found))


app = typer.Typer(
    cls=_App,
    help="Real-time heart-rate monitoring on Kafka, PostgreSQL, Dagster and Grafana.\n\n"
    "The logging options go before or after the command: heartbeat-platform consume -v",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
for commands in (services, maintenance, readings, pipeline, bench):
    app.add_typer(commands.app)
app.add_typer(alerts.app, name="alerts")


def _print_version(value: bool) -> None:
    if value:
        console.print(f"heartbeat-platform {version('heartbeat-platform')}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help=logs.VERBOSE_HELP, rich_help_panel=logs.PANEL),
    ] = False,
    log_level: Annotated[
        logs.LogLevel | None,
        typer.Option(case_sensitive=False, help=logs.LEVEL_HELP, rich_help_panel=logs.PANEL),
    ] = None,
    log_format: Annotated[
        logs.LogFormat,
        typer.Option(
            envvar="HEARTBEAT_LOG_FORMAT", case_sensitive=False, help=logs.FORMAT_HELP,
            rich_help_panel=logs.PANEL,
        ),
    ] = logs.LogFormat.text,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    logs.chosen.start(verbose, log_level, log_format)


def run() -> None:
    """Console entry point: known failures become one clear line, not a traceback."""
    try:
        app(prog_name="heartbeat-platform")
    except (
        MigrationError, BrokerUnavailable, TopicMissing, KafkaConfigError,
        EmbeddedPostgresError, EmbeddedBrokerError, psycopg.OperationalError,
        readiness.ServicesNotRunning,
    ) as exc:
        error(str(exc).strip())
        raise SystemExit(1) from None
    except Exception:
        if not logs.json_logs():
            raise  # typer's traceback
        log.exception("unexpected error")
        raise SystemExit(1) from None
