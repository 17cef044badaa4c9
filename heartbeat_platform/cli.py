"""The `heartbeat-platform` command: thin over the platform's classes."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import orjson
import psycopg
import typer
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from heartbeat_platform import metrics, readiness
from heartbeat_platform.config import Settings, load_settings
from heartbeat_platform.local.broker import EmbeddedBrokerError
from heartbeat_platform.local.postgres import EmbeddedPostgresError
from heartbeat_platform.local.services import LocalServices
from heartbeat_platform.status import collect_status
from heartbeat_platform.storage.database import describe
from heartbeat_platform.storage.migrations import MigrationError
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.kafka_config import KafkaConfigError
from heartbeat_platform.streaming.producer import HeartbeatProducer
from heartbeat_platform.streaming.topics import BrokerUnavailable, TopicMissing


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


class _Logs:
    """The logging options, given before or after the command (the last one given wins)."""

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


_logs = _Logs()
_LOGGING = "Logging"
_VERBOSE_HELP = "Log progress (INFO); same as --log-level info."
_LEVEL_HELP = "Least severe level logged (default warning)."
_FORMAT_HELP = "text, or json: one JSON object per line on stderr, for log shippers."


class _Command(TyperCommand):
    """A command that also takes the logging options after its name: `consume -v`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["epilog"] = kwargs.get("epilog") or (
            "-v, --log-level and --log-format go before or after the command "
            "(heartbeat-platform --help)."
        )
        super().__init__(*args, **kwargs)

    # ctx is really typer's vendored click Context (private, the base's type); typer.Context
    # is the subclass typer documents for annotating it.
    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        return super().parse_args(ctx, _take_logging_options(ctx, args))

    def get_params(self, ctx: typer.Context) -> list:  # type: ignore[override]
        return _flags_take_no_value(super().get_params(ctx))


class _Group(TyperGroup):
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


def _take_logging_options(ctx: typer.Context, args: list[str]) -> list[str]:
    """Apply the logging options found among a command's arguments; the others stay."""
    rest: list[str] = []
    given = iter(args)
    for arg in given:
        if arg == "--":
            rest += [arg, *given]
            break
        name, _, value = arg.partition("=")
        if arg in ("-v", "--verbose"):
            _logs.verbose = True
        elif name in ("--log-level", "--log-format"):
            value = value or next(given, "")
            choices = LogLevel if name == "--log-level" else LogFormat
            try:
                chosen = choices(value.lower())
            except ValueError:
                raise typer.BadParameter(
                    f"{value!r} is not one of {', '.join(choices)}", ctx=ctx, param_hint=name
                ) from None
            if isinstance(chosen, LogLevel):  # name == "--log-level"
                _logs.level = chosen
            else:
                _logs.format = chosen
        else:
            rest.append(arg)
    _logs.apply()
    return rest


app = typer.Typer(
    cls=_Group,
    help="Real-time heart-rate monitoring on Kafka, PostgreSQL, Dagster and Grafana.\n\n"
    "The logging options go before or after the command: heartbeat-platform consume -v",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
# soft_wrap: a line is never cut into several (a pipe or a file gets it whole; a terminal
# wraps it itself). Tables still fit the width, see _print_table.
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _print_table(table: Table) -> None:
    """A table that fits the terminal, or, into a pipe or a file (where rich assumes 80
    columns), whole rows: cut and wrapped cells are no use to grep or a report."""
    if console.is_terminal:
        console.print(table)
        return
    widest = Measurement.get(console, console.options.update_width(10_000), table).maximum
    Console(width=max(widest, console.width)).print(table)


log = logging.getLogger(__name__)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"heartbeat-platform {version('heartbeat-platform')}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help=_VERBOSE_HELP, rich_help_panel=_LOGGING)
    ] = False,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(case_sensitive=False, help=_LEVEL_HELP, rich_help_panel=_LOGGING),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            envvar="HEARTBEAT_LOG_FORMAT", case_sensitive=False, help=_FORMAT_HELP,
            rich_help_panel=_LOGGING,
        ),
    ] = LogFormat.text,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    _logs.start(verbose, log_level, log_format)


