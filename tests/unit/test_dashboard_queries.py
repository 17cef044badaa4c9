"""The dashboard's SQL lives in heartbeat_platform.dashboard_queries, one constant a query:
every SQL target and query variable of the committed dashboard is one of them, and each of
them is used. What the queries return is tested against PostgreSQL by
tests/integration/test_grafana_dashboards.py and test_dashboard_rollup_lag.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

from heartbeat_platform import dashboard_queries
from heartbeat_platform.grafana_queries import panel_queries

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "heartbeat-monitoring.json"
SOURCE = Path(dashboard_queries.__file__)


def queries() -> dict[str, str]:
    """Name -> SQL of the module's queries (its fragments are not statements)."""
    return {name: value for name, value in vars(dashboard_queries).items()
            if name.isupper() and isinstance(value, str)
            and re.match(r"(SELECT|WITH)\b", value)}


def test_every_dashboard_query_is_a_named_constant() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = [sql for _, sql in panel_queries(dashboard)]
    named = queries()
    assert [sql for sql in used if sql not in named.values()] == []
    assert sorted(set(named.values())) == sorted(set(used)), "a query no panel uses"
    assert len(set(named.values())) == len(named), "two names for one query"


def test_each_query_says_what_its_panel_shows() -> None:
    """A comment line right above each query's assignment."""
    lines = SOURCE.read_text().splitlines()
    for name in queries():
        (at,) = [i for i, line in enumerate(lines) if line.startswith(f"{name} = ")]
        assert lines[at - 1].startswith("# "), name
