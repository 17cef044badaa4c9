"""Build the Grafana dashboard JSON in `grafana/dashboards/` from this file.

The SQL lives here as readable text; the committed JSON is this script's output, and
`tests/integration/test_grafana_dashboards.py` fails when the two drift apart. After editing,
run `python grafana/build_dashboards.py` and commit both.

Target: Grafana 10.4 (dashboard schemaVersion 39), the PostgreSQL datasource provisioned in
`grafana/provisioning/datasources/heartbeat.yaml` (uid below), connected as the SELECT-only
role `heartbeat_grafana_reader` (sql/003_grafana_reader.sql).
"""

from __future__ import annotations

import json
from pathlib import Path

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "heartbeat-postgres"}
CUSTOMER = "${customer:sqlstring}"  # quoted and escaped by Grafana: never raw SQL
ANOMALY_COLORS = {"BRADYCARDIA": "blue", "TACHYCARDIA": "red", "INVALID": "orange"}


def _sql(text: str) -> str:
    """Strip the indentation the query has in this file."""
    lines = text.strip("\n").splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines)


def _target(sql: str, fmt: str, ref: str = "A") -> dict:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "format": fmt,
        "rawQuery": True,
        "rawSql": _sql(sql),
        "refId": ref,
    }


def _panel(pid: int, kind: str, title: str, grid: tuple[int, int, int, int], description: str,
           targets: list[dict], defaults: dict | None = None, overrides: list | None = None,
           options: dict | None = None) -> dict:
    x, y, w, h = grid
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": defaults or {}, "overrides": overrides or []},
        "options": options or {},
    }


def _stat(pid: int, title: str, grid: tuple[int, int, int, int], description: str, sql: str,
          unit: str = "short", color: str = "green") -> dict:
    return _panel(
        pid, "stat", title, grid, description, [_target(sql, "table")],
        defaults={
            "unit": unit,
            "color": {"mode": "thresholds"},
            "thresholds": {"mode": "absolute", "steps": [{"color": color, "value": None}]},
        },
        options={
            "reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": ""},
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
    )


def _timeseries_defaults(unit: str, axis_label: str = "") -> dict:
    return {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "lineWidth": 2,
            "fillOpacity": 10,
            "pointSize": 4,
            "showPoints": "auto",
            "spanNulls": False,
            "axisLabel": axis_label,
        },
    }


_TIMESERIES_OPTIONS = {
    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
    "tooltip": {"mode": "multi", "sort": "none"},
}


def _anomaly_type_mapping() -> list[dict]:
    return [
        {
            "type": "value",
            "options": {
                name: {"color": color, "index": i}
                for i, (name, color) in enumerate(ANOMALY_COLORS.items())
            },
        }
    ]


def _colored_type_column(name: str) -> dict:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [
            {"id": "mappings", "value": _anomaly_type_mapping()},
            {"id": "custom.cellOptions", "value": {"type": "color-background"}},
        ],
    }


def pipeline_health(y: int) -> list[dict]:
    """One stat per number the original design's Pipeline Health row showed."""
    health = [
        ("Valid readings", "total_records", "NORMAL readings stored in heartbeat_records.",
         "green"),
        ("Anomalies", "total_anomalies",
         "BRADYCARDIA, TACHYCARDIA and INVALID readings in heartbeat_anomalies.", "orange"),
        ("Anomalies (last 5 min)", "anomalies_last_5m",
         "Anomalies detected in the last five minutes.", "red"),
        ("Active customers (5 min)", "active_customers_5m",
         "Customers with a valid reading taken in the last five minutes.", "blue"),
        ("Dead letters", "dead_letter_count",
         "Messages that were not readings at all (see heartbeat_dead_letters.reason).", "purple"),
    ]
    panels = [
        _stat(1 + i, title, (4 * i, y, 4, 4), f"{text} Reads vw_pipeline_summary.",
              f'SELECT {column} AS "{title}" FROM vw_pipeline_summary', color=color)
        for i, (title, column, text, color) in enumerate(health)
    ]
    panels.append(
        _stat(
            6, "Latest reading", (20, y, 4, 4),
            "Event time of the newest valid reading. Reads vw_pipeline_summary.",
            """
            SELECT extract(epoch FROM latest_reading_at) * 1000 AS "Latest reading"
            FROM vw_pipeline_summary
            """,
            unit="dateTimeFromNow", color="text",
        )
    )
    return panels


