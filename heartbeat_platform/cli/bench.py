"""`bench`: the platform's speed and memory measured (and `--soak`, the long run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from heartbeat_platform.cli.base import LOCAL_BROKER, Command, err, settings_or_exit
from heartbeat_platform.domain.generator import DESIGN_RATE

app = typer.Typer()


@app.command(cls=Command)
def bench(
    events: Annotated[int, typer.Option(help="Events for the throughput stages.", min=1)] = 400_000,
    latency_rate: Annotated[
        float, typer.Option(help="Produce rate for the latency stage.", min=1)
    ] = DESIGN_RATE,
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
    dashboard_only: Annotated[
        bool,
        typer.Option(
            "--dashboard-only",
            help="With --history: only the dashboard in its three rollup states (idle, "
            "rollups behind, rollups current), no producer or consumer stages.",
        ),
    ] = False,
    cold: Annotated[
        bool,
        typer.Option(
            "--cold",
            help="With --history: only the cold tier on N readings ending HEARTBEAT_HOT_DAYS "
            "days ago: hot and cold bytes per reading, compaction rate, customer-day and "
            "-month reads, each compacted day held to its hot original.",
        ),
    ] = False,
    alerting_rounds: Annotated[
        int,
        typer.Option(
            help="Rounds of the consume stage with alerting off, at the defaults and with "
            "every delay off (the order rotated each round; medians); 0: skip it.",
            min=0,
        ),
    ] = 1,
    soak: Annotated[
        float | None,
        typer.Option(
            help="Instead: produce at --soak-rate for S seconds with the consumer and the "
            "embedded broker's log rotation running; per window, the broker's memory and "
            "the delay percentiles. Use a state folder no `up` is using.",
            min=1,
        ),
    ] = None,
    soak_rate: Annotated[float, typer.Option(help="Produce rate of --soak.", min=1)] = DESIGN_RATE,
    window: Annotated[float, typer.Option(help="Window of --soak, seconds.", min=1)] = 15,
    broker: Annotated[Literal["tansu", "kafka"] | None, LOCAL_BROKER] = None,
) -> None:
    """Measure producer, consume-to-PostgreSQL, end-to-end latency and consumer RSS (JSON).

    With --history N, also how all of it holds up once the database holds N readings
    (with --dashboard-only, only the dashboard's rollup states on N readings; with
    --cold, only the cold tier on N readings).
    With --soak S, only the long run at the design rate (see `heartbeat_platform.soak`).
    """
    settings = settings_or_exit(heartbeat_local_broker=broker)
    if soak is not None:
        from heartbeat_platform.soak import dumps, run_soak

        results = run_soak(
            settings, soak, rate=soak_rate, window_s=window,
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
            settings, events=events, latency_rate=latency_rate,
            latency_seconds=latency_seconds, history=history,
            history_span_hours=history_span_hours, dashboard_only=dashboard_only,
            alerting_rounds=alerting_rounds, cold=cold,
            log=lambda message: err.print(f"[dim]bench: {message}[/dim]"),
        )
    except HistoryPlanError as exc:
        err.print(f"[red]bench:[/red] {exc}")
        raise typer.Exit(2) from None
    print(write_json(results, output))
