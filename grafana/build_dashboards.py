"""Build the Grafana dashboard JSON in `grafana/dashboards/` from this file.

The dashboards are declared with Grafana's own dashboards-as-code SDK, grafana-foundation-sdk
(the build for Grafana 10.4). This file lays the panels out; the SQL each panel runs is a named
constant of `heartbeat_platform/dashboard_queries.py`, and the PromQL is written from the metric
names of `heartbeat_platform/metrics.py`. The committed JSON is this script's output, and
`tests/integration/test_grafana_dashboards.py` fails when the two drift apart. After editing
(here or in either module), run `python grafana/build_dashboards.py` and commit the JSON too.

Target: Grafana 10.4 (dashboard schemaVersion 39), the PostgreSQL datasource provisioned in
`grafana/provisioning/datasources/heartbeat.yaml` (uid below), connected as the SELECT-only
role `heartbeat_grafana_reader` (sql/003_grafana_reader.sql). The collapsed row "Pipeline
metrics (Prometheus)" reads the Prometheus datasource provisioned in the same file, which
scrapes the consumer and producer runs' /metrics (heartbeat_platform/metrics.py);
`tests/integration/test_prometheus_panels.py` checks its PromQL against a real endpoint.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal, Self

from grafana_foundation_sdk.builders import bargauge, piechart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    QueryVariable,
    Row,
    ThresholdsConfig,
    TimePicker,
)
from grafana_foundation_sdk.builders.dashboard import FieldColor as Color
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DynamicConfigValue,
    FieldColorModeId,
    GridPos,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableHide,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.piechart import (
    PieChartLabels,
    PieChartLegendValues,
    PieChartType,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

from heartbeat_platform import dashboard_queries as q
from heartbeat_platform.metrics import (
    CONSUMER_BATCH_WRITE_SECONDS,
    CONSUMER_DATABASE_UNAVAILABLE,
    CONSUMER_DEAD_LETTERS,
    CONSUMER_END_TO_END_SECONDS,
    CONSUMER_KAFKA_ERRORS,
    CONSUMER_LAG_MESSAGES,
    CONSUMER_MESSAGES,
    CONSUMER_ROWS,
    PRODUCER_MESSAGES,
    PRODUCER_RECREATED,
    Metric,
)

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="grafana-postgresql-datasource", uid="heartbeat-postgres")
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="heartbeat-prometheus")
ANOMALY_COLORS = {"BRADYCARDIA": "blue", "TACHYCARDIA": "red", "INVALID": "orange"}
# Alert episodes (sql/009): one column per kind, in the queries' order, colored alike everywhere.
EPISODE_COLORS = {"TACHYCARDIA": "red", "BRADYCARDIA": "blue", "SENSOR_FAULT": "orange",
                  "NO_SIGNAL": "purple"}
assert tuple(EPISODE_COLORS) == q.EPISODE_KINDS, "a color for each kind, in the queries' order"
SCHEMA_VERSION = 39  # Grafana 10.4's dashboard schema

NOT_ROLLED_UP_TEXT = (
    " When the rollups are more than a minute behind, older minutes are not read (their "
    f"raw readings would have to be scanned): the series \"{q.NOT_ROLLED_UP_SERIES}\" (right "
    "axis) counts them until the rollups reach them."
)


def _not_rolled_up_axis(panel: timeseries.Panel) -> timeseries.Panel:
    """The series of q.FLEET_NOT_ROLLED_UP and the like as bars on a right axis of its own."""
    return panel.override_by_name(q.NOT_ROLLED_UP_SERIES, [
        DynamicConfigValue(id_val="unit", value="short"),
        DynamicConfigValue(id_val="custom.drawStyle", value=common.GraphDrawStyle.BARS),
        DynamicConfigValue(id_val="custom.axisPlacement", value=common.AxisPlacement.RIGHT),
        DynamicConfigValue(id_val="custom.axisLabel", value="minutes not rolled up"),
        DynamicConfigValue(id_val="color", value=Color().mode(FieldColorModeId.FIXED)
                           .fixed_color("orange").build()),
    ])


# -- the PostgreSQL query ------------------------------------------------------------------------
# The SDK ships query types for the core datasources but none for grafana-postgresql-datasource;
# this is its documented extension point ("Defining a custom query type"): a Dataquery variant
# and a builder for it, usable with every panel builder's `with_target`.

class SqlQuery(cogvariants.Dataquery):
    """A raw-SQL target of Grafana's PostgreSQL datasource, as its code editor saves it."""

    def __init__(self, raw_sql: str, fmt: str = "table", ref_id: str = "A",
                 datasource: DataSourceRef | None = None) -> None:
        self.raw_sql = raw_sql
        self.format = fmt
        self.ref_id = ref_id
        self.datasource = datasource

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": self.datasource,
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        datasource = data.get("datasource")
        return cls(data["rawSql"], data.get("format", "table"), data.get("refId", "A"),
                   DataSourceRef.from_json(datasource) if datasource else None)