def fleet(y: int) -> list[dict]:
    bpm = _panel(
        7, "timeseries", "Fleet Average BPM", (0, y, 16, 8),
        "Average heart rate of all valid readings per time bucket (by event time).",
        [_target(
            """
            SELECT $__timeGroupAlias(event_timestamp, $__interval),
                   round(avg(heart_rate), 1) AS "fleet average bpm"
            FROM heartbeat_records
            WHERE $__timeFilter(event_timestamp)
            GROUP BY 1
            ORDER BY 1
            """,
            "time_series",
        )],
        defaults=_timeseries_defaults("suffix: bpm"),
        options=_TIMESERIES_OPTIONS,
    )
    pie = _panel(
        8, "piechart", "Anomaly Type breakdown", (16, y, 8, 8),
        "Anomalies by type, readings taken in the dashboard's time range.",
        [_target(
            """
            SELECT anomaly_type AS "type", count(*) AS "anomalies"
            FROM heartbeat_anomalies
            WHERE $__timeFilter(event_timestamp)
            GROUP BY 1
            ORDER BY 1
            """,
            "table",
        )],
        defaults={"unit": "short", "color": {"mode": "palette-classic"}},
        options={
            "reduceOptions": {"values": True, "calcs": ["lastNotNull"], "fields": ""},
            "pieType": "donut",
            "displayLabels": ["name", "percent"],
            "legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                       "values": ["value", "percent"]},
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )
    return [bpm, pie]


def streaming(y: int) -> list[dict]:
    throughput = _panel(
        9, "timeseries", "Throughput", (0, y, 12, 8),
        "Messages consumed per second, summed over consumers: increases of each consumer's "
        "cumulative stats_messages_consumed snapshots in pipeline_metrics (a counter that "
        "restarts at a new consumer process is handled like a Prometheus counter reset).",
        [_target(
            """
            SELECT $__timeGroupAlias(recorded_at, $__interval),
                   sum(CASE WHEN delta >= 0 THEN delta ELSE metric_value END)
                       / ($__interval_ms / 1000.0) AS "consumed msg/s"
            FROM (
                SELECT recorded_at, metric_value,
                       metric_value - lag(metric_value) OVER (
                           PARTITION BY labels->>'consumer' ORDER BY recorded_at, id
                       ) AS delta
                FROM pipeline_metrics
                WHERE metric_name = 'stats_messages_consumed'
                  AND $__timeFilter(recorded_at)
            ) AS snapshots
            WHERE delta IS NOT NULL
            GROUP BY 1
            ORDER BY 1
            """,
            "time_series",
        )],
        defaults=_timeseries_defaults("suffix: msg/s"),
        options=_TIMESERIES_OPTIONS,
    )
    lag = _panel(
        10, "timeseries", "Consumer lag", (12, y, 12, 8),
        "Left axis: messages behind the log end per partition, from the Dagster "
        "pipeline_health_snapshot (health_consumer_lag rows in pipeline_metrics). Right axis: "
        "worst delay from a reading's event time to its landing in PostgreSQL per partition, "
        "from heartbeat_records; it needs no snapshot and grows when the consumer falls behind.",
        [
            _target(
                """
                SELECT recorded_at AS "time",
                       coalesce('partition ' || (labels->>'partition'), 'all partitions')
                           || ' lag' AS metric,
                       metric_value AS value
                FROM pipeline_metrics
                WHERE metric_name = 'health_consumer_lag' AND $__timeFilter(recorded_at)
                ORDER BY 1, 2
                """,
                "time_series", "A",
            ),
            _target(
                """
                SELECT $__timeGroupAlias(event_timestamp, $__interval),
                       'partition ' || kafka_partition || ' delay' AS metric,
                       max(extract(epoch FROM ingested_at - event_timestamp)) AS value
                FROM heartbeat_records
                WHERE $__timeFilter(event_timestamp)
                GROUP BY 1, 2
                ORDER BY 1, 2
                """,
                "time_series", "B",
            ),
        ],
        defaults=_timeseries_defaults("short", "messages behind"),
        overrides=[{
            "matcher": {"id": "byRegexp", "options": "/ delay$/"},
            "properties": [
                {"id": "unit", "value": "s"},
                {"id": "custom.axisPlacement", "value": "right"},
                {"id": "custom.axisLabel", "value": "event to database"},
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            ],
        }],
        options=_TIMESERIES_OPTIONS,
    )
    return [throughput, lag]


def recent_anomalies(y: int) -> list[dict]:
    return [_panel(
        11, "table", "Recent Anomalies", (0, y, 24, 9),
        "The newest 100 anomalies of the last 24 hours. Reads vw_recent_anomalies.",
        [_target(
            """
            SELECT detected_at AS "detected", event_timestamp AS "reading time",
                   customer_id AS "customer", heart_rate AS "bpm", anomaly_type AS "type",
                   severity, kafka_partition AS "partition", kafka_offset AS "offset"
            FROM vw_recent_anomalies
            ORDER BY detected_at DESC, id DESC
            LIMIT 100
            """,
            "table",
        )],
        overrides=[_colored_type_column("type")],
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    )]


def customer_drilldown(y: int) -> list[dict]:
    row = {
        "id": 12,
        "type": "row",
        "title": "Customer $customer",
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }
    anomaly_points = {
        "matcher": {"id": "byRegexp", "options": "/^(BRADYCARDIA|TACHYCARDIA|INVALID)$/"},
        "properties": [
            {"id": "custom.drawStyle", "value": "points"},
            {"id": "custom.pointSize", "value": 10},
        ],
    }
    per_type_color = [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}],
        }
        for name, color in ANOMALY_COLORS.items()
    ]
    bpm = _panel(
        13, "timeseries", "BPM of $customer", (0, y + 1, 16, 8),
        "Every reading of the selected customer: valid readings as a line, anomalies as "
        "points by type.",
        [
            _target(
                f"""
                SELECT event_timestamp AS "time", heart_rate AS "bpm"
                FROM heartbeat_records
                WHERE customer_id = {CUSTOMER} AND $__timeFilter(event_timestamp)
                ORDER BY 1
                """,
                "time_series", "A",
            ),
            _target(
                f"""
                SELECT event_timestamp AS "time", anomaly_type AS metric, heart_rate AS value
                FROM heartbeat_anomalies
                WHERE customer_id = {CUSTOMER} AND $__timeFilter(event_timestamp)
                ORDER BY 1, 2
                """,
                "time_series", "B",
            ),
        ],
        defaults=_timeseries_defaults("suffix: bpm"),
        overrides=[anomaly_points, *per_type_color],
        options=_TIMESERIES_OPTIONS,
    )
    summary = _panel(
        14, "stat", "$customer in the time range", (16, y + 1, 8, 8),
        "Readings and anomalies of the selected customer in the dashboard's time range "
        "(base tables through their customer indexes: the all-time vw_customer_bpm_summary "
        "would aggregate every customer on each refresh).",
        [_target(
            f"""
            SELECT count(*) AS "readings",
                   round(avg(heart_rate), 1) AS "avg bpm",
                   min(heart_rate) AS "min bpm",
                   max(heart_rate) AS "max bpm",
                   (SELECT count(*) FROM heartbeat_anomalies
                     WHERE customer_id = {CUSTOMER} AND $__timeFilter(event_timestamp)
                   ) AS "anomalies"
            FROM heartbeat_records
            WHERE customer_id = {CUSTOMER} AND $__timeFilter(event_timestamp)
            """,
            "table",
        )],
        defaults={
            "unit": "short",
            "color": {"mode": "thresholds"},
            "thresholds": {"mode": "absolute", "steps": [{"color": "blue", "value": None}]},
        },
        options={
            "reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": ""},
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "horizontal",
            "textMode": "value_and_name",
        },
    )
    anomalies = _panel(
        15, "table", "Anomalies of $customer (last 24 h)", (0, y + 9, 24, 7),
        "The selected customer's newest 50 anomalies. Reads vw_recent_anomalies.",
        [_target(
            f"""
            SELECT detected_at AS "detected", event_timestamp AS "reading time",
                   heart_rate AS "bpm", anomaly_type AS "type", severity
            FROM vw_recent_anomalies
            WHERE customer_id = {CUSTOMER}
            ORDER BY detected_at DESC, id DESC
            LIMIT 50
            """,
            "table",
        )],
        overrides=[_colored_type_column("type")],
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    )
    return [row, bpm, summary, anomalies]


