"""Grafana's alert rules (grafana/provisioning/alerting/heartbeat-rules.yaml) evaluated the
way Grafana's alerting engine does, without a Grafana binary: the SQL query (A), macros
expanded by heartbeat_platform.grafana_queries, then the file's reduce (B) and threshold (C)
expressions. Used by the rule tests and by the dashboard tests' pipeline-filled database."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import yaml

from heartbeat_platform.grafana_queries import QueryContext, expand

PROVISIONING = Path(__file__).resolve().parents[2] / "grafana" / "provisioning"
ALERTING = PROVISIONING / "alerting"
EXPRESSIONS = "__expr__"  # Grafana's datasource uid for server-side expressions
REDUCERS = {"last": lambda v: v[-1], "max": max, "min": min, "sum": sum,
            "mean": lambda v: sum(v) / len(v), "count": len}


def alert_rules() -> list[dict]:
    config = yaml.safe_load((ALERTING / "heartbeat-rules.yaml").read_text())
    return [rule for group in config["groups"] for rule in group["rules"]]


def alert_rule(uid: str) -> dict:
    (rule,) = [r for r in alert_rules() if r["uid"] == uid]
    return rule


def numeric(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def evaluate(conn: psycopg.Connection, rule: dict, now: datetime) -> tuple[float, bool]:
    """(the value the condition compares, whether the rule fires), as Grafana computes them:
    the SQL's numeric column, one series per row (a table without a time column is a set of
    numbers to Grafana's alerting), reduced by B, compared by C."""
    queries = {q["refId"]: q for q in rule["data"]}
    values: dict[str, list[float]] = {}
    for ref_id, query in queries.items():
        model = query["model"]
        if query["datasourceUid"] != EXPRESSIONS:
            window = query["relativeTimeRange"]
            ctx = QueryContext(now - timedelta(seconds=window["from"]),
                               now - timedelta(seconds=window["to"]))
            cursor = conn.execute(expand(model["rawSql"], ctx))
            rows = cursor.fetchall()
            assert [c.name for c in cursor.description] and rows, ref_id
            assert all(len(row) == 1 and numeric(row[0]) for row in rows), rows
            values[ref_id] = [float(row[0]) for row in rows]
        elif model["type"] == "reduce":
            series = values[model["expression"]]
            if model.get("settings", {}).get("mode") == "dropNN":
                series = [v for v in series if not math.isnan(v)]
            values[ref_id] = [REDUCERS[model["reducer"]](series)]
        else:
            (condition,) = model["conditions"]
            kind, params = condition["evaluator"]["type"], condition["evaluator"]["params"]
            values[ref_id] = [float(_compare(kind, params, v))
                              for v in values[model["expression"]]]
    (value,) = values[rule["data"][-2]["refId"]]  # what the condition looked at
    (firing,) = values[rule["condition"]]
    return value, bool(firing)


def _compare(kind: str, params: list[float], value: float) -> bool:
    """Grafana's threshold functions (pkg/expr/threshold.go)."""
    compare: dict[str, Callable[[float], bool]] = {
        "gt": lambda v: v > params[0],
        "lt": lambda v: v < params[0],
        "within_range": lambda v: params[0] < v < params[1],
        "outside_range": lambda v: v < params[0] or v > params[1],
    }
    return compare[kind](value)


def threshold(uid: str) -> float:
    (condition,) = alert_rule(uid)["data"][-1]["model"]["conditions"]
    assert condition["evaluator"]["type"] == "gt"
    return condition["evaluator"]["params"][0]