def _error(message: str) -> None:
    """A failure the user must see: one red line, or a log record under --log-format json."""
    if _logs.format is LogFormat.json:
        log.error("%s", message)
    else:
        err.print(f"[red]error:[/red] {escape(message)}")


def _settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:
        for problem in exc.errors():
            field = ".".join(str(p) for p in problem["loc"]).upper()
            cause = problem.get("ctx", {}).get("error")  # our own message, without pydantic's
            message = str(cause) if cause else problem["msg"]
            if _logs.format is LogFormat.json:
                log.error("configuration error %s%s", field + ": " if field else "", message)
            else:
                err.print(
                    f"[red]configuration error[/red] {escape(field + ': ' if field else '')}"
                    f"{escape(message)}"
                )
        raise typer.Exit(2) from None


def run() -> None:
    """Console entry point: known failures become one clear line, not a traceback."""
    try:
        app(prog_name="heartbeat-platform")
    except (
        MigrationError, BrokerUnavailable, TopicMissing, KafkaConfigError,
        EmbeddedPostgresError, EmbeddedBrokerError, psycopg.OperationalError,
        readiness.ServicesNotRunning,
    ) as exc:
        _error(str(exc).strip())
        raise SystemExit(1) from None
    except Exception:
        if _logs.format is not LogFormat.json:
            raise  # typer's traceback
        log.exception("unexpected error")
        raise SystemExit(1) from None


@app.command("init-db", cls=_Command)
def init_db() -> None:
    """Start or reuse the services, apply pending schema migrations, create the topic."""
    settings = _settings()
    services = LocalServices(settings)
    prepared = readiness.prepare(settings, services, describe_topic=True)
    for name in services.started:
        console.print(f"started embedded {name} (stop it with `heartbeat-platform down`)")
    applied = ", ".join(prepared.migrations_applied)
    layout = prepared.topic_layout
    console.print(
        f"PostgreSQL {describe(prepared.endpoints.database_url)}: schema "
        f"{'applied ' + applied if applied else 'up to date'}\n"
        f"Kafka {prepared.endpoints.bootstrap_servers}: topic {settings.kafka_topic} "
        f"{'created' if prepared.topic_created else 'exists'}"
        + (f": {layout.describe()}" if layout else "")
    )


@app.command(cls=_Command)
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
    _print_table(table)


def _rows(count: dict) -> str:
    """"1,327 rows" (counted), "~2,400,000 rows" (the planner's estimate), or why neither."""
    if count["rows"] is None:
        return f"? rows ({count['how']})"
    return f"{'~' if count['how'] == 'estimate' else ''}{count['rows']:,} rows"


