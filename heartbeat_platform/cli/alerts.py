"""`alerts`: what a person does with episodes (storage/alert_operations.py): list,
acknowledge, resolve, follow, and per-customer bounds (`alerts override`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import psycopg
import typer
from rich.markup import escape
from rich.table import Table

from heartbeat_platform import readiness
from heartbeat_platform.cli import logs
from heartbeat_platform.cli.base import (
    JSON,
    Command,
    Group,
    console,
    err,
    error,
    log,
    print_table,
    settings_or_exit,
    stop_on_signals,
)

app = typer.Typer(
    cls=Group,
    help="Episodes and their notifications: list, acknowledge, resolve, follow, and "
    "per-customer alert bounds. A refused operation exits 1 with one line saying why.",
    no_args_is_help=True,
)
override_app = typer.Typer(
    cls=Group,
    help="Per-customer alert bounds (an athlete resting at 38 bpm); every change is kept.",
    no_args_is_help=True,
)
app.add_typer(override_app, name="override")
receivers_app = typer.Typer(
    cls=Group,
    help="Where notifications go, kept in PostgreSQL and in force within seconds (no "
    "restart), beside the ones the settings name (HEARTBEAT_ALERT_WEBHOOK_URL, ...).",
    no_args_is_help=True,
)
app.add_typer(receivers_app, name="receivers")


class ReceiverKind(StrEnum):
    WEBHOOK = "webhook"
    ALERTMANAGER = "alertmanager"
    PAGERDUTY = "pagerduty"


class OverrideKind(StrEnum):
    BRADYCARDIA = "BRADYCARDIA"
    TACHYCARDIA = "TACHYCARDIA"


_BY = typer.Option("--by", help="Who you are (recorded).")


@contextmanager
def _alerts_db(*, read_only: bool = False) -> Iterator[psycopg.Connection]:
    """The schema-checked database (like `maintain`); a refusal is one line and exit 1.

    A command that only reads starts nothing: with the embedded PostgreSQL stopped it says
    what to run instead (as `status` does). One that changes something starts it, like
    `maintain`."""
    from heartbeat_platform.storage.alert_operations import AlertOperationError
    from heartbeat_platform.storage.database import connect

    settings = settings_or_exit()
    endpoints = (
        readiness.running(settings) if read_only else readiness.ready(settings, topic=False)
    )
    database_url = endpoints.database_url
    with connect(database_url, autocommit=True) as conn:
        try:
            yield conn
        except AlertOperationError as exc:
            error(str(exc))
            raise typer.Exit(1) from None


def _at(moment: datetime | None) -> str:
    from heartbeat_platform.storage.alert_operations import format_time

    return "" if moment is None else format_time(moment)


@app.command("list", cls=Command)
def alerts_list(
    open_only: Annotated[
        bool, typer.Option("--open", help="Only open episodes (pending and firing).")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most N episodes, newest first.", min=1)] = 50,
    as_json: Annotated[bool, JSON] = False,
) -> None:
    """Episodes, newest first: the open ones, or the latest of all."""
    from heartbeat_platform.storage.alert_operations import list_episodes

    with _alerts_db(read_only=True) as conn:
        found = list_episodes(conn, open_only=open_only, limit=limit)
    if as_json:
        console.print_json(json.dumps([e.as_dict() for e in found]))
        return
    if not found:
        console.print("no open episodes" if open_only else "no episodes")
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "customer", "kind", "state", "severity", "opened", "readings",
                   "worst bpm", "acknowledged", "resolved", "escalated"):
        table.add_column(column)
    for e in found:
        table.add_row(
            str(e.episode_id), e.customer_id, e.kind, e.state, e.severity, _at(e.opened_at),
            str(e.readings), str(e.worst_heart_rate),
            f"{_at(e.acknowledged_at)} by {e.acknowledged_by}" if e.acknowledged_at else "",
            (f"{_at(e.resolved_at)} by {e.resolved_by or 'readings'}" if e.resolved_at else ""),
            _at(e.escalated_at),
        )
    print_table(table)


@app.command("ack", cls=Command)
def alerts_ack(
    episode: Annotated[int, typer.Argument(help="The episode id (alerts list).")],
    by: Annotated[str, _BY],
    note: Annotated[str | None, typer.Option(help="What you are doing about it.")] = None,
) -> None:
    """Acknowledge a firing episode: you have it (it will not escalate)."""
    from heartbeat_platform.storage.alert_operations import acknowledge

    with _alerts_db() as conn:
        done = acknowledge(conn, episode, by, note)
    console.print(
        f"episode {done.episode_id} ({done.customer_id} {done.kind}) acknowledged by "
        f"{done.acknowledged_by} at {_at(done.acknowledged_at)}", highlight=False,
    )


@app.command("resolve", cls=Command)
def alerts_resolve(
    episode: Annotated[int, typer.Argument(help="The episode id (alerts list).")],
    by: Annotated[str, _BY],
) -> None:
    """Resolve a firing episode by hand; receivers are notified as for any resolution."""
    from heartbeat_platform.storage.alert_operations import resolve

    with _alerts_db() as conn:
        done = resolve(conn, episode, by)
    console.print(
        f"episode {done.episode_id} ({done.customer_id} {done.kind}) resolved by "
        f"{done.resolved_by} at {_at(done.resolved_at)}; its notification is queued",
        highlight=False,
    )


@app.command("tail", cls=Command)
def alerts_tail(
    from_start: Annotated[
        bool, typer.Option(
            "--from-start",
            help="First every transition still kept (delivered ones of resolved episodes go "
            "after HEARTBEAT_ALERT_NOTIFICATION_RETENTION_HOURS).",
        )
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per transition (with its payload).")
    ] = False,
) -> None:
    """Print each transition (firing, resolved, escalated) as it is queued, until Ctrl-C."""
    from heartbeat_platform.storage.alert_operations import OutboxFollower, format_time

    stopping: list[bool] = []
    with _alerts_db(read_only=True) as conn:
        follower = OutboxFollower(conn, after=0 if from_start else None)
        started = f"following alert transitions after outbox id {follower.after} (Ctrl-C stops)"
        if logs.json_logs():
            log.info("%s", started)
        else:
            err.print(f"[dim]{escape(started)}[/dim]")
        with stop_on_signals(lambda: stopping.append(True)):
            for e in follower.follow(lambda: bool(stopping)):
                typer.echo(
                    json.dumps(e.as_dict()) if as_json else
                    f"{format_time(e.queued_at)}  episode {e.episode_id:<6}  "
                    f"{e.customer_id:<15}  {e.kind:<12}  {e.state:<9}  {e.severity}"
                )


@override_app.command("set", cls=Command)
def override_set(
    customer: Annotated[str, typer.Argument(help="e.g. CUST_00042")],
    kind: Annotated[
        OverrideKind,
        typer.Argument(case_sensitive=False, help="BRADYCARDIA (below) or TACHYCARDIA (above)."),
    ],
    threshold: Annotated[int, typer.Argument(help="The bound in bpm (1..300).")],
    by: Annotated[str, _BY],
    note: Annotated[str | None, typer.Option(help="Why (kept with the change).")] = None,
) -> None:
    """Episodes of KIND for CUSTOMER start below (BRADYCARDIA) or above (TACHYCARDIA)
    THRESHOLD bpm. Storage classification does not change."""
    from heartbeat_platform.storage.alert_operations import set_override

    with _alerts_db() as conn:
        done = set_override(conn, customer, kind.value, threshold, by, note)
    side = "below" if done.kind == OverrideKind.BRADYCARDIA else "above"
    console.print(
        f"{done.customer_id} {done.kind}: episodes {side} {done.threshold} bpm "
        f"(set by {done.set_by} at {_at(done.set_at)})", highlight=False,
    )


@override_app.command("clear", cls=Command)
def override_clear(
    customer: Annotated[str, typer.Argument(help="e.g. CUST_00042")],
    kind: Annotated[OverrideKind, typer.Argument(case_sensitive=False)],
    by: Annotated[str, _BY],
    note: Annotated[str | None, typer.Option(help="Why (kept with the change).")] = None,
) -> None:
    """Return CUSTOMER's KIND bound to the default (below 40 / above 180 bpm)."""
    from heartbeat_platform.storage.alert_operations import clear_override

    with _alerts_db() as conn:
        done = clear_override(conn, customer, kind.value, by, note)
    console.print(
        f"{done.customer_id} {done.kind}: back to the default bound "
        f"(cleared by {done.set_by} at {_at(done.set_at)})", highlight=False,
    )


