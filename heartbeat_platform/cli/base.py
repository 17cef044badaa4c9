"""What every command module shares: the command and group classes, the consoles, one
line per failure, the settings, and the options several commands take."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from heartbeat_platform.cli import logs
from heartbeat_platform.config import Settings, load_settings

# The command's own records (a failure under --log-format json) come from one logger,
# whichever module of the command writes them.
log = logging.getLogger("heartbeat_platform.cli")

# soft_wrap: a line is never cut into several (a pipe or a file gets it whole; a terminal
# wraps it itself). Tables still fit the width, see print_table.
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JSON = typer.Option("--json", help="Print machine-readable JSON.")
LOCAL_BROKER = typer.Option(
    "--broker",
    help="The local broker to start when KAFKA_BOOTSTRAP_SERVERS is unset: tansu (in memory) "
    "or kafka (Apache Kafka, log on disk). Default: HEARTBEAT_LOCAL_BROKER, else tansu.",
)


class Command(TyperCommand):
    """A command that also takes the logging options after its name: `consume -v`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["epilog"] = kwargs.get("epilog") or logs.EPILOG
        super().__init__(*args, **kwargs)

    # ctx is really typer's vendored click Context (private, the base's type); typer.Context
    # is the subclass typer documents for annotating it.
    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        return super().parse_args(ctx, logs.take_logging_options(ctx, args))

    def get_params(self, ctx: typer.Context) -> list:  # type: ignore[override]
        return _flags_take_no_value(super().get_params(ctx))


class Group(TyperGroup):
    """The app and its command groups: their flags shown as flags, like the commands'."""

    def get_params(self, ctx: typer.Context) -> list:  # type: ignore[override]
        return _flags_take_no_value(super().get_params(ctx))


def _flags_take_no_value(params: list) -> list:
    """Typer's rich help shows a flag (--open, --json, --help) as `--open <bool>`, which reads
    as "takes a value" (and `--open true` is refused): an empty metavar shows it bare."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


def print_table(table: Table) -> None:
    """A table that fits the terminal, or, into a pipe or a file (where rich assumes 80
    columns), whole rows: cut and wrapped cells are no use to grep or a report."""
    if console.is_terminal:
        console.print(table)
        return
    widest = Measurement.get(console, console.options.update_width(10_000), table).maximum
    Console(width=max(widest, console.width)).print(table)


def error(message: str) -> None:
    """A failure the user must see: one red line, or a log record under --log-format json."""
    if logs.json_logs():
        log.error("%s", message)
    else:
        err.print(f"[red]error:[/red] {escape(message)}")


def settings_or_exit(**overrides: Any) -> Settings:
    """The settings (`overrides`: from the command's options; None leaves the setting as
    configured), or each configuration error on one line and exit 2."""
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        for problem in exc.errors():
            field = ".".join(str(p) for p in problem["loc"]).upper()
            cause = problem.get("ctx", {}).get("error")  # our own message, without pydantic's
            message = str(cause) if cause else problem["msg"]
            if logs.json_logs():
                log.error("configuration error %s%s", field + ": " if field else "", message)
            else:
                err.print(
                    f"[red]configuration error[/red] {escape(field + ': ' if field else '')}"
                    f"{escape(message)}"
                )
        raise typer.Exit(2) from None


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C and SIGTERM ask for a clean stop (flush, commit) instead of killing mid-batch."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