@app.command(cls=_Command)
def maintain(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Bring the rollups up to date and apply retention once (what Dagster does on schedule).

    For deployments that run `consume` without Dagster: run it every minute or so (cron).
    """
    from datetime import UTC, datetime

    from heartbeat_platform.storage import episodes
    from heartbeat_platform.storage.database import connect, one_row
    from heartbeat_platform.storage.partitions import apply_retention
    from heartbeat_platform.storage.rollups import delete_expired, refresh_pending

    settings = _settings()
    database_url = readiness.ready(settings, topic=False).database_url
    now = datetime.now(UTC)
    with connect(database_url, autocommit=True) as conn:
        refreshed = refresh_pending(conn, now)
        retention = apply_retention(conn, settings.retention, now)
        deleted = delete_expired(conn, now, settings.heartbeat_rollup_retention_days)
        alert_retention = episodes.retain(
            conn, now, settings.heartbeat_alert_retention_days,
            settings.heartbeat_alert_notification_retention_hours,
        )
        open_windows = one_row(
            conn.execute(
                "SELECT count(*) FROM (SELECT DISTINCT rollup, window_start FROM rollup_pending) w"
            )
        )[0]
    report = {
        "rollups": {
            r.rollup.value: {"windows": r.windows, "rows": r.rows, "readings": r.readings,
                             "seconds": round(r.seconds, 3)}
            for r in refreshed
        },
        "retention": retention.as_metadata(),
        "rollup_rows_deleted": deleted,
        "rollup_windows_not_settled": open_windows,
        **alert_retention,
    }
    if as_json:
        console.print_json(json.dumps(report))
        return
    for name, done in report["rollups"].items():
        console.print(f"{name}: {done['windows']} windows recomputed")
    if not refreshed:
        console.print("rollups: nothing settled to recompute")
    if open_windows:
        console.print(f"{open_windows} windows still open (recomputed once they settle)")
    console.print(
        f"raw days kept {retention.first_day}..{retention.last_day}; dropped "
        f"{report['retention']['days_dropped'] or 'nothing'}; kept for pending rollups "
        f"{report['retention']['days_kept_for_rollups'] or 'none'}"
    )
    console.print(
        f"alerts: {alert_retention['resolved_episodes_deleted']:,} resolved episodes and "
        f"{alert_retention['delivered_notifications_deleted']:,} delivered notifications deleted"
    )


@app.command(cls=_Command)
def down() -> None:
    """Stop the embedded PostgreSQL and broker of this state folder (data in the broker is lost)."""
    stopped = LocalServices(_settings()).stop_all()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing embedded was running")


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C and SIGTERM ask for a clean stop (flush, commit) instead of killing mid-batch."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command(cls=_Command)
def produce(
    rate: Annotated[
        float, typer.Option(help="Events per second; 0 = as fast as possible.", min=0)
    ] = 1000.0,
    events: Annotated[int | None, typer.Option(help="Stop after N events.", min=1)] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after S seconds.", min=0)
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for a repeatable stream.")] = None,
    metrics_port: Annotated[int | None, _METRICS_PORT] = None,
) -> None:
    """Generate heart-rate events and send them to Kafka (until Ctrl-C without limits)."""
    if events is not None and duration is not None:
        err.print("give --events or --duration, not both")
        raise typer.Exit(2)
    settings = _settings()
    endpoints = readiness.ready(settings)
    producer = HeartbeatProducer(
        readiness.producer_config(settings, endpoints), metrics=_metrics(settings, metrics_port)
    )
    with (
        producer,
        _stop_on_signals(producer.request_stop),
        _progress(events, "producing") as advance,
    ):
        report = producer.run(
            readiness.generator(settings, seed),
            rate=rate or None, events=events, duration=duration,
            progress=lambda r: advance(r.sent),
        )
    console.print(
        f"sent {report.sent:,}  delivered {report.delivered:,}  failed {report.failed:,}  "
        f"uncertain {report.uncertain:,}  "
        f"in {report.seconds:.1f}s ({report.rate:,.0f} events/s)"
    )
    raise typer.Exit(1 if report.undelivered else 0)


@app.command(cls=_Command)
def consume(
    batch_size: Annotated[
        int | None, typer.Option(help="Messages per batch/transaction.", min=1)
    ] = None,
    stop_when_idle: Annotated[
        float | None,
        typer.Option(help="Exit 0 after S seconds without a new message.", min=0),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON report (with peak RSS) at the end.")
    ] = False,
    metrics_port: Annotated[int | None, _METRICS_PORT] = None,
) -> None:
    """Consume events in batches and land them in PostgreSQL exactly once."""
    settings = _settings()
    endpoints = readiness.ready(settings)
    overrides = {"batch_size": batch_size} if batch_size else {}
    consumer = HeartbeatConsumer(
        readiness.consumer_config(settings, endpoints, **overrides),
        metrics=_metrics(settings, metrics_port),
    )
    with _stop_on_signals(consumer.request_stop):
        report = consumer.run(stop_when_idle=stop_when_idle)
    if as_json:
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        console.print_json(json.dumps({**report.as_dict(), "peak_rss_mb": round(peak_rss_mb, 1)}))
        return
    stats = report.stats
    console.print(
        f"consumed {stats.messages_consumed:,} in {report.seconds:.1f}s: "
        f"records {stats.records_written:,}, anomalies "
        f"{stats.anomalies_bradycardia + stats.anomalies_tachycardia + stats.anomalies_invalid:,}, "
        f"dead letters {stats.dead_letters:,}, duplicates dropped {stats.duplicates_dropped:,}"
    )


_METRICS_PORT = typer.Option(
    help="Serve Prometheus /metrics on this port (0: a free one; default "
    "HEARTBEAT_METRICS_PORT, unset = off), on HEARTBEAT_METRICS_HOST (127.0.0.1).",
    min=0, max=65_535,
)


def _metrics(settings: Settings, port: int | None) -> CollectorRegistry | None:
    """A registry served on /metrics when a port is set (flag, then setting), else None."""
    port = settings.heartbeat_metrics_port if port is None else port
    if port is None:
        return None
    registry = CollectorRegistry()
    bound = metrics.serve(registry, port, settings.heartbeat_metrics_host)
    err.print(f"metrics: http://{settings.heartbeat_metrics_host}:{bound}/metrics")
    return registry


@contextmanager
def _progress(total: int | None, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal; nothing when output goes to a file or pipe."""
    if not console.is_terminal:
        yield lambda _done: None
        return
    with Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done: bar.update(task, completed=done)


@app.command(cls=_Command)
def demo(
    events: Annotated[int, typer.Option(help="How many events to send.", min=1)] = 20_000,
    rate: Annotated[
        float, typer.Option(help="Events per second; 0 = as fast as possible.", min=0)
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for a repeatable stream.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    metrics_port: Annotated[int | None, _METRICS_PORT] = None,
) -> None:
    """Produce N events, consume them, print a summary; exit 1 if any is unaccounted for."""
    from heartbeat_platform.demo import run_demo

    settings = _settings()
    summary = run_demo(settings, events, rate=rate or None, seed=seed,
                       metrics=_metrics(settings, metrics_port))
    if as_json:
        console.print_json(json.dumps(summary.as_dict()))
    else:
        table = Table(title="heartbeat demo", show_header=False)
        table.add_row("produced / delivered / failed / uncertain",
                      f"{summary.produced:,} / {summary.delivered:,} / {summary.failed:,} / "
                      f"{summary.uncertain:,}")
        for kind in ("NORMAL", "BRADYCARDIA", "TACHYCARDIA", "INVALID"):
            table.add_row(f"  {kind}", f"{summary.by_class.get(kind, 0):,}")
        table.add_row("dead letters", f"{summary.dead_letters:,}")
        table.add_row("alerts", f"{summary.alerts:,}")
        table.add_row("unaccounted for", f"{summary.unaccounted:,}")
        table.add_row("throughput", f"{summary.events_per_s:,.0f} events/s over {summary.seconds}s")
        table.add_row("end-to-end latency p50 / p99",
                      f"{summary.latency_p50_ms} ms / {summary.latency_p99_ms} ms")
        _print_table(table)
    raise typer.Exit(0 if summary.ok else 1)


@app.command(cls=_Command)
def bench(
    events: Annotated[int, typer.Option(help="Events for the throughput stages.", min=1)] = 400_000,
    latency_rate: Annotated[
        float, typer.Option(help="Produce rate for the latency stage.", min=1)
    ] = 10_000,
    latency_seconds: Annotated[
        float, typer.Option(help="Duration of the latency stage.", min=1)
    ] = 15,
    output: Annotated[
        Path | None, typer.Option(help="Also write the JSON results to this file.")
    ] = None,
    history: Annotated[
        int,
        typer.Option(
            help="Then load N readings of history with SQL and measure again on it: consume "
            "rate against the empty table's, dashboard queries, rollups, bytes per reading.",
            min=0,
        ),
    ] = 0,
    history_span_hours: Annotated[
        float | None,
        typer.Option(
            help="Spread the history over H hours (default: the design rate, 10,000 readings/s).",
            min=0,
        ),
    ] = None,
    soak: Annotated[
        float | None,
        typer.Option(
            help="Instead: produce at --soak-rate for S seconds with the consumer and the "
            "embedded broker's log rotation running; per window, the broker's memory and "
            "the delay percentiles. Use a state folder no `up` is using.",
            min=1,
        ),
    ] = None,
    soak_rate: Annotated[float, typer.Option(help="Produce rate of --soak.", min=1)] = 10_000,
    window: Annotated[float, typer.Option(help="Window of --soak, seconds.", min=1)] = 15,
) -> None:
    """Measure producer, consume-to-PostgreSQL, end-to-end latency and consumer RSS (JSON).

    With --history N, also how all of it holds up once the database holds N readings.
    With --soak S, only the long run at the design rate (see `heartbeat_platform.soak`).
    """
    if soak is not None:
        from heartbeat_platform.soak import dumps, run_soak

        results = run_soak(
            _settings(), soak, rate=soak_rate, window_s=window,
            log=lambda message: err.print(f"[dim]soak: {message}[/dim]"),
        )
        text = dumps(results)
        if output:
            output.write_text(text + "\n")
        print(text)
        return
    from heartbeat_platform.bench import HistoryPlanError, run_bench, write_json

    try:
        results = run_bench(
            _settings(), events=events, latency_rate=latency_rate,
            latency_seconds=latency_seconds, history=history,
            history_span_hours=history_span_hours,
            log=lambda message: err.print(f"[dim]bench: {message}[/dim]"),
        )
    except HistoryPlanError as exc:
        err.print(f"[red]bench:[/red] {exc}")
        raise typer.Exit(2) from None
    print(write_json(results, output))


@app.command(cls=_Command)
def up(
    port: Annotated[int, typer.Option(help="Port of the Dagster UI on 127.0.0.1.")] = 3000,
    demo: Annotated[
        bool, typer.Option("--demo", help="Also start the producer at a modest rate.")
    ] = False,
) -> None:
    """Run the platform: services, schema, topic, Dagster webserver and daemon (Ctrl-C stops)."""
    from heartbeat_platform.launcher import run_up

    code = run_up(_settings(), port=port, demo=demo)
    # Everything is stopped and said: skip the interpreter's teardown of Dagster's modules,
    # which does nothing useful and kept the shell waiting 3-5 s after the final line
    # (measured under load).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- alerts: what a person does with episodes (storage/alert_operations.py) ---------------

alerts_app = typer.Typer(
    cls=_Group,
    help="Episodes and their notifications: list, acknowledge, resolve, follow, and "
    "per-customer alert bounds. A refused operation exits 1 with one line saying why.",
    no_args_is_help=True,
)
override_app = typer.Typer(
    cls=_Group,
    help="Per-customer alert bounds (an athlete resting at 38 bpm); every change is kept.",
    no_args_is_help=True,
)
alerts_app.add_typer(override_app, name="override")
app.add_typer(alerts_app, name="alerts")


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

    settings = _settings()
    endpoints = (
        readiness.running(settings) if read_only else readiness.ready(settings, topic=False)
    )
    database_url = endpoints.database_url
    with connect(database_url, autocommit=True) as conn:
        try:
            yield conn
        except AlertOperationError as exc:
            _error(str(exc))
            raise typer.Exit(1) from None


def _at(moment: datetime | None) -> str:
    from heartbeat_platform.storage.alert_operations import format_time

    return "" if moment is None else format_time(moment)


@alerts_app.command("list", cls=_Command)
def alerts_list(
    open_only: Annotated[
        bool, typer.Option("--open", help="Only open episodes (pending and firing).")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most N episodes, newest first.", min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
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
    _print_table(table)


@alerts_app.command("ack", cls=_Command)
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


@alerts_app.command("resolve", cls=_Command)
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


@alerts_app.command("tail", cls=_Command)
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
        if _logs.format is LogFormat.json:
            log.info("%s", started)
        else:
            err.print(f"[dim]{escape(started)}[/dim]")
        with _stop_on_signals(lambda: stopping.append(True)):
            for e in follower.follow(lambda: bool(stopping)):
                typer.echo(
                    json.dumps(e.as_dict()) if as_json else
                    f"{format_time(e.queued_at)}  episode {e.episode_id:<6}  "
                    f"{e.customer_id:<15}  {e.kind:<12}  {e.state:<9}  {e.severity}"
                )


@override_app.command("set", cls=_Command)
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


@override_app.command("clear", cls=_Command)
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


@override_app.command("list", cls=_Command)
def override_list(
    history: Annotated[
        str | None,
        typer.Option(metavar="CUSTOMER", help="Every change of this customer's bounds instead."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
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
    _print_table(table)
