"""The code location loads, and its shape (lineage, checks, automation) is what the docs say."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from heartbeat_platform.orchestration.assets import dashboard
from heartbeat_platform.orchestration.definitions import defs
from heartbeat_platform.launcher import write_instance_config

REPO_ROOT = Path(__file__).resolve().parents[2]

ASSET_GRAPH = {
    "heartbeat_events": [],
    "heartbeat_records": ["heartbeat_events"],
    "heartbeat_anomalies": ["heartbeat_events"],
    "heartbeat_dead_letters": ["heartbeat_events"],
    "pipeline_metrics": ["heartbeat_events"],
    "vw_customer_bpm_summary": [
        "customer_daily_bpm_stats", "customer_hourly_bpm_stats", "heartbeat_anomalies",
        "heartbeat_records",
    ],
    "vw_recent_anomalies": ["heartbeat_anomalies"],
    "vw_pipeline_summary": [
        "customers", "fleet_minute_stats", "heartbeat_anomalies", "heartbeat_dead_letters",
        "heartbeat_records",
    ],
    "fleet_minute_stats": ["heartbeat_anomalies", "heartbeat_records"],
    "customer_hourly_bpm_stats": ["heartbeat_anomalies", "heartbeat_records"],
    "customer_daily_bpm_stats": ["customer_hourly_bpm_stats"],
    "customers": ["fleet_minute_stats"],
    "raw_partitions": [
        "customer_daily_bpm_stats", "fleet_minute_stats", "heartbeat_anomalies",
        "heartbeat_dead_letters", "heartbeat_records", "pipeline_metrics",
    ],
    "pipeline_health_snapshot": [
        "heartbeat_anomalies", "heartbeat_dead_letters", "heartbeat_events", "heartbeat_records",
    ],
    "customer_heartbeat_monitoring": [
        "customer_hourly_bpm_stats", "customers", "fleet_minute_stats", "heartbeat_anomalies",
        "heartbeat_records", "pipeline_health_snapshot", "pipeline_metrics",
        "vw_pipeline_summary", "vw_recent_anomalies",
    ],
}

CHECKS = {  # (asset, check) -> blocking
    ("heartbeat_anomalies", "anomaly_type_matches_heart_rate"): True,
    ("heartbeat_anomalies", "required_values_present"): True,
    ("heartbeat_records", "required_values_present"): True,
    ("heartbeat_anomalies", "no_duplicate_readings"): False,
    ("heartbeat_anomalies", "anomaly_share_within_bounds"): False,
    ("heartbeat_records", "latest_reading_is_fresh"): False,
}


def test_definitions_load_and_validate() -> None:
    dg.Definitions.validate_loadable(defs)
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    assert {"heartbeat_consumer", "heartbeat_producer", "pipeline_health", "data_quality",
            "storage_retention", "fleet_minute_rollup", "customer_hourly_rollup",
            "customer_daily_rollup"} <= jobs


def test_asset_graph_snapshot() -> None:
    """Lineage reads topic -> tables -> views and summaries -> dashboard; a change is deliberate."""
    graph = defs.resolve_asset_graph()
    actual = {
        key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys)
        for key in graph.get_all_asset_keys()
    }
    assert actual == {key: sorted(parents) for key, parents in ASSET_GRAPH.items()}


def test_checks_and_their_blocking() -> None:
    """Blocking checks are the ones a bad table must not pass on; data_quality runs them all."""
    graph = defs.resolve_asset_graph()
    actual = {
        (key.asset_key.to_user_string(), key.name): graph.get_check_spec(key).blocking
        for key in graph.asset_check_keys
    }
    assert actual == CHECKS
    quality_job = defs.resolve_job_def("data_quality")
    assert {k.name for k in quality_job.asset_layer.asset_graph.asset_check_keys} == {
        name for _, name in CHECKS
    }


def test_supervisor_and_schedules_run_by_default() -> None:
    """What runs without anyone clicking: supervisor, rollups, health, checks, retention."""
    sensors = {s.name: s.default_status for s in defs.sensors}
    assert sensors == {
        "heartbeat_consumer_supervisor": dg.DefaultSensorStatus.RUNNING,
        "rollup_sensor": dg.DefaultSensorStatus.RUNNING,
    }
    schedules = {s.name: (s.cron_schedule, s.default_status) for s in defs.schedules}
    assert schedules == {
        "pipeline_health_every_minute": ("* * * * *", dg.DefaultScheduleStatus.RUNNING),
        "data_quality_every_5_minutes": ("*/5 * * * *", dg.DefaultScheduleStatus.RUNNING),
        "storage_retention_hourly": ("7 * * * *", dg.DefaultScheduleStatus.RUNNING),
    }


def test_workspace_yaml_loads_these_definitions() -> None:
    (location,) = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())["load_from"]
    module = location["python_module"]
    assert getattr(importlib.import_module(module["module_name"]), module["attribute"]) is defs


@pytest.mark.parametrize("workers", [1, 3])
def test_instance_config_is_valid_and_limits_consumers(
    workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """instance.yaml as `up` writes it passes Dagster's schema; consumer limit = workers."""
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql+psycopg2://u@localhost/dagster")
    write_instance_config(tmp_path, workers)
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    assert config["telemetry"] == {"enabled": False}
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "heartbeat/role", "value": "consumer", "limit": workers} in limits
    dagster_instance_config(str(REPO_ROOT))  # the root dagster.yaml (`dagster dev`'s) too


def test_dashboard_asset_depends_on_what_its_panels_read() -> None:
    """The dashboard's lineage follows the SQL of its panels and variables (grafana/)."""
    panels = json.loads((REPO_ROOT / "grafana/dashboards/heartbeat-monitoring.json").read_text())
    queries = list(_queries(panels))
    read = {m for q in queries for m in re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+)", q)}
    assets = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    deps = {dep.asset_key.to_user_string() for dep in dashboard.deps}
    assert deps - {"pipeline_health_snapshot"} == read & assets
    assert ("pipeline_health_snapshot" in deps) == any("'health_" in q for q in queries)


def _queries(node: object):
    """Every SQL text of a Grafana dashboard: panel targets (rawSql) and variables (query)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("rawSql", "query") and isinstance(value, str):
                yield value
            else:
                yield from _queries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _queries(value)