class Sql(cogbuilder.Builder[SqlQuery]):
    """`Sql(q.FLEET_AVERAGE_BPM).time_series().ref_id("B")`: a query of dashboard_queries."""

    def __init__(self, sql: str) -> None:
        self._internal = SqlQuery(sql, datasource=DATASOURCE)

    def build(self) -> SqlQuery:
        return self._internal

    def format(self, fmt: Literal["table", "time_series"]) -> Self:
        self._internal.format = fmt
        return self

    def time_series(self) -> Self:
        return self.format("time_series")

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self


# -- shared panel settings -----------------------------------------------------------------------

def _grid(x: int, y: int, w: int, h: int) -> GridPos:
    return GridPos(x=x, y=y, w=w, h=h)


def _single_color(color: str) -> ThresholdsConfig:
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(color=color)])


def _last_not_null(values: bool) -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().values(values).calcs(["lastNotNull"]).fields("")


def _stat(title: str, grid: GridPos, description: str, sql: str,
          color: str, unit: str = "short") -> stat.Panel:
    """One number (or one per column), colored by a single threshold color."""
    return (
        stat.Panel().title(title).description(description).grid_pos(grid)
        .datasource(DATASOURCE).with_target(Sql(sql))
        .unit(unit)
        .color_scheme(Color().mode(FieldColorModeId.THRESHOLDS))
        .thresholds(_single_color(color))
        .reduce_options(_last_not_null(values=False))
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .text_mode(common.BigValueTextMode.AUTO)
    )


def _timeseries(title: str, grid: GridPos, description: str, unit: str,
                axis_label: str = "", datasource: DataSourceRef = DATASOURCE) -> timeseries.Panel:
    """Lines in the classic palette, a list legend below, a shared (multi) tooltip."""
    return (
        timeseries.Panel().title(title).description(description).grid_pos(grid)
        .datasource(datasource)
        .unit(unit)
        .color_scheme(Color().mode(FieldColorModeId.PALETTE_CLASSIC))
        .draw_style(common.GraphDrawStyle.LINE)
        .line_width(2)
        .fill_opacity(10)
        .point_size(4)
        .show_points(common.VisibilityMode.AUTO)
        .span_nulls(False)
        .axis_label(axis_label)
        .legend(cb.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM).show_legend(True))
        .tooltip(cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                 .sort(common.SortOrder.NONE))
    )


def _table(title: str, grid: GridPos, description: str, sql: str) -> table.Panel:
    """Small rows, no footer; the anomaly type column colored like everywhere else."""
    return (
        table.Panel().title(title).description(description).grid_pos(grid)
        .datasource(DATASOURCE).with_target(Sql(sql))
        .show_header(True)
        .cell_height(common.TableCellHeight.SM)
        .footer(cb.TableFooterOptions().show(False).reducer([]))
        .override_by_name("type", [
            DynamicConfigValue(id_val="mappings", value=[ValueMap(options={
                name: ValueMappingResult(color=color, index=i)
                for i, (name, color) in enumerate(ANOMALY_COLORS.items())
            })]),
            DynamicConfigValue(id_val="custom.cellOptions",
                               value=common.TableColoredBackgroundCellOptions()),
        ])
    )


# -- the rows of the monitoring dashboard -------------------------------------------------------