@override_app.command("list", cls=Command)
def override_list(
    history: Annotated[
        str | None,
        typer.Option(metavar="CUSTOMER", help="Every change of this customer's bounds instead."),
    ] = None,
    as_json: Annotated[bool, JSON] = False,
) -> None:
    """The overrides in force, or one customer's history of changes (newest first)."""
    from heartbeat_platform.storage.alert_operations import override_history, overrides_in_force

    with _alerts_db(read_only=True) as conn:
        rows = overrides_in_force(conn) if history is None else override_history(conn, history)
    if as_json:
        console.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    if not rows:
        console.print("no override in force" if history is None else f"no change for {history}")
        return
    table = Table(box=None, header_style="bold")
    for column in ("customer", "kind", "threshold", "set by", "set at", "note"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.customer_id, r.kind,
                      "cleared" if r.threshold is None else str(r.threshold),
                      r.set_by, _at(r.set_at), r.note or "")
    print_table(table)


@receivers_app.command("add", cls=Command)
def receivers_add(
    name: Annotated[str, typer.Argument(help="What the logs and the outbox call it.")],
    url: Annotated[str, typer.Option(help="https:// (http only to loopback, or with "
                                          "--allow-http); Alertmanager: its base URL.")],
    kind: Annotated[ReceiverKind, typer.Option("--type", case_sensitive=False)] = (
        ReceiverKind.WEBHOOK),
    secret_env: Annotated[str | None, typer.Option(
        metavar="VAR", help="The environment variable holding the webhook's signing secret "
        "or PagerDuty's routing key, in the consumer's environment (never stored).",
    )] = None,
    allow_http: Annotated[bool, typer.Option(
        "--allow-http", help="Allow plain http to a host that is not loopback.")] = False,
    by: Annotated[str | None, typer.Option("--by", help="Who adds it (default: $USER).")] = None,
) -> None:
    """Send every episode that fires from now on to a new receiver (within seconds)."""
    import getpass

    from heartbeat_platform.alerting.receivers import redact
    from heartbeat_platform.storage import alert_receivers

    with _alerts_db() as conn:
        done = alert_receivers.add(conn, name, kind.value, url, secret_env=secret_env,
                                   allow_http=allow_http, by=by or getpass.getuser())
    console.print(f"receiver {done.name} ({done.type}, {redact(done.url)}) added by "
                  f"{done.added_by}: in force within seconds for episodes that fire from now",
                  highlight=False)


