"""The SQL Grafana 10.4 sends to PostgreSQL for each query of the monitoring dashboard.

There is no Grafana binary to ask, so the tests and the benchmark do Grafana's part: pick
the queries out of the dashboard JSON, substitute the dashboard variables and
$__interval / $__interval_ms, then expand the PostgreSQL datasource's macros, in that
order (pkg/tsdb/grafana-postgresql-datasource/macros.go).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path

DASHBOARD = Path("dashboards") / "heartbeat-monitoring.json"
GRAFANA_MAX_DATA_POINTS = 1000  # a panel about 1000 px wide
GRAFANA_MIN_INTERVAL = timedelta(seconds=5)  # the datasource's timeInterval (provisioning)

_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")
_MACRO = re.compile(r"\$(\w+)\(([^)]*)\)")
_INTERVAL = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class QueryContext:
    """What Grafana knows when it runs a panel: time range, interval, variable values."""

    time_from: datetime
    time_to: datetime
    interval: timedelta = timedelta(seconds=1)
    variables: dict[str, str] = field(default_factory=dict)


def dashboard_file() -> Path:
    """The dashboard in a source checkout, or the copy packaged in the wheel."""
    checkout = Path(__file__).resolve().parents[1] / "grafana" / DASHBOARD
    if checkout.is_file():
        return checkout
    return Path(str(resources.files("heartbeat_platform"))) / "_grafana" / DASHBOARD


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(name, raw SQL) of every panel target ("Title/A") and query variable, in order."""
    queries = [
        (f"{panel['title']}/{target['refId']}", target["rawSql"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    queries += [
        (f"variable {variable['name']}", variable["query"])
        for variable in dashboard.get("templating", {}).get("list", [])
        if variable["type"] == "query"
    ]
    return queries


def format_interval(interval: timedelta) -> str:
    """Go's gtime.FormatInterval: the largest whole unit, truncated (90 s -> "1m")."""
    ms = interval // timedelta(milliseconds=1)
    for unit, size in (("y", 31_536_000_000), ("d", 86_400_000), ("h", 3_600_000),
                       ("m", 60_000), ("s", 1_000), ("ms", 1)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return "1ms"


def rfc3339(moment: datetime) -> str:
    """Go's time.RFC3339Nano in UTC: no trailing zeros in the fraction, a "Z" zone."""
    utc = moment.astimezone(UTC)
    fraction = f"{utc.microsecond:06d}".rstrip("0")
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def _seconds(text: str) -> str:
    match = _INTERVAL.fullmatch(text.strip().strip("'"))
    if not match:
        raise ValueError(f"error parsing interval {text}")
    seconds = Decimal(match.group(1)) * Decimal(str(_UNITS[match.group(2)]))
    return format(seconds.normalize(), "f")


def _variable(match: re.Match, variables: dict[str, str]) -> str:
    name = match.group(1) or match.group(3)
    if name not in variables:
        return match.group(0)  # Grafana's own $__ names, handled below
    value, fmt = variables[name], match.group(2)
    if fmt in (None, "raw"):
        return value  # a single-value variable goes in as it is
    if fmt == "sqlstring":
        return "'" + value.replace("'", "''") + "'"
    raise ValueError(f"variable format {fmt!r} is not handled here")


def expand(sql: str, ctx: QueryContext) -> str:
    """The SQL Grafana sends to PostgreSQL for `sql` in `ctx`."""
    sql = _VARIABLE.sub(lambda m: _variable(m, ctx.variables), sql)
    sql = sql.replace("$__interval_ms", str(ctx.interval // timedelta(milliseconds=1)))
    sql = sql.replace("$__interval", format_interval(ctx.interval))

    def macro(match: re.Match) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        if name == "__timeGroup" and sql[match.end():match.end() + 1] == ",":
            name = "__timeGroupAlias"  # Grafana's pre-5.3 compatibility rule
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{rfc3339(ctx.time_from)}' AND '{rfc3339(ctx.time_to)}'"
        if name == "__timeFrom":
            return f"'{rfc3339(ctx.time_from)}'"
        if name == "__timeTo":
            return f"'{rfc3339(ctx.time_to)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            if len(args) < 2:
                raise ValueError(f"macro {name} needs a time column and an interval")
            seconds = _seconds(args[1])  # a third argument (fill) is applied by Grafana
            group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        raise ValueError(f"unknown macro {name!r}")

    sql = _MACRO.sub(macro, sql)
    left = re.search(r"\$\{?\w+", sql)
    if left:
        raise ValueError(f"{left.group(0)} was not expanded")
    return sql


def grafana_interval(
    span: timedelta,
    max_data_points: int = GRAFANA_MAX_DATA_POINTS,
    minimum: timedelta = GRAFANA_MIN_INTERVAL,
) -> timedelta:
    """$__interval as Grafana computes it: range / data points, rounded to a nice step."""
    raw_ms = span / timedelta(milliseconds=1) / max_data_points
    rounded = next((to for below, to in _GRAFANA_ROUNDING if raw_ms < below), _GRAFANA_YEAR)
    return max(timedelta(milliseconds=rounded), minimum)


# Grafana's roundInterval (@grafana/data, rangeutil): below X ms -> Y ms.
_GRAFANA_ROUNDING = (
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1_500, 1_000),
    (3_500, 2_000), (7_500, 5_000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000),
    (45_000, 30_000), (90_000, 60_000), (210_000, 120_000), (450_000, 300_000),
    (750_000, 600_000), (1_050_000, 900_000), (1_500_000, 1_200_000),
    (2_700_000, 1_800_000), (5_400_000, 3_600_000), (9_000_000, 7_200_000),
    (16_200_000, 10_800_000), (32_400_000, 21_600_000), (86_400_000, 43_200_000),
    (604_800_000, 86_400_000), (1_814_400_000, 604_800_000), (3_628_800_000, 2_592_000_000),
)
_GRAFANA_YEAR = 31_536_000_000  # anything longer