def pipeline_health(y: int) -> list[stat.Panel]:
    """One stat per number the original design's Pipeline Health row showed, and how far the
    rollups are behind.

    The first six read vw_pipeline_summary: totals the writer keeps in each batch's
    transaction (sql/011), exact whatever the rollups' state.
    """
    totals = ("since the platform started (reading_totals, which the consumer adds to in each "
              "batch's transaction: exact however far behind the rollups are)")
    health = [
        ("Valid readings", q.VALID_READINGS, f"NORMAL readings stored {totals}.", "green", 4),
        ("Anomalies", q.ANOMALIES,
         f"BRADYCARDIA, TACHYCARDIA and INVALID readings stored {totals}.", "orange", 3),
        ("Anomalies (last 5 min)", q.ANOMALIES_LAST_5_MIN,
         "Anomalies detected in the last five minutes (heartbeat_anomalies by detected_at).",
         "red", 3),
        ("Active customers (5 min)", q.ACTIVE_CUSTOMERS_5_MIN,
         "Customers with a valid reading taken in the last five minutes (the customers table "
         "plus the readings newer than the newest rolled-up minute, at most this minute and "
         "the one before; a customer seen only in minutes not rolled up yet counts once the "
         "rollups reach them).", "blue", 4),
        ("Dead letters", q.DEAD_LETTERS,
         "Messages that were not readings at all, in the raw retention window (see "
         "heartbeat_dead_letters.reason).", "purple", 3),
    ]
    panels, x = [], 0
    for title, sql, text, color, width in health:
        panels.append(_stat(title, _grid(x, y, width, 4),
                            f"{text} Reads vw_pipeline_summary.", sql, color))
        x += width
    panels.append(_stat(
        "Latest reading", _grid(x, y, 4, 4),
        "Event time of the newest valid reading (reading_totals, kept by the consumer in "
        "each batch's transaction). Reads vw_pipeline_summary.",
        q.LATEST_READING, "text", unit="dateTimeFromNow",
    ))
    panels.append(
        _stat(
            "Minutes not rolled up yet", _grid(x + 4, y, 3, 4),
            "Minutes with readings that neither the rollups nor the tail the panels read "
            "(this minute and the one before) hold yet: the rollups are behind (a stopped "
            "Dagster daemon, or consume without maintain). 0 in normal operation; while it is "
            "not, the fleet series and the breakdown leave those minutes out instead of "
            "scanning their raw readings (the totals still count them). Reads the pending "
            "marks (rollup_pending).",
            q.MINUTES_NOT_ROLLED_UP, "green",
        )
        .thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([
            Threshold(color="green"), Threshold(value=1, color="orange"),
        ]))
    )
    return panels


def fleet(y: int) -> list[cogbuilder.Builder]:
    """Fleet series from the per-minute rollup: buckets are a minute or more."""
    bpm = (
        _timeseries(
            "Fleet Average BPM", _grid(0, y, 16, 8),
            "Average heart rate of all valid readings per time bucket of at least a minute (by "
            "event time): sums of fleet_minute_stats, plus the consumer's counts per minute "
            "(fleet_minute_live) for the minutes after its newest one." + NOT_ROLLED_UP_TEXT,
            "suffix: bpm",
        )
        .with_target(Sql(q.FLEET_AVERAGE_BPM).time_series().ref_id("A"))
        .with_target(Sql(q.FLEET_NOT_ROLLED_UP).time_series().ref_id("B"))
    )
    bpm = _not_rolled_up_axis(bpm)
    pie = (
        piechart.Panel().title("Anomaly Type breakdown").grid_pos(_grid(16, y, 8, 8))
        .description("Anomalous readings by type, taken in the dashboard's time range (whole "
                     "minutes): counts of fleet_minute_stats, plus the consumer's counts per "
                     "minute after its newest one (a reading stored twice counts once). When the "
                     "rollups are more than a minute behind, the minutes in between are not "
                     "counted: see Minutes not rolled up yet.")
        .datasource(DATASOURCE)
        .with_target(Sql(q.ANOMALY_TYPE_BREAKDOWN))
        .unit("short")
        .color_scheme(Color().mode(FieldColorModeId.PALETTE_CLASSIC))
        .reduce_options(_last_not_null(values=True))
        .pie_type(PieChartType.DONUT)
        .display_labels([PieChartLabels.NAME, PieChartLabels.PERCENT])
        .legend(piechart.PieChartLegendOptions()
                .display_mode(common.LegendDisplayMode.TABLE)
                .placement(common.LegendPlacement.RIGHT).show_legend(True)
                .values([PieChartLegendValues.VALUE, PieChartLegendValues.PERCENT]))
        .tooltip(cb.VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE)
                 .sort(common.SortOrder.NONE))
        .orientation(common.VizOrientation.AUTO)
    )
    return [bpm, pie]


