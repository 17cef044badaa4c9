"""The logging options: -v, --log-level and --log-format, before or after the command.

Before the command they are the app callback's options (shown in `heartbeat-platform
--help`); after it, `Command` takes them out of its arguments before typer parses the
rest, so `consume -v` works and each command's help stays about the command. The last
one given wins; a level beats -v.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from enum import StrEnum

import orjson
import typer


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, and exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class Logs:
    """The logging options chosen so far, and the one stderr handler they configure."""

    def __init__(self) -> None:
        self.verbose = False
        self.level: LogLevel | None = None
        self.format = LogFormat.text
        self.handler: logging.Handler | None = None

    def start(self, verbose: bool, level: LogLevel | None, log_format: LogFormat) -> None:
        root = logging.getLogger()
        if self.handler is not None:
            root.removeHandler(self.handler)
        self.handler = logging.StreamHandler()  # stderr
        root.addHandler(self.handler)
        self.verbose, self.level, self.format = verbose, level, log_format
        self.apply()

    def apply(self) -> None:
        level = self.level or (LogLevel.info if self.verbose else LogLevel.warning)
        logging.getLogger().setLevel(level.value.upper())
        if self.handler is not None:
            self.handler.setFormatter(
                JsonFormatter() if self.format is LogFormat.json
                else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
            )


chosen = Logs()


def json_logs() -> bool:
    """Whether records (errors included) go out as JSON lines rather than text."""
    return chosen.format is LogFormat.json


PANEL = "Logging"
VERBOSE_HELP = "Log progress (INFO); same as --log-level info."
LEVEL_HELP = "Least severe level logged (default warning)."
FORMAT_HELP = "text, or json: one JSON object per line on stderr, for log shippers."
EPILOG = (
    "-v, --log-level and --log-format go before or after the command "
    "(heartbeat-platform --help)."
)


def take_logging_options(ctx: typer.Context, args: list[str]) -> list[str]:
    """Apply the logging options found among a command's arguments; the others stay.

    Our own scan rather than hidden typer options: those would be offered in "No such
    option" suggestions (`status --bogus` -> "Possible options: --verbose") and would
    change the error for a missing value."""
    rest: list[str] = []
    given = iter(args)
    for arg in given:
        if arg == "--":
            rest += [arg, *given]
            break
        name, _, value = arg.partition("=")
        if arg in ("-v", "--verbose"):
            chosen.verbose = True
        elif name in ("--log-level", "--log-format"):
            value = value or next(given, "")
            choices = LogLevel if name == "--log-level" else LogFormat
            try:
                picked = choices(value.lower())
            except ValueError:
                raise typer.BadParameter(
                    f"{value!r} is not one of {', '.join(choices)}", ctx=ctx, param_hint=name
                ) from None
            if isinstance(picked, LogLevel):  # name == "--log-level"
                chosen.level = picked
            else:
                chosen.format = picked
        else:
            rest.append(arg)
    chosen.apply()
    return rest
