"""The code location loads, and its shape (lineage, checks, automation) is what the docs say."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from heartbeat_platform.definitions import defs
from heartbeat_platform.defs.resources import KafkaResource, PostgresResource
from heartbeat_platform.defs.serving.rollups import partitions_start
from heartbeat_platform.defs.serving.views import dashboard
from heartbeat_platform.domain.retention import RetentionPolicy
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
    "heartbeat_cold": ["heartbeat_anomalies", "heartbeat_records"],
    "pipeline_health_snapshot": [
        "heartbeat_anomalies", "heartbeat_dead_letters", "heartbeat_events", "heartbeat_records",
    ],
    "customer_heartbeat_monitoring": [
        "alert_episodes", "customer_hourly_bpm_stats", "customers", "fleet_minute_stats",
        "heartbeat_anomalies", "heartbeat_records", "pipeline_health_snapshot", "pipeline_metrics",
        "vw_pipeline_summary", "vw_recent_anomalies",
    ],
    "alert_episodes": ["heartbeat_anomalies"],
    "alert_episode_stats": ["alert_episodes"],
}

CHECKS = {  # (asset, check) -> blocking
    ("heartbeat_anomalies", "anomaly_type_matches_heart_rate"): True,
    ("heartbeat_anomalies", "required_values_present"): True,
    ("heartbeat_records", "required_values_present"): True,
    ("heartbeat_anomalies", "no_duplicate_readings"): False,
    ("heartbeat_anomalies", "anomaly_share_within_bounds"): False,
    ("heartbeat_records", "latest_reading_is_fresh"): False,
    ("alert_episodes", "episode_states_consistent"): True,
    ("alert_episodes", "transitions_in_outbox"): False,
    ("alert_episodes", "nothing_stuck_undelivered"): False,
}
ALERTING_CHECKS = {name for asset, name in CHECKS if asset == "alert_episodes"}


def test_definitions_load_and_validate() -> None:
    dg.Definitions.validate_loadable(defs)
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    assert {"heartbeat_consumer", "heartbeat_producer", "pipeline_health", "data_quality",
            "storage_retention", "fleet_minute_rollup", "customer_hourly_rollup",
            "customer_daily_rollup"} <= jobs


def _dg(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DAGSTER_HOME")}
    dg_cli = Path(sys.executable).with_name("dg")
    return subprocess.run(
        [str(dg_cli), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_dg_check_and_list_defs_work_in_the_repository_root() -> None:
    """`dg` finds the project through [tool.dg] and loads every definition of defs/."""
    check = _dg("check", "defs")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All definitions loaded successfully" in check.stdout
    listed = _dg("list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert {a["asset_key"] for a in found["assets"]} == set(ASSET_GRAPH)
    assert {j["name"] for j in found["jobs"]} >= {"heartbeat_consumer", "heartbeat_producer"}
    assert {r["name"] for r in found["resources"]} == {"postgres", "kafka"}


def test_an_installed_wheel_loads_the_same_definitions(tmp_path: Path) -> None:
    """The container image installs a wheel (no pyproject.toml beside it): the [tool.dg]
    table travels inside it, and the definitions load from the installed files."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("heartbeat_platform-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import json, heartbeat_platform.definitions as d; "
        "print(json.dumps([d.__file__, sorted(k.to_user_string() for k in "
        "d.defs.resolve_asset_graph().get_all_asset_keys())]))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(site)}, timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr
    module_file, assets = json.loads(loaded.stdout.splitlines()[-1])
    assert module_file.startswith(str(site))
    assert assets == sorted(ASSET_GRAPH)


def test_landing_tables_carry_freshness_policies() -> None:
    """Records, anomalies and alert rows go red when no run wrote them for 10 minutes
    (warn at 2); dead letters only come with bad input, so they have no policy."""
    graph = defs.resolve_asset_graph()
    windows = {}
    for key in ("heartbeat_records", "heartbeat_anomalies", "pipeline_metrics",
                "heartbeat_dead_letters"):
        policy = graph.get(dg.AssetKey(key)).freshness_policy
        windows[key] = policy and (
            policy.fail_window.to_timedelta(), policy.warn_window.to_timedelta()
        )
    fresh = (timedelta(minutes=10), timedelta(minutes=2))
    assert windows == {
        "heartbeat_records": fresh, "heartbeat_anomalies": fresh, "pipeline_metrics": fresh,
        "heartbeat_dead_letters": None,
    }