def streaming(y: int) -> list[timeseries.Panel]:
    throughput = (
        _timeseries(
            "Throughput", _grid(0, y, 12, 8),
            "Ranges up to an hour: messages consumed per second, summed over consumers, from "
            "increases of each consumer's cumulative stats_messages_consumed snapshots in "
            "pipeline_metrics (a counter that restarts at a new consumer process is handled "
            "like a Prometheus counter reset); consumers write about ten a second, too many "
            "to read for longer ranges. Longer ranges: readings stored per second by event "
            "time, per bucket of at least a minute, from fleet_minute_stats plus the "
            "consumer's counts per minute after its newest one." + NOT_ROLLED_UP_TEXT,
            "suffix: msg/s",
        )
        .with_target(Sql(q.THROUGHPUT_CONSUMED).time_series().ref_id("A"))
        .with_target(Sql(q.THROUGHPUT_STORED).time_series().ref_id("B"))
        .with_target(Sql(q.THROUGHPUT_NOT_ROLLED_UP).time_series().ref_id("C"))
    )
    throughput = _not_rolled_up_axis(throughput)
    lag = (
        _timeseries(
            "Consumer lag", _grid(12, y, 12, 8),
            "Left axis: messages behind the log end per partition, from the Dagster "
            "pipeline_health_snapshot (health_consumer_lag rows in pipeline_metrics). Right "
            "axis: delay from a reading's event time to its landing in PostgreSQL, sampled at "
            "most 300 times over the range: the worst of the newest 30 anomalous readings "
            "stored before each sample point (heartbeat_anomalies through its detected_at "
            "index; anomalies land in the same batches as the valid readings, whose own "
            "table has no index on arrival time). It needs no snapshot and grows when the "
            "consumer falls behind.",
            "short", axis_label="messages behind",
        )
        .with_target(Sql(q.CONSUMER_LAG_SNAPSHOTS).time_series().ref_id("A"))
        .with_target(Sql(q.CONSUMER_LAG_DELAY).time_series().ref_id("B"))
        .override_by_regexp("/ delay$/", [
            DynamicConfigValue(id_val="unit", value="s"),
            DynamicConfigValue(id_val="custom.axisPlacement", value=common.AxisPlacement.RIGHT),
            DynamicConfigValue(id_val="custom.axisLabel", value="event to database"),
            DynamicConfigValue(id_val="custom.lineStyle",
                               value=cb.LineStyle().fill("dash").dash([10, 10]).build()),
        ])
    )
    return [throughput, lag]


def recent_anomalies(y: int) -> list[table.Panel]:
    return [_table(
        "Recent Anomalies", _grid(0, y, 24, 9),
        "The newest 100 anomalies of the last 24 hours. Reads vw_recent_anomalies.",
        q.RECENT_ANOMALIES,
    )]


# -- alert episodes ------------------------------------------------------------------------------
# One stretch of trouble per customer and kind (sql/009_alert_episodes.sql), kept by the consumer
# in each batch's transaction. The panels read firing episodes through the partial index on
# state = 'firing', and resolved ones through the partial index on resolved_at: never the whole
# history of episodes (the queries say how).

def _kind_colors(panel):
    for kind, color in EPISODE_COLORS.items():
        panel = panel.override_by_name(kind, [DynamicConfigValue(
            id_val="color", value=Color().mode(FieldColorModeId.FIXED).fixed_color(color).build(),
        )])
    return panel