@receivers_app.command("list", cls=Command)
def receivers_list(as_json: Annotated[bool, JSON] = False) -> None:
    """The stored receivers (URLs shown as scheme://host/…: they may carry a token)."""
    from heartbeat_platform.storage import alert_receivers

    with _alerts_db(read_only=True) as conn:
        rows = alert_receivers.stored(conn)
    if as_json:
        console.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    if not rows:
        console.print("no stored receiver (the settings may name some: see README, Alerts)")
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "type", "url", "secret from", "added by", "added at"):
        table.add_column(column)
    for r in rows:
        shown = r.as_dict()
        table.add_row(r.name, r.type, str(shown["url"]), f"${r.secret_env}" if r.secret_env
                      else "", r.added_by, _at(r.added_at))
    print_table(table)


@receivers_app.command("remove", cls=Command)
def receivers_remove(name: Annotated[str, typer.Argument()]) -> None:
    """Stop sending to a stored receiver (within seconds)."""
    from heartbeat_platform.storage import alert_receivers

    with _alerts_db() as conn:
        alert_receivers.remove(conn, name)
    console.print(f"receiver {name} removed", highlight=False)


@receivers_app.command("test", cls=Command)
def receivers_test(name: Annotated[str, typer.Argument(
        help="A stored receiver, or one the settings name (as the logs call it).")]) -> None:
    """Send a made-up episode (0, customer HEARTBEAT_TEST) firing, then resolved."""
    import os

    from heartbeat_platform.alerting.delivery import failure, send_test
    from heartbeat_platform.storage import alert_receivers
    from heartbeat_platform.storage.alert_operations import AlertOperationError

    settings = settings_or_exit()
    named = {r.name: r for r in (*settings.alert_receivers,
                                 *settings.alert_escalation_receivers)}
    receiver = named.get(name)
    if receiver is None:
        with _alerts_db(read_only=True) as conn:
            stored = alert_receivers.get(conn, name)
        try:
            receiver = stored.receiver(os.environ)
        except ValueError as exc:
            error(str(exc))
            raise typer.Exit(1) from None
    try:
        answers = send_test(receiver)
    except (OSError, AlertOperationError, ValueError) as exc:
        error(f"test of {failure(receiver, exc)}")
        raise typer.Exit(1) from None
    for state, status in answers:
        console.print(f"{receiver}: test episode {state}: HTTP {status}", highlight=False)
    raise typer.Exit(0 if all(status < 300 for _, status in answers) else 1)