def test_resources_do_nothing_until_dagster_sets_them_up(tmp_path, monkeypatch) -> None:
    """Building or reading a resource starts no service and runs no migration: only
    Dagster's set-up step (a run, a sensor, dg.build_resources) does."""
    monkeypatch.setenv("HEARTBEAT_STATE_DIR", str(tmp_path / "state"))
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    postgres = PostgresResource()
    kafka = KafkaResource(topic="some-topic")
    with pytest.raises(dg.DagsterInvariantViolationError, match="outside Dagster's set-up"):
        _ = postgres.url
    with pytest.raises(dg.DagsterInvariantViolationError):
        kafka.producer_config()
    assert kafka.settings().kafka_topic == "some-topic"  # fields win over the settings
    assert not (tmp_path / "state").exists()


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
        name for asset, name in CHECKS if asset != "alert_episodes"
    }


def test_supervisor_and_schedules_run_by_default() -> None:
    """What runs without anyone clicking: supervisor, rollups, health, checks, retention
    (once at once on a fresh install, then hourly), the cold tier's nightly compaction."""
    sensors = {s.name: s.default_status for s in defs.sensors}
    assert sensors == {
        "heartbeat_consumer_supervisor": dg.DefaultSensorStatus.RUNNING,
        "rollup_sensor": dg.DefaultSensorStatus.RUNNING,
        "storage_retention_first_run": dg.DefaultSensorStatus.RUNNING,
    }
    schedules = {s.name: (s.cron_schedule, s.default_status) for s in defs.schedules}
    assert schedules == {
        "pipeline_health_every_minute": ("* * * * *", dg.DefaultScheduleStatus.RUNNING),
        "data_quality_every_5_minutes": ("*/5 * * * *", dg.DefaultScheduleStatus.RUNNING),
        "storage_retention_hourly": ("7 * * * *", dg.DefaultScheduleStatus.RUNNING),
        "cold_tier_daily": ("23 0 * * *", dg.DefaultScheduleStatus.RUNNING),
        "no_signal_every_minute": ("* * * * *", dg.DefaultScheduleStatus.RUNNING),
        "alert_stats_every_5_minutes": ("*/5 * * * *", dg.DefaultScheduleStatus.RUNNING),
    }


def test_alert_stats_job_runs_the_episode_checks_with_the_statistics() -> None:
    """Every five minutes the episodes table is checked and its statistics recorded; the
    blocking state check stops the statistics of a run whose state is broken."""
    job = defs.resolve_job_def("alert_stats")
    graph = job.asset_layer.asset_graph
    assert {k.name for k in graph.asset_check_keys} == ALERTING_CHECKS
    assert {k.to_user_string() for k in graph.executable_asset_keys} == {"alert_episode_stats"}
    assert defs.resolve_job_def("no_signal").asset_layer.asset_graph.executable_asset_keys == set()


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


def test_rollup_partitions_cover_only_the_days_raw_readings_are_kept() -> None:
    """A rollup partition is rebuilt from its raw rows: the partitions start at the oldest
    day HEARTBEAT_RAW_RETENTION_DAYS keeps (not a fixed date hundreds of days back, which
    the UI showed as thousands of "missing" partitions), and end with the current one."""
    now = datetime.now(UTC)
    oldest = now.date() - timedelta(days=7)  # the default retention
    assert partitions_start(RetentionPolicy(raw_retention_days=3), now) == str(
        now.date() - timedelta(days=3)
    )
    for name, per_day in (("fleet_minute_stats", 24), ("customer_hourly_bpm_stats", 24),
                          ("customer_daily_bpm_stats", 1)):
        keys = defs.resolve_assets_def(name).partitions_def.get_partition_keys()
        assert keys[0].startswith(str(oldest)), name
        assert (oldest - timedelta(days=1)).isoformat() not in " ".join(keys), name
        assert len(keys) <= 8 * per_day + 1, name  # the kept days, today, and the next one