def alert_episodes(y: int) -> list[cogbuilder.Builder]:
    open_now = (
        _stat(
            "Open episodes by kind", _grid(0, y, 12, 5),
            "Episodes firing now, by kind: TACHYCARDIA and BRADYCARDIA (critical), "
            "SENSOR_FAULT (INVALID readings) and NO_SIGNAL (warning). An episode opens at its "
            "kind's first reading (HEARTBEAT_ALERT_MIN_READINGS) and resolves after "
            "HEARTBEAT_ALERT_RESOLVE_AFTER_NORMAL NORMAL readings in a row. Reads alert_episodes "
            "through its partial index on firing episodes.",
            q.OPEN_EPISODES_BY_KIND, "green",
        )
        # green while nothing is open, red from the first open episode of a kind
        .thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([
            Threshold(color="green"), Threshold(value=1, color="red"),
        ]))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
    )
    opened = _kind_colors(
        bargauge.Panel().title("Episodes opened in the time range")
        .grid_pos(_grid(12, y, 12, 5))
        .description("Episodes that started firing in the dashboard's time range, by kind, "
                     "whether still open or resolved since. Reads the firing episodes and "
                     "those resolved since the range began (partial indexes on state = "
                     "'firing' and on resolved_at), never older ones.")
        .datasource(DATASOURCE)
        .with_target(Sql(q.EPISODES_OPENED_IN_RANGE))
        .unit("short")
        .min(0)
        .color_scheme(Color().mode(FieldColorModeId.THRESHOLDS))
        .thresholds(_single_color("blue"))
        .reduce_options(_last_not_null(values=False))
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .value_mode(common.BarGaugeValueMode.COLOR)
        .name_placement(common.BarGaugeNamePlacement.AUTO)
        .show_unfilled(True)
        .sizing(common.BarGaugeSizing.AUTO)
    )
    table_panel = (
        _table(
            "Open episodes", _grid(0, y + 5, 24, 9),
            "Firing episodes, newest first (at most 200): the customer, kind and severity, "
            "when it opened, its readings so far and the worst heart rate among them (0, -1 "
            "or above 300 for a sensor fault), the newest reading, who acknowledged it "
            "(heartbeat-platform alerts ack) and when it was escalated (firing "
            "unacknowledged for HEARTBEAT_ESCALATE_AFTER_S). Reads alert_episodes through its "
            "partial index on firing episodes.",
            q.OPEN_EPISODES,
        )
        .override_by_name("kind", [
            DynamicConfigValue(id_val="mappings", value=[ValueMap(options={
                kind: ValueMappingResult(color=color, index=i)
                for i, (kind, color) in enumerate(EPISODE_COLORS.items())
            })]),
            DynamicConfigValue(id_val="custom.cellOptions",
                               value=common.TableColoredBackgroundCellOptions()),
        ])
        .override_by_name("severity", [
            DynamicConfigValue(id_val="mappings", value=[ValueMap(options={
                "critical": ValueMappingResult(color="red", index=0),
                "warning": ValueMappingResult(color="orange", index=1),
            })]),
            DynamicConfigValue(id_val="custom.cellOptions",
                               value=common.TableColorTextCellOptions()),
        ])
    )
    return [open_now, opened, table_panel]


def customer_drilldown(y: int) -> list[cogbuilder.Builder]:
    # An expanded row: its panels follow it at the top level of the dashboard.
    row = Row("Customer $customer").collapsed(False).grid_pos(_grid(0, y, 24, 1))
    bpm = (
        _timeseries(
            "BPM of $customer", _grid(0, y + 1, 16, 8),
            "The selected customer's valid readings as a line: every reading for ranges up to "
            "6 hours (heartbeat_records by its primary key), hourly averages for longer ones "
            "(customer_hourly_bpm_stats, plus the readings newer than its newest hour). "
            "Anomalies as points by type (heartbeat_anomalies by its customer index).",
            "suffix: bpm",
        )
        .with_target(Sql(q.CUSTOMER_BPM).time_series().ref_id("A"))
        .with_target(Sql(q.CUSTOMER_ANOMALY_POINTS).time_series().ref_id("B"))
        .override_by_regexp("/^(BRADYCARDIA|TACHYCARDIA|INVALID)$/", [
            DynamicConfigValue(id_val="custom.drawStyle", value=common.GraphDrawStyle.POINTS),
            DynamicConfigValue(id_val="custom.pointSize", value=10),
        ])
    )
    for name, color in ANOMALY_COLORS.items():
        bpm = bpm.override_by_name(name, [DynamicConfigValue(
            id_val="color", value=Color().mode(FieldColorModeId.FIXED).fixed_color(color).build(),
        )])
    summary = (
        _stat(
            "$customer in the time range", _grid(16, y + 1, 8, 8),
            "Readings and anomalies of the selected customer in the dashboard's time range: "
            "for ranges up to 6 hours the raw tables through their customer indexes, for "
            "longer ones customer_hourly_bpm_stats (whole hours) plus the raw readings newer "
            "than its newest hour. A reading stored twice counts once.",
            q.CUSTOMER_SUMMARY, "blue",
        )
        .orientation(common.VizOrientation.HORIZONTAL)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
    )
    anomalies = _table(
        "Anomalies of $customer (last 24 h)", _grid(0, y + 9, 24, 7),
        "The selected customer's newest 50 anomalies. Reads vw_recent_anomalies.",
        q.CUSTOMER_ANOMALIES,
    )
    return [row, bpm, summary, anomalies]