def customer_variable() -> dict:
    query = _sql(
        """
        SELECT customer_id
        FROM vw_customer_bpm_summary
        ORDER BY anomaly_count DESC, customer_id
        """
    )
    return {
        "name": "customer",
        "label": "Customer",
        "description": "Customers with the most anomalies first. Reads vw_customer_bpm_summary "
                       "once per dashboard load.",
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 1,
        "sort": 0,
        "multi": False,
        "includeAll": False,
        "current": {},
        "options": [],
        "regex": "",
        "hide": 0,
        "skipUrlSync": False,
    }


def heartbeat_monitoring() -> dict:
    panels = [
        *pipeline_health(0),
        *fleet(4),
        *streaming(12),
        *recent_anomalies(20),
        *customer_drilldown(29),
    ]
    return {
        "uid": "heartbeat-monitoring",
        "title": "Customer Heartbeat Monitoring",
        "description": "Live heart-rate readings, anomalies and pipeline health of "
                       "heartbeat_platform.",
        "tags": ["heartbeat", "kafka", "postgresql"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m", "15m"]},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "schemaVersion": 39,
        "version": 1,
        "links": [],
        "annotations": {"list": []},
        "templating": {"list": [customer_variable()]},
        "panels": panels,
    }


DASHBOARDS = {"heartbeat-monitoring.json": heartbeat_monitoring}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for name, build in DASHBOARDS.items():
        (DASHBOARDS_DIR / name).write_text(render(build))
        print(f"wrote {DASHBOARDS_DIR / name}")


if __name__ == "__main__":
    main()
