"""The `heartbeat-platform` command: thin over the platform's classes."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from heartbeat_platform import platform
from heartbeat_platform.config import Settings, load_settings
from heartbeat_platform.local.services import LocalServices
from heartbeat_platform.status import collect_status
from heartbeat_platform.storage.database import describe

app = typer.Typer(
    help="Real-time heart-rate monitoring on Kafka, PostgreSQL, Dagster and Grafana.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err = Console(stderr=True)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress (INFO).")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def _settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:
        for problem in exc.errors():
            field = ".".join(str(p) for p in problem["loc"]).upper()
            err.print(f"[red]configuration error[/red] {field}: {problem['msg']}")
        raise typer.Exit(2) from None


def _not_built(command: str) -> None:
    err.print(f"`heartbeat-platform {command}` is not built yet; it arrives with a later release.")
    raise typer.Exit(1)


@app.command("init-db")
def init_db() -> None:
    """Start or reuse the services, apply pending schema migrations, create the topic."""
    settings = _settings()
    services = LocalServices(settings)
    prepared = platform.prepare(settings, services)
    for name in services.started:
        console.print(f"started embedded {name} (stop it with `heartbeat-platform down`)")
    applied = ", ".join(prepared.migrations_applied)
    console.print(
        f"PostgreSQL {describe(prepared.endpoints.database_url)}: schema "
        f"{'applied ' + applied if applied else 'up to date'}\n"
        f"Kafka {prepared.endpoints.bootstrap_servers}: topic {settings.kafka_topic} "
        f"{'created' if prepared.topic_created else 'exists'}"
    )


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Services reachable, schema version, topic and partitions, row counts. Starts nothing."""
    report = collect_status(_settings())
    if as_json:
        console.print_json(json.dumps(report))
    else:
        _print_status(report)
    raise typer.Exit(0 if report["ok"] else 1)


def _print_status(report: dict) -> None:
    db, kafka = report["database"], report["kafka"]
    table = Table(show_header=False, box=None)
    table.add_row(
        "PostgreSQL", f"{db['source']} {db['where'] or ''}",
        "[green]reachable[/green]" if db["reachable"] else f"[red]{db.get('error')}[/red]",
    )
    table.add_row("schema version", str(db["schema_version"]), "")
    for name, count in db["row_counts"].items():
        table.add_row(f"  {name}", f"{count:,}", "")
    table.add_row(
        "Kafka", f"{kafka['source']} {kafka['bootstrap_servers'] or ''}",
        "[green]reachable[/green]" if kafka["reachable"] else f"[red]{kafka.get('error')}[/red]",
    )
    table.add_row(
        f"  topic {kafka['topic']}",
        f"{kafka['partitions']} partitions" if kafka["partitions"] else "missing", "",
    )
    console.print(table)


@app.command()
def down() -> None:
    """Stop the embedded PostgreSQL and broker of this state folder (data in the broker is lost)."""
    stopped = LocalServices(_settings()).stop_all()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing embedded was running")


@app.command()
def produce() -> None:
    """Generate heart-rate events and send them to Kafka."""
    _not_built("produce")


@app.command()
def consume() -> None:
    """Consume events in batches and land them in PostgreSQL exactly once."""
    _not_built("consume")


@app.command()
def demo() -> None:
    """Produce N events, consume them and print a summary."""
    _not_built("demo")


@app.command()
def bench() -> None:
    """Measure producer, consumer and end-to-end performance (JSON)."""
    _not_built("bench")


@app.command()
def up() -> None:
    """Run the whole platform: services, Dagster webserver and daemon."""
    _not_built("up")