# -- the Prometheus row ---------------------------------------------------------------------------
# Every run of the consumer or producer serves its own /metrics (one Prometheus target each, in
# compose dagster-code:9400..9404); the queries sum or take the maximum over them. Counters
# restart at 0 with each new run: rate() and increase() treat that as a counter reset.
# $__rate_interval: at least four scrape intervals (the datasource's timeInterval, 5 s), so a
# rate always has samples to work with. Metric names and labels come from
# heartbeat_platform.metrics, where the collectors register them.

def _promql(expr: str, legend: str, ref_id: str = "A") -> prom.Dataquery:
    """A range query in the code editor, one series per label set, named by `legend`."""
    return (
        prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).range()
        .editor_mode(QueryEditorMode.CODE).format(PromQueryFormat.TIME_SERIES)
        .datasource(PROMETHEUS)
    )


def _rate(selector: str) -> str:
    return f"rate({selector}[$__rate_interval])"


def _quantile(q: float, histogram: Metric) -> str:
    """The q-quantile of a histogram over every run, from its buckets' rates."""
    return f"histogram_quantile({q}, sum by (le) ({_rate(histogram.sample)}))"


def _by(metric: Metric) -> str:
    """`by (label)`: one series per value of the metric's label."""
    return f"by ({metric.label})"


def _legend(prefix: str, metric: Metric, suffix: str = "") -> str:
    """A legend naming each series by the metric's label: `prefix{{label}}suffix`."""
    return prefix + "{{" + str(metric.label) + "}}" + suffix


def _prometheus_timeseries(title: str, grid: GridPos, description: str,
                           unit: str, axis_label: str = "") -> timeseries.Panel:
    return _timeseries(title, grid, description, unit, axis_label, datasource=PROMETHEUS)


