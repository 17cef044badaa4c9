"""The platform's services: prepare them (init-db), look at them (status, which starts
nothing), run everything (up) and stop the embedded ones (down)."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Literal

import typer
from rich.table import Table

from heartbeat_platform import readiness
from heartbeat_platform.cli.base import (
    JSON,
    LOCAL_BROKER,
    Command,
    console,
    print_table,
    settings_or_exit,
)
from heartbeat_platform.local.services import LocalServices
from heartbeat_platform.status import collect_status
from heartbeat_platform.storage.database import describe

app = typer.Typer()


@app.command("init-db", cls=Command)
def init_db() -> None:
    """Start or reuse the services, apply pending schema migrations, create the topic."""
    settings = settings_or_exit()
    services = LocalServices(settings)
    prepared = readiness.prepare(settings, services, describe_topic=True)
    for name in services.started:
        what = "Apache Kafka" if name == "broker" and services.local_broker is services.kafka \
            else f"embedded {name}"
        console.print(f"started {what} (stop it with `heartbeat-platform down`)")
    applied = ", ".join(prepared.migrations_applied)
    layout = prepared.topic_layout
    console.print(
        f"PostgreSQL {describe(prepared.endpoints.database_url)}: schema "
        f"{'applied ' + applied if applied else 'up to date'}\n"
        f"Kafka {prepared.endpoints.bootstrap_servers}: topic {settings.kafka_topic} "
        f"{'created' if prepared.topic_created else 'exists'}"
        + (f": {layout.describe()}" if layout else "")
    )


@app.command(cls=Command)
def status(
    as_json: Annotated[bool, JSON] = False,
) -> None:
    """Services reachable, schema version, topic and partitions, row counts. Starts nothing."""
    report = collect_status(settings_or_exit())
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
    storage = db.get("storage") or {}
    for name, count in db["row_counts"].items():
        size = storage.get("tables", {}).get(name, {}).get("bytes", 0)
        table.add_row(f"  {name}", _rows(count), f"{size / 2**20:,.1f} MiB")
    if storage:
        table.add_row(
            "  raw days kept", f"{storage['first_day']} .. {storage['last_day']}",
            f"retention {storage['raw_retention_days']} days",
        )
        frontier = storage["fleet_minutes_rolled_up_until"]
        table.add_row(
            "  rollups", f"up to {frontier}" if frontier else "none yet",
            f"{storage['rollup_windows_pending']} windows pending",
        )
    table.add_row(
        "Kafka", f"{kafka['source']} {kafka['bootstrap_servers'] or ''}",
        "[green]reachable[/green]" if kafka["reachable"] else f"[red]{kafka.get('error')}[/red]",
    )
    table.add_row(
        f"  topic {kafka['topic']}",
        f"{kafka['partitions']} partitions" if kafka["partitions"] else "missing", "",
    )
    broker = kafka.get("embedded_broker")
    if broker and broker["memory_bytes"] is not None:
        messages = broker["log_messages"]
        table.add_row(
            "  embedded broker",
            f"{broker['memory_bytes'] / 2**20:,.1f} MiB memory, "
            f"{'?' if messages is None else f'{messages:,}'} messages in {kafka['topic']}",
            f"{broker['used']:.0%} of {broker['max_log_mb']} MB; {broker['rotations']} "
            f"rotations; {broker['rotation_phase']}",
        )
        if broker["warning"]:
            table.add_row("", f"[yellow]{broker['warning']}[/yellow]", "")
    print_table(table)


def _rows(count: dict) -> str:
    """"1,327 rows" (counted), "~2,400,000 rows" (the planner's estimate), or why neither."""
    if count["rows"] is None:
        return f"? rows ({count['how']})"
    return f"{'~' if count['how'] == 'estimate' else ''}{count['rows']:,} rows"


@app.command(cls=Command)
def down() -> None:
    """Stop the embedded PostgreSQL and broker of this state folder (Tansu's data is lost;
    Apache Kafka's log stays on disk)."""
    stopped = LocalServices(settings_or_exit()).stop_all()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing embedded was running")


@app.command(cls=Command)
def up(
    port: Annotated[int, typer.Option(help="Port of the Dagster UI on 127.0.0.1.")] = 3000,
    demo: Annotated[
        bool, typer.Option("--demo", help="Also start the producer at a modest rate.")
    ] = False,
    broker: Annotated[Literal["tansu", "kafka"] | None, LOCAL_BROKER] = None,
) -> None:
    """Run the platform: services, schema, topic, Dagster webserver and daemon (Ctrl-C stops)."""
    from heartbeat_platform.launcher import run_up

    code = run_up(settings_or_exit(heartbeat_local_broker=broker), port=port, demo=demo)
    # Everything is stopped and said: skip the interpreter's teardown of Dagster's modules,
    # which does nothing useful and kept the shell waiting 3-5 s after the final line
    # (measured under load).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

