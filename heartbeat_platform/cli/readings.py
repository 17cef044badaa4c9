"""`readings`: one customer's raw readings of a time range, from both storage tiers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from heartbeat_platform import readiness
from heartbeat_platform.cli.base import JSON, Command, console, error, print_table, settings_or_exit
from heartbeat_platform.domain.events import CUSTOMER_ID_RULE, is_customer_id

app = typer.Typer()

FROM = typer.Option("--from", help="Start (ISO-8601; without a zone: UTC), included.")
TO = typer.Option("--to", help="End (ISO-8601; without a zone: UTC), excluded.")


def parse_time(text: str, option: str) -> datetime:
    """An ISO-8601 instant; one without a time zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO-8601 time", param_hint=option) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@app.command(cls=Command)
def readings(
    customer: Annotated[str, typer.Argument(help="The customer, e.g. CUST_00042.")],
    start: Annotated[str, FROM],
    end: Annotated[str, TO],
    as_json: Annotated[bool, JSON] = False,
) -> None:
    """One customer's readings in [--from, --to), time order, with each reading's class,
    from the hot and the cold tier alike (the SQL function heartbeat_readings)."""
    from heartbeat_platform.storage import cold
    from heartbeat_platform.storage.database import connect

    if not is_customer_id(customer):
        error(f"{customer!r} is no customer id ({CUSTOMER_ID_RULE})")
        raise typer.Exit(2)
    first, last = parse_time(start, "--from"), parse_time(end, "--to")
    settings = settings_or_exit()
    database_url = readiness.ready(settings, topic=False).database_url
    with connect(database_url, autocommit=True) as conn:
        rows = cold.readings(conn, customer, first, last)
    if as_json:
        console.print_json(json.dumps([
            {"timestamp": r.event_timestamp.astimezone(UTC).isoformat(),
             "heart_rate": r.heart_rate, "class": r.reading_class, "tier": r.tier,
             "raw_payload": r.raw_payload}
            for r in rows
        ]))
        return
    table = Table("timestamp (UTC)", "bpm", "class", "tier", "raw payload")
    for r in rows:
        table.add_row(r.event_timestamp.astimezone(UTC).isoformat(), str(r.heart_rate),
                      r.reading_class, r.tier, escape(r.raw_payload or ""))
    print_table(table)
    console.print(f"{len(rows):,} readings of {customer} in [{first.isoformat()}, "
                  f"{last.isoformat()})")