def pipeline_metrics(y: int) -> Row:
    """A collapsed row: its panels live inside it and query Prometheus only when opened.
    (Grafana keeps panels inside a row only while it is collapsed; the top-level panels stay
    all SQL, which heartbeat_platform.grafana_queries, the tests and the benchmark run.)"""
    lag = (
        _prometheus_timeseries(
            "Consumer lag per partition", _grid(0, y + 1, 12, 8),
            "Messages behind the log end per partition, as the consumer that holds the "
            "partition sees it: log end minus the progress stored in PostgreSQL "
            f"({CONSUMER_LAG_MESSAGES.sample}). Live at the scrape interval, unlike the "
            "Dagster snapshot in the Consumer lag panel above.",
            "short", axis_label="messages behind",
        )
        .with_target(_promql(f"max {_by(CONSUMER_LAG_MESSAGES)} ({CONSUMER_LAG_MESSAGES.sample})",
                             _legend("partition ", CONSUMER_LAG_MESSAGES)))
    )
    throughput = (
        _prometheus_timeseries(
            "Messages and rows per second", _grid(12, y + 1, 12, 8),
            f"Messages committed to PostgreSQL per second ({CONSUMER_MESSAGES.sample}) "
            f"and rows written per second by table ({CONSUMER_ROWS.sample}; "
            "pipeline_metrics rows are the alert rows), summed over consumers.",
            "suffix: /s",
        )
        .with_target(_promql(f"sum({_rate(CONSUMER_MESSAGES.sample)})",
                             "messages consumed", "A"))
        .with_target(_promql(f"sum {_by(CONSUMER_ROWS)} ({_rate(CONSUMER_ROWS.sample)})",
                             _legend("", CONSUMER_ROWS, " rows"), "B"))
    )
    write_time = (
        _prometheus_timeseries(
            "Batch write time", _grid(0, y + 9, 8, 8),
            "Time to write and commit one batch in PostgreSQL, median and 99th percentile over "
            f"all consumers ({CONSUMER_BATCH_WRITE_SECONDS.name} histogram).",
            "s",
        )
        .with_target(_promql(_quantile(0.5, CONSUMER_BATCH_WRITE_SECONDS), "p50", "A"))
        .with_target(_promql(_quantile(0.99, CONSUMER_BATCH_WRITE_SECONDS), "p99", "B"))
    )
    delay = (
        _prometheus_timeseries(
            "End-to-end delay", _grid(8, y + 9, 8, 8),
            "From a reading's timestamp to its committed row, for one reading in 64 "
            f"({CONSUMER_END_TO_END_SECONDS.name} histogram): 99th percentile and median. "
            "Includes the producer's clock skew.",
            "s",
        )
        .with_target(_promql(_quantile(0.99, CONSUMER_END_TO_END_SECONDS), "p99", "A"))
        .with_target(_promql(_quantile(0.5, CONSUMER_END_TO_END_SECONDS), "p50", "B"))
    )
    dead_letters = (
        _prometheus_timeseries(
            "Dead letters by reason", _grid(16, y + 9, 8, 8),
            "Dead letters per minute by reason class: invalid (not a reading), out_of_window "
            "(older than the raw retention or too far in the future), oversized (over "
            "HEARTBEAT_MAX_MESSAGE_BYTES), refused (by a database constraint) "
            f"({CONSUMER_DEAD_LETTERS.sample}). The reasons themselves are in "
            "heartbeat_dead_letters.reason.",
            "suffix: /min",
        )
        .with_target(_promql(
            f"60 * sum {_by(CONSUMER_DEAD_LETTERS)} ({_rate(CONSUMER_DEAD_LETTERS.sample)})",
            _legend("", CONSUMER_DEAD_LETTERS)))
    )
    retries = (
        _prometheus_timeseries(
            "Database and broker retries", _grid(0, y + 17, 12, 8),
            "Left axis: consumers waiting for PostgreSQL to come back "
            f"({CONSUMER_DATABASE_UNAVAILABLE.sample}, 1 per waiting consumer); they retry and "
            "lose nothing. Right axis, per minute: errors the consumers' Kafka clients "
            f"reported ({CONSUMER_KAFKA_ERRORS.sample}; the client retries them) and "
            "producer clients re-created after a fatal error or a broker that lost their "
            f"producer id ({PRODUCER_RECREATED.sample}).",
            "short", axis_label="consumers waiting",
        )
        .with_target(_promql(f"sum({CONSUMER_DATABASE_UNAVAILABLE.sample})",
                             "waiting for PostgreSQL", "A"))
        .with_target(_promql(f"60 * sum({_rate(CONSUMER_KAFKA_ERRORS.sample)})",
                             "Kafka client errors/min", "B"))
        .with_target(_promql(f"60 * sum({_rate(PRODUCER_RECREATED.sample)})",
                             "producer re-created/min", "C"))
        .override_by_regexp("/^(Kafka client errors|producer re-created)/", [
            DynamicConfigValue(id_val="custom.axisPlacement", value=common.AxisPlacement.RIGHT),
            DynamicConfigValue(id_val="custom.axisLabel", value="per minute"),
        ])
    )
    producer = (
        _prometheus_timeseries(
            "Producer deliveries", _grid(12, y + 17, 12, 8),
            "Messages per second by delivery outcome, summed over producers "
            f"({PRODUCER_MESSAGES.sample}): delivered (acknowledged by the broker), "
            "failed (certainly not in the topic) and uncertain (no acknowledgement, but "
            "possibly in the topic).",
            "suffix: msg/s",
        )
        .with_target(_promql(
            f"sum {_by(PRODUCER_MESSAGES)} ("
            + _rate(PRODUCER_MESSAGES.sample
                    + f'{{{PRODUCER_MESSAGES.label}=~"delivered|failed|uncertain"}}')
            + ")",
            _legend("", PRODUCER_MESSAGES)))
    )
    for outcome, color in (("delivered", "green"), ("failed", "red"), ("uncertain", "orange")):
        producer = producer.override_by_name(outcome, [DynamicConfigValue(
            id_val="color", value=Color().mode(FieldColorModeId.FIXED).fixed_color(color).build(),
        )])
    row = Row("Pipeline metrics (Prometheus)").grid_pos(_grid(0, y, 24, 1))
    for panel in (lag, throughput, write_time, delay, dead_letters, retries, producer):
        row = row.with_panel(panel)  # which collapses the row
    return row


