"""The pipeline's commands: produce, consume, and demo (both at once, with a summary)."""

from __future__ import annotations

import json
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

import typer
from prometheus_client import CollectorRegistry
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from heartbeat_platform import metrics, readiness
from heartbeat_platform.cli.base import (
    JSON,
    LOCAL_BROKER,
    Command,
    console,
    err,
    print_table,
    settings_or_exit,
    stop_on_signals,
)
from heartbeat_platform.config import Settings
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.producer import HeartbeatProducer

app = typer.Typer()

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


@app.command(cls=Command)
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
    settings = settings_or_exit()
    endpoints = readiness.ready(settings)
    producer = HeartbeatProducer(
        readiness.producer_config(settings, endpoints), metrics=_metrics(settings, metrics_port)
    )
    with (
        producer,
        stop_on_signals(producer.request_stop),
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


@app.command(cls=Command)
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
    settings = settings_or_exit()
    endpoints = readiness.ready(settings)
    overrides = {"batch_size": batch_size} if batch_size else {}
    consumer = HeartbeatConsumer(
        readiness.consumer_config(settings, endpoints, **overrides),
        metrics=_metrics(settings, metrics_port),
    )
    with stop_on_signals(consumer.request_stop):
        report = consumer.run(stop_when_idle=stop_when_idle)
    if as_json:
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        console.print_json(json.dumps({**report.as_dict(), "peak_rss_mb": round(peak_rss_mb, 1)}))
        return
    stats = report.stats
    console.print(
        f"consumed {stats.messages_consumed:,} in {report.seconds:.1f}s: "
        f"records {stats.records_written:,}, anomalies {stats.anomalies:,}, "
        f"dead letters {stats.dead_letters:,}, duplicates dropped {stats.duplicates_dropped:,}"
    )


@app.command(cls=Command)
def demo(
    events: Annotated[int, typer.Option(help="How many events to send.", min=1)] = 20_000,
    rate: Annotated[
        float, typer.Option(help="Events per second; 0 = as fast as possible.", min=0)
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for a repeatable stream.")] = None,
    as_json: Annotated[bool, JSON] = False,
    metrics_port: Annotated[int | None, _METRICS_PORT] = None,
    broker: Annotated[Literal["tansu", "kafka"] | None, LOCAL_BROKER] = None,
) -> None:
    """Produce N events, consume them, print a summary; exit 1 if any is unaccounted for."""
    from heartbeat_platform.demo import run_demo

    settings = settings_or_exit(heartbeat_local_broker=broker)
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
        print_table(table)
    raise typer.Exit(0 if summary.ok else 1)