def customer_variable() -> QueryVariable:
    return (
        QueryVariable("customer").label("Customer")
        .description("Every customer seen, the one with the most recent anomaly first. Reads "
                     "the customers table (one row per customer: the consumer adds it with its "
                     "first valid reading, the fleet-minute rollup keeps it current) once per "
                     "dashboard load.")
        .datasource(DATASOURCE)
        .query(q.CUSTOMER_VARIABLE)
        .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(VariableSort.DISABLED)
        .multi(False)
        .include_all(False)
        .options([])
        .regex("")
        .hide(VariableHide.DONT_HIDE)
    )


def heartbeat_monitoring() -> Dashboard:
    builder = (
        Dashboard("Customer Heartbeat Monitoring")
        .uid("heartbeat-monitoring")
        .description("Live heart-rate readings, anomalies and pipeline health of "
                     "heartbeat_platform.")
        .tags(["heartbeat", "kafka", "postgresql"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("5s")
        .time("now-15m", "now")
        .timepicker(TimePicker().refresh_intervals(["5s", "10s", "30s", "1m", "5m", "15m"]))
        .timezone("browser")
        .fiscal_year_start_month(0)
        .live_now(False)
        .version(1)
        .links([])
        .annotations([])
        .with_variable(customer_variable())
    )
    for panel in [*pipeline_health(0), *fleet(4), *streaming(12), *recent_anomalies(20),
                  *alert_episodes(29)]:
        builder = builder.with_panel(panel)
    row, *drilldown = customer_drilldown(43)
    builder = builder.with_row(row)
    for panel in drilldown:
        builder = builder.with_panel(panel)
    return builder.with_row(pipeline_metrics(59))


DASHBOARDS = {"heartbeat-monitoring.json": heartbeat_monitoring}


def number_panels(panels: list) -> None:
    """Panel ids 1, 2, 3, ... in layout order: each top-level panel and row as the dashboard
    lists them, a collapsed row's panels right after it. No id is written by hand; the alert
    rules' panelId links (grafana/provisioning/alerting/) name their panel's title beside the
    id, and tests/integration/test_grafana_alerting.py checks the two agree."""
    ids = itertools.count(1)
    for panel in panels:
        panel.id_val = next(ids)
        for inner in getattr(panel, "panels", None) or []:
            inner.id_val = next(ids)


def to_dict(builder: Dashboard) -> dict:
    """The SDK's model as plain JSON data, with what the SDK cannot express added."""
    model = builder.build()
    # The SDK's model defaults to schemaVersion 36 and has no setter for it; we write
    # Grafana 10.4's format, so say so (Grafana would otherwise run its 36 -> 39 migrations).
    model.schema_version = SCHEMA_VERSION
    number_panels(model.panels or [])
    data = json.loads(json.dumps(model, cls=JSONEncoder))
    # The SDK's VariableModel has no `definition`: the query text Grafana's variable list and
    # SQL variable editor show. Grafana saves it equal to the query for SQL datasources.
    for variable in data["templating"]["list"]:
        if variable["type"] == "query" and isinstance(variable.get("query"), str):
            variable["definition"] = variable["query"]
    return data


def render(build) -> str:
    return json.dumps(to_dict(build()), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for name, build in DASHBOARDS.items():
        (DASHBOARDS_DIR / name).write_text(render(build))
        print(f"wrote {DASHBOARDS_DIR / name}")


if __name__ == "__main__":
    main()
