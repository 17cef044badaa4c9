"""The committed Grafana dashboards, every panel run the way Grafana 10.4 would run it.

There is no Grafana binary here, so these tests do Grafana's part with
`heartbeat_platform.grafana_queries` (expand template variables and the PostgreSQL
datasource's macros; unit-tested below), run each panel's SQL as the SELECT-only role
Grafana logs in as, against a database filled by the real producer -> broker -> consumer
pipeline and then rolled up, and check that each panel gets the rows and columns its
visualisation needs, the same answer whether its readings are still raw or rolled up.
"""

from __future__ import annotations

import importlib.util
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from confluent_kafka import Producer

from heartbeat_platform import readiness
from heartbeat_platform.config import load_settings
from heartbeat_platform.grafana_queries import (
    QueryContext,
    dashboard_file,
    expand,
    format_interval,
    panel_queries,
)
from heartbeat_platform.storage.migrations import migrate, sql_dir
from heartbeat_platform.storage.rollups import refresh_pending
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.producer import HeartbeatProducer
from tests.support.grafana_rules import alert_rules, evaluate, numeric

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
READER = "heartbeat_grafana_reader"
ANOMALY_TYPES = {"BRADYCARDIA", "TACHYCARDIA", "INVALID"}
INTERVAL = timedelta(seconds=1)  # finer than the 5 s minimum: a few seconds of data, many buckets


# -- the expander itself ------------------------------------------------------------------------

CTX = QueryContext(
    time_from=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    time_to=datetime(2026, 1, 2, 3, 19, 5, 500_000, tzinfo=UTC),
    interval=timedelta(minutes=1),
    variables={"customer": "O'Brien"},
)


@pytest.mark.parametrize(
    ("sql", "expanded"),
    [
        ("WHERE $__timeFilter(ts)",
         "WHERE ts BETWEEN '2026-01-02T03:04:05Z' AND '2026-01-02T03:19:05.5Z'"),
        ("$__timeFrom() < $__timeTo()", "'2026-01-02T03:04:05Z' < '2026-01-02T03:19:05.5Z'"),
        ("SELECT $__timeGroupAlias(ts, $__interval)",
         'SELECT floor(extract(epoch from ts)/60)*60 AS "time"'),
        ("SELECT $__timeGroupAlias(ts, '500ms', 0)",
         'SELECT floor(extract(epoch from ts)/0.5)*0.5 AS "time"'),
        ("SELECT $__timeGroup(ts, 5m), v GROUP BY $__timeGroup(ts, 5m)",
         'SELECT floor(extract(epoch from ts)/300)*300 AS "time", v '
         "GROUP BY floor(extract(epoch from ts)/300)*300"),
        ("x / $__interval_ms", "x / 60000"),
        ("c = ${customer:sqlstring}", "c = 'O''Brien'"),
        ("c = '$customer' OR c = '${customer}'", "c = 'O'Brien' OR c = 'O'Brien'"),
    ],
)
def test_expand_matches_grafana(sql: str, expanded: str) -> None:
    """Each rule gives the text Grafana's PostgreSQL datasource would send."""
    assert expand(sql, CTX) == expanded


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("$__timeFiltre(ts)", "unknown macro"),
        ("c = $custmer", "$custmer was not expanded"),
        ("c = ${customer:percentencode}", "format"),
        ("$__timeGroup(ts)", "needs a time column"),
        ("$__timeGroup(ts, soon)", "error parsing interval"),
    ],
)
def test_expand_refuses_what_grafana_would_not_run(sql: str, error: str) -> None:
    """A typo must fail here, not show an empty panel in production."""
    with pytest.raises(ValueError, match=re.escape(error)):
        expand(sql, CTX)


@pytest.mark.parametrize(
    ("interval", "text"),
    [(timedelta(milliseconds=500), "500ms"), (timedelta(seconds=90), "1m"),
     (timedelta(hours=2), "2h"), (timedelta(days=8), "8d")],
)
def test_format_interval_truncates_like_go(interval: timedelta, text: str) -> None:
    assert format_interval(interval) == text


def test_time_filter_means_utc_in_any_session_time_zone(db: psycopg.Connection) -> None:
    """The RFC 3339 bounds carry their zone: a viewer's time zone cannot shift the range."""
    db.execute("SET TIME ZONE 'America/New_York'")
    inside = CTX.time_from + timedelta(minutes=1)
    sql = expand("SELECT count(*) FROM (VALUES (%s), (%s), (%s)) AS t(ts) "
                 "WHERE $__timeFilter(ts)", CTX)
    rows = db.execute(sql, (CTX.time_from, inside, CTX.time_to + timedelta(hours=1))).fetchone()
    assert rows == (2,)


# -- the dashboards as files --------------------------------------------------------------------

def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _panels(dashboard: dict) -> list[dict]:
    """Every panel that runs SQL: the top-level ones (rows only group them; the panels
    inside the collapsed Prometheus row query Prometheus, see test_prometheus_panels.py)."""
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _all_panels(dashboard: dict) -> list[dict]:
    """Every panel and row, the panels inside collapsed rows included."""
    return [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]


def _provisioned_datasource(kind: str = "grafana-postgresql-datasource") -> dict:
    config = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "heartbeat.yaml").read_text()
    )
    (datasource,) = [d for d in config["datasources"] if d["type"] == kind]
    return datasource


def test_committed_json_is_the_builders_output() -> None:
    """The JSON Grafana loads must be what grafana/build_dashboards.py makes of its SQL."""
    spec = importlib.util.spec_from_file_location("build_dashboards",
                                                  GRAFANA / "build_dashboards.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert sorted(builder.DASHBOARDS) == [p.name for p in DASHBOARD_FILES]
    for name, build in builder.DASHBOARDS.items():
        committed = (GRAFANA / "dashboards" / name).read_text()
        assert committed == builder.render(build), f"{name}: run grafana/build_dashboards.py"


def test_every_query_uses_the_provisioned_datasource() -> None:
    """A panel pointing at another uid shows "datasource not found" in Grafana. Top-level
    panels and the variable read PostgreSQL; panels inside collapsed rows, Prometheus."""
    postgres, prometheus = (
        {"type": d["type"], "uid": d["uid"]}
        for d in (_provisioned_datasource(), _provisioned_datasource("prometheus"))
    )
    seen = {"postgres": 0, "prometheus": 0}
    for path in DASHBOARD_FILES:
        dashboard = _load(path)
        nested = [p for row in dashboard["panels"] for p in row.get("panels", [])]
        for panels, want, kind in ((_panels(dashboard), postgres, "postgres"),
                                   (nested, prometheus, "prometheus")):
            for panel in panels:
                assert panel["datasource"] == want, panel["title"]
                for target in panel["targets"]:
                    assert target["datasource"] == want, (panel["title"], target["refId"])
                    seen[kind] += 1
        for variable in dashboard["templating"]["list"]:
            assert variable["datasource"] == postgres, variable["name"]
    assert all(seen.values()), seen


def test_monitoring_dashboard_has_the_designed_panels() -> None:
    """The original design's panels plus throughput, lag, alert episodes and the customer
    drill-down."""
    dashboard = _load(GRAFANA / "dashboards" / "heartbeat-monitoring.json")
    assert dashboard["uid"] == "heartbeat-monitoring"
    assert dashboard["title"] == "Customer Heartbeat Monitoring"
    assert dashboard["refresh"] == "5s"
    assert dashboard["time"] == {"from": "now-15m", "to": "now"}
    kinds = {p["title"]: p["type"] for p in dashboard["panels"]}
    assert kinds == {
        "Valid readings": "stat", "Anomalies": "stat", "Anomalies (last 5 min)": "stat",
        "Active customers (5 min)": "stat", "Dead letters": "stat", "Latest reading": "stat",
        "Minutes not rolled up yet": "stat",
        "Fleet Average BPM": "timeseries", "Anomaly Type breakdown": "piechart",
        "Throughput": "timeseries", "Consumer lag": "timeseries", "Recent Anomalies": "table",
        "Open episodes by kind": "stat", "Episodes opened in the time range": "bargauge",
        "Open episodes": "table",
        "Customer $customer": "row", "BPM of $customer": "timeseries",
        "$customer in the time range": "stat", "Anomalies of $customer (last 24 h)": "table",
        "Pipeline metrics (Prometheus)": "row",  # collapsed: its panels are inside it
    }
    ids = [p["id"] for p in _all_panels(dashboard)]
    assert ids == list(range(1, len(ids) + 1))  # numbered by the builder, in layout order
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "customer" and variable["type"] == "query"


def test_panels_do_not_overlap() -> None:
    """Overlapping gridPos rectangles are rearranged by Grafana into a different layout.
    A collapsed row keeps its panels' places below it for when it is opened."""
    for path in DASHBOARD_FILES:
        dashboard = _load(path)
        boxes = [(p["title"], p["gridPos"]) for p in _all_panels(dashboard)]
        for row in dashboard["panels"]:
            for panel in row.get("panels", []):
                assert panel["gridPos"]["y"] > row["gridPos"]["y"], panel["title"]
        for i, (title_a, a) in enumerate(boxes):
            assert a["x"] + a["w"] <= 24, title_a
            for title_b, b in boxes[i + 1:]:
                apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                         or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
                assert apart, (title_a, title_b)


def test_panel_queries_name_every_target_and_the_variable() -> None:
    """What the benchmark times: each panel target and query variable, in dashboard order."""
    assert dashboard_file() == GRAFANA / "dashboards" / "heartbeat-monitoring.json"
    dashboard = _load(dashboard_file())
    queries = panel_queries(dashboard)
    targets = [(p["title"], t) for p in _panels(dashboard) for t in p["targets"]]
    assert queries == [(f"{title}/{t['refId']}", t["rawSql"]) for title, t in targets] + [
        ("variable customer", dashboard["templating"]["list"][0]["query"])
    ]


# -- the panels against data --------------------------------------------------------------------

BAD_MESSAGES = [b"not json", b'{"customer_id": "CUST_00001"}', b"[1, 2, 3]"]
EPISODE_KINDS = ["TACHYCARDIA", "BRADYCARDIA", "SENSOR_FAULT", "NO_SIGNAL"]  # panel order
# Alert episodes the fixture adds (customers outside the pipeline's 20, so they never meet
# an episode the consumer opened): (customer, kind, state, opened, resolved, acknowledged by,
# escalated), times in seconds from the pipeline's start; None: none.
EPISODES = [
    ("CUST_90001", "TACHYCARDIA", "firing", 1, None, None, None),
    ("CUST_90002", "BRADYCARDIA", "firing", 2, None, "dr.jones", 3),
    ("CUST_90003", "SENSOR_FAULT", "firing", 3, None, None, None),
    ("CUST_90001", "BRADYCARDIA", "resolved", 1, 2, None, None),       # opened in the range
    ("CUST_90004", "TACHYCARDIA", "resolved", -7200, 2, None, None),   # opened before it
    ("CUST_90005", "NO_SIGNAL", "pending", None, None, None, None),    # never fired
]
# The queries that read the rollups; each gets the same answer from the raw tail alone.
ROLLED_UP = ["Valid readings/A", "Anomalies/A", "Latest reading/A", "Fleet Average BPM/A",
             "Anomaly Type breakdown/A", "Throughput/B", "Active customers (5 min)/A"]


@dataclass
class Result:
    columns: list[str]
    rows: list[tuple]

    def column(self, name: str) -> list:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


@dataclass
class FilledDatabase:
    url: str
    consumer_name: str
    live: QueryContext  # the minutes around the pipeline's run, as the dashboard opens
    week: QueryContext  # the last seven days: rollups, not raw readings
    unrolled: dict[tuple[str, str], Result]  # (span, ROLLED_UP query) before any rollup


def run_sql(conn: psycopg.Connection, sql: str, ctx: QueryContext) -> Result:
    cursor = conn.execute(expand(sql, ctx))
    return Result([c.name for c in cursor.description], cursor.fetchall())


@pytest.fixture(scope="module")
def filled(embedded_postgres, services, tmp_path_factory) -> FilledDatabase:
    """3,000 readings of 20 customers and a few dead letters through the real pipeline, then
    the rollups of every settled window; the ROLLED_UP queries are answered in between."""
    started = datetime.now(UTC)
    url = embedded_postgres.ensure_database(f"grafana_{uuid.uuid4().hex[:12]}")
    settings = load_settings(
        database_url=url,
        kafka_bootstrap_servers=services.bootstrap_servers,
        kafka_topic=f"grafana-{uuid.uuid4().hex[:8]}",
        heartbeat_state_dir=tmp_path_factory.mktemp("grafana-state"),
        heartbeat_customer_count=20,
        heartbeat_consume_batch_size=200,
        heartbeat_stats_every=100,
        heartbeat_alert_delay_s="0",  # every anomaly fires an episode at once
        _env_file=None,
    )
    prepared = readiness.prepare(settings)
    with HeartbeatProducer(readiness.producer_config(settings, prepared.endpoints)) as producer:
        report = producer.run(readiness.generator(settings, seed=5), events=3_000)
    assert report.delivered == 3_000
    raw = Producer({"bootstrap.servers": services.bootstrap_servers})
    for i, payload in enumerate(BAD_MESSAGES):
        raw.produce(settings.kafka_topic, value=payload, partition=i % 3)
    assert raw.flush(10) == 0
    config = readiness.consumer_config(settings, prepared.endpoints)
    result = HeartbeatConsumer(config).run(stop_when_idle=1.5)
    assert result.stats.messages_consumed == 3_000 + len(BAD_MESSAGES)
    finished = datetime.now(UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        add_episodes(conn, started)

    live = QueryContext(started - timedelta(minutes=1), finished + timedelta(minutes=1), INTERVAL)
    week = QueryContext(live.time_to - timedelta(days=7), live.time_to, timedelta(minutes=10))
    queries = dict(panel_queries(_load(dashboard_file())))
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM fleet_minute_stats").fetchone() == (0,)
        conn.execute(f"SET ROLE {READER}")
        unrolled = {(span, name): run_sql(conn, queries[name], ctx)
                    for span, ctx in (("live", live), ("week", week)) for name in ROLLED_UP}
        conn.execute("RESET ROLE")
        refresh_pending(conn, finished + timedelta(hours=2))  # every window has settled
    return FilledDatabase(url, config.name, live, week, unrolled)


def add_episodes(conn: psycopg.Connection, start: datetime) -> None:
    """EPISODES as rows of sql/009's alert_episodes, with plain INSERTs."""
    def at(seconds: int | None) -> datetime | None:
        return None if seconds is None else start + timedelta(seconds=seconds)

    for customer, kind, state, opened, resolved, acknowledged_by, escalated in EPISODES:
        first = at(opened) or start
        conn.execute(
            """
            INSERT INTO alert_episodes (customer_id, kind, state, severity, opened_at,
                resolved_at, first_heart_rate, worst_heart_rate, readings, first_reading_at,
                last_reading_at, last_evaluated_at, acknowledged_at, acknowledged_by,
                escalated_at)
            VALUES (%s, %s, %s, %s, %s, %s, 0, 0, 2, %s, %s, %s, %s, %s, %s)
            """,
            (customer, kind, state,
             "critical" if kind in ("TACHYCARDIA", "BRADYCARDIA") else "warning",
             at(opened), at(resolved), first, first, first,
             first if acknowledged_by else None, acknowledged_by, at(escalated)),
        )


@pytest.fixture(scope="module")
def reader(filled: FilledDatabase) -> Iterator[psycopg.Connection]:
    """A connection with Grafana's privileges: SET ROLE to the SELECT-only role."""
    with psycopg.connect(filled.url, autocommit=True) as conn:
        conn.execute(f"SET ROLE {READER}")
        yield conn


@pytest.fixture(scope="module")
def owner(filled: FilledDatabase) -> Iterator[psycopg.Connection]:
    with psycopg.connect(filled.url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def customer(reader: psycopg.Connection) -> str:
    """The customer the dashboard picks first."""
    (variable,) = _load(dashboard_file())["templating"]["list"]
    customers = reader.execute(variable["query"]).fetchall()
    assert customers
    return customers[0][0]


@pytest.fixture(scope="module")
def context(filled: FilledDatabase, customer: str) -> QueryContext:
    """The dashboard's view of the data: a range around it, the customer picked first."""
    return replace(filled.live, variables={"customer": customer})


@pytest.fixture(scope="module")
def week(filled: FilledDatabase, customer: str) -> QueryContext:
    """Seven days: the fleet series and the customer drill-down read rollups."""
    return replace(filled.week, variables={"customer": customer})


def run(conn: psycopg.Connection, target: dict, ctx: QueryContext) -> Result:
    return run_sql(conn, target["rawSql"], ctx)


def _check_time_series(result: Result) -> None:
    """Grafana needs a "time" column, numeric values, rows sorted by time."""
    assert result.columns[0] == "time", result.columns
    times = result.column("time")
    assert all(isinstance(t, datetime) or numeric(t) for t in times)
    assert times == sorted(times)
    values = [c for c in result.columns[1:] if all(numeric(v) for v in result.column(c))]
    labels = [c for c in result.columns[1:] if c not in values]
    assert values, result.columns
    assert labels in ([], ["metric"]), labels  # long format: one series per metric value


def _check_table(result: Result) -> None:
    assert result.rows


def _check_stat(result: Result) -> None:
    """One row of numbers: one stat each."""
    assert len(result.rows) == 1
    assert all(numeric(v) for v in result.rows[0]), result.rows


def _check_pie(result: Result) -> None:
    """A label column and a value column, one slice per row."""
    assert len(result.columns) == 2
    assert all(isinstance(label, str) for label in result.column(result.columns[0]))
    assert all(numeric(v) and v > 0 for v in result.column(result.columns[1]))


CHECKS = {"timeseries": _check_time_series, "table": _check_table, "stat": _check_stat,
          "bargauge": _check_stat, "piechart": _check_pie}
FORMATS = {"timeseries": "time_series", "table": "table", "stat": "table", "bargauge": "table",
           "piechart": "table"}
PANELS = [
    pytest.param(panel, id=f"{path.stem}-{panel['id']}-{panel['title']}")
    for path in DASHBOARD_FILES
    for panel in _panels(_load(path))
]


@pytest.mark.parametrize("span", ["live", "week"])
@pytest.mark.parametrize("panel", PANELS)
def test_panel_query_returns_what_its_panel_needs(panel: dict, span: str, reader, context,
                                                  week) -> None:
    """Every query runs as the reader role, over the live minutes and over a week; a target
    may be empty only while another of the same panel has rows (the lag panel's Dagster
    snapshot series before Dagster runs; throughput's two sources, one per range length)."""
    ctx = {"live": context, "week": week}[span]
    results = []
    for target in panel["targets"]:
        assert target["format"] == FORMATS[panel["type"]], target["refId"]
        result = run(reader, target, ctx)
        if result.rows:
            CHECKS[panel["type"]](result)
        results.append(result)
    assert any(r.rows for r in results), panel["title"]


def _panel(title: str) -> dict:
    (panel,) = [p for p in _load(dashboard_file())["panels"] if p["title"] == title]
    return panel


def _single(title: str, reader, context) -> Result:
    (target,) = _panel(title)["targets"]
    return run(reader, target, context)


def test_rollups_hold_every_reading(owner) -> None:
    """The fixture's refresh_pending rolled up every minute the consumer marked: no tail."""
    rolled, records, tail = owner.execute(
        "SELECT (SELECT sum(reading_count) FROM fleet_minute_stats), "
        "(SELECT count(*) FROM heartbeat_records), "
        "(SELECT count(*) FROM heartbeat_records WHERE event_timestamp >= "
        " (SELECT max(minute) + interval '1 minute' FROM fleet_minute_stats))"
    ).fetchone()
    assert rolled == records > 0, "the consumer marked no rollup windows"
    assert tail == 0
    hours = owner.execute("SELECT sum(reading_count) FROM customer_hourly_bpm_stats").fetchone()
    assert hours == (records,)


@pytest.mark.parametrize("span", ["live", "week"])
@pytest.mark.parametrize("name", ROLLED_UP)
def test_rolled_up_queries_answer_as_the_raw_tail_did(name: str, span: str, filled,
                                                      reader) -> None:
    """Readings still in the raw tail and readings in the rollups give the same panel."""
    ctx = {"live": filled.live, "week": filled.week}[span]
    before = filled.unrolled[(span, name)]
    after = run_sql(reader, dict(panel_queries(_load(dashboard_file())))[name], ctx)
    assert after == before
    assert after.rows or name == "Throughput/B" and span == "live"  # B: long ranges only


def test_health_stats_count_what_the_tables_hold(reader, owner, context) -> None:
    """The stat panels show the same numbers as the tables they summarise."""
    expected = {
        "Valid readings": "SELECT count(*) FROM heartbeat_records",
        "Anomalies": "SELECT count(*) FROM heartbeat_anomalies",
        "Anomalies (last 5 min)": "SELECT count(*) FROM heartbeat_anomalies "
                                  "WHERE detected_at > now() - interval '5 minutes'",
        "Active customers (5 min)": "SELECT count(DISTINCT customer_id) FROM heartbeat_records "
                                    "WHERE event_timestamp > now() - interval '5 minutes'",
        "Dead letters": "SELECT count(*) FROM heartbeat_dead_letters",
    }
    for title, sql in expected.items():
        (value,) = owner.execute(sql).fetchone()
        assert value > 0, title
        assert _single(title, reader, context).rows == [(value,)], title
    assert _single("Dead letters", reader, context).rows == [(len(BAD_MESSAGES),)]
    latest = _single("Latest reading", reader, context).rows[0][0]
    (newest,) = owner.execute("SELECT max(event_timestamp) FROM heartbeat_records").fetchone()
    assert float(latest) == pytest.approx(newest.timestamp() * 1000)


@pytest.mark.parametrize("bucket", [timedelta(seconds=1), timedelta(minutes=5)])
def test_fleet_average_is_one_normal_value_per_bucket(bucket: timedelta, reader, owner,
                                                      context) -> None:
    """Readings are averaged per $__interval bucket of at least a minute, never listed."""
    result = run(reader, _panel("Fleet Average BPM")["targets"][0],
                 replace(context, interval=bucket))
    seconds = max(bucket, timedelta(minutes=1)) // timedelta(seconds=1)
    expected = owner.execute(
        "SELECT floor(extract(epoch FROM date_trunc('minute', event_timestamp)) / %(s)s) * %(s)s,"
        "       round(avg(heart_rate), 1) "
        "FROM heartbeat_records GROUP BY 1 ORDER BY 1",
        {"s": seconds},
    ).fetchall()
    assert result.rows == expected
    assert all(40 <= v <= 180 for v in result.column("fleet average bpm"))


def test_anomaly_breakdown_adds_up(reader, owner, context) -> None:
    result = _single("Anomaly Type breakdown", reader, context)
    expected = owner.execute(
        "SELECT anomaly_type, count(*) FROM (SELECT DISTINCT customer_id, event_timestamp, "
        "anomaly_type FROM heartbeat_anomalies) AS readings GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert result.rows == expected
    assert set(dict(result.rows)) <= ANOMALY_TYPES and len(result.rows) >= 2


def test_throughput_accounts_for_every_message_between_snapshots(reader, owner, filled,
                                                                 context) -> None:
    """Short ranges: rates times the bucket width add up to the consumer's counter increase."""
    snapshots, stored, not_rolled_up = (
        run(reader, t, context) for t in _panel("Throughput")["targets"])
    assert stored.rows == [] and not_rolled_up.rows == []  # the snapshots are exact
    rates = snapshots.column("consumed msg/s")
    assert all(r > 0 for r in rates)
    first, last = owner.execute(
        "SELECT min(metric_value), max(metric_value) FROM pipeline_metrics "
        "WHERE metric_name = 'stats_messages_consumed' AND labels->>'consumer' = %s",
        (filled.consumer_name,),
    ).fetchone()
    assert last > first
    assert float(sum(rates)) * INTERVAL.total_seconds() == pytest.approx(last - first)


def test_throughput_of_long_ranges_counts_every_stored_reading(reader, owner, week) -> None:
    """Long ranges: rates times the bucket width add up to the readings stored."""
    snapshots, stored, not_rolled_up = (
        run(reader, t, week) for t in _panel("Throughput")["targets"])
    assert snapshots.rows == [] and not_rolled_up.rows == []
    (readings,) = owner.execute(
        "SELECT (SELECT count(*) FROM heartbeat_records) + (SELECT count(*) FROM "
        "(SELECT DISTINCT customer_id, event_timestamp FROM heartbeat_anomalies) AS a)"
    ).fetchone()
    rates = stored.column("stored readings/s")
    assert float(sum(rates)) * week.interval.total_seconds() == pytest.approx(readings)


def test_consumer_lag_shows_the_delay_now(reader, owner, context) -> None:
    """Before any Dagster snapshot: the event-to-database delay of the newest readings."""
    snapshot, delay = (run(reader, t, context) for t in _panel("Consumer lag")["targets"])
    assert snapshot.rows == []
    assert delay.columns == ["time", "sampled delay"]
    (worst,) = owner.execute(
        "SELECT max(extract(epoch FROM detected_at - event_timestamp)) FROM heartbeat_anomalies"
    ).fetchone()
    assert all(0 <= v <= worst for v in delay.column("sampled delay"))


def test_consumer_lag_reads_the_dagster_health_snapshot(database_url) -> None:
    """The contract with pipeline_health_snapshot: health_consumer_lag rows, labels.partition."""
    migrate(database_url)
    now = datetime.now(UTC)
    context = QueryContext(now - timedelta(minutes=15), now + timedelta(minutes=1))
    with psycopg.connect(database_url, autocommit=True) as conn:
        for partition, lag in ((0, 12.0), (1, 0.0), (2, 5.0)):
            conn.execute(
                "INSERT INTO pipeline_metrics (metric_name, metric_value, labels, recorded_at) "
                "VALUES ('health_consumer_lag', %s, %s, %s)",
                (lag, json.dumps({"partition": partition}), now),
            )
        conn.execute(f"SET ROLE {READER}")
        snapshot = run(conn, _panel("Consumer lag")["targets"][0], context)
    _check_time_series(snapshot)
    assert sorted(zip(snapshot.column("metric"), snapshot.column("value"), strict=True)) == [
        ("partition 0 lag", 12.0), ("partition 1 lag", 0.0), ("partition 2 lag", 5.0),
    ]


def test_recent_anomalies_newest_first(reader, owner, context) -> None:
    result = _single("Recent Anomalies", reader, context)
    total = owner.execute("SELECT count(*) FROM heartbeat_anomalies").fetchone()[0]
    assert len(result.rows) == min(total, 100)
    detected = result.column("detected")
    assert detected == sorted(detected, reverse=True)
    assert set(result.column("type")) <= ANOMALY_TYPES


def test_customer_variable_lists_every_customer_newest_anomaly_first(reader, owner,
                                                                     customer) -> None:
    (variable,) = _load(dashboard_file())["templating"]["list"]
    listed = [c for (c,) in reader.execute(variable["query"])]
    seen = [c for (c,) in owner.execute(
        "SELECT customer_id FROM heartbeat_records "
        "UNION SELECT customer_id FROM heartbeat_anomalies ORDER BY 1"
    )]
    assert sorted(listed) == seen
    (newest,) = owner.execute(
        "SELECT customer_id FROM heartbeat_anomalies ORDER BY event_timestamp DESC LIMIT 1"
    ).fetchone()
    assert customer == newest


def _customer_counts(owner, customer: str) -> tuple[int, int]:
    return owner.execute(
        "SELECT (SELECT count(*) FROM heartbeat_records WHERE customer_id = %(c)s), "
        "(SELECT count(*) FROM heartbeat_anomalies WHERE customer_id = %(c)s)",
        {"c": customer},
    ).fetchone()


def test_customer_drilldown_shows_only_that_customer(reader, owner, context) -> None:
    """Short ranges: every reading of the customer, from the raw tables."""
    readings, anomalies = _customer_counts(owner, context.variables["customer"])
    line, points = (run(reader, t, context) for t in _panel("BPM of $customer")["targets"])
    assert len(line.rows) == readings > 0
    assert len(points.rows) == anomalies > 0
    assert set(points.column("metric")) <= ANOMALY_TYPES
    summary = _single("$customer in the time range", reader, context)
    assert summary.column("readings") == [readings]
    assert summary.column("anomalies") == [anomalies]
    table = _single("Anomalies of $customer (last 24 h)", reader, context)
    assert len(table.rows) == min(anomalies, 50)


def test_customer_drilldown_of_long_ranges_reads_hours(reader, owner, context, week) -> None:
    """Long ranges: hourly averages, and the same totals as the raw readings."""
    customer = week.variables["customer"]
    line, points = (run(reader, t, week) for t in _panel("BPM of $customer")["targets"])
    hours = owner.execute(
        "SELECT date_trunc('hour', event_timestamp), round(avg(heart_rate), 1) "
        "FROM heartbeat_records WHERE customer_id = %s GROUP BY 1 ORDER BY 1", (customer,)
    ).fetchall()
    assert line.rows == hours
    assert len(points.rows) == _customer_counts(owner, customer)[1]
    short, long = (_single("$customer in the time range", reader, ctx) for ctx in (context, week))
    assert long == short


def test_customer_value_is_quoted_not_spliced(reader, context, week) -> None:
    """A hostile variable value stays a string literal and matches no customer."""
    for ctx in (context, week):
        hostile = replace(ctx, variables={"customer": "x' OR '1'='1"})
        line, _ = (run(reader, t, hostile) for t in _panel("BPM of $customer")["targets"])
        assert line.rows == []


# -- alert episodes -------------------------------------------------------------------------------

def test_the_pipeline_opened_the_episodes_of_its_anomalies(owner) -> None:
    """The consumer keeps episodes in each batch's transaction: every customer and kind with
    an anomalous reading has one (one reading opens an episode with no delay, as the
    fixture sets), no other."""
    kinds = {"TACHYCARDIA": "TACHYCARDIA", "BRADYCARDIA": "BRADYCARDIA",
             "INVALID": "SENSOR_FAULT"}
    anomalous = {(c, kinds[t]) for c, t in owner.execute(
        "SELECT DISTINCT customer_id, anomaly_type FROM heartbeat_anomalies")}
    ours = {c for c, *_ in EPISODES}
    episodes = {(c, k) for c, k in owner.execute(
        "SELECT DISTINCT customer_id, kind FROM alert_episodes WHERE kind <> 'NO_SIGNAL'")
        if c not in ours}
    assert anomalous and episodes == anomalous


def test_open_episodes_lists_the_firing_ones_newest_first(reader, owner, context) -> None:
    result = _single("Open episodes", reader, context)
    firing = {episode_id for (episode_id,) in owner.execute(
        "SELECT episode_id FROM alert_episodes WHERE state = 'firing'")}
    assert set(result.column("episode")) == firing and len(result.rows) == len(firing)
    opened = result.column("opened")
    assert opened == sorted(opened, reverse=True)
    ours = {(c, k): row for row in result.rows
            for c, k in [(row[result.columns.index("customer")],
                          row[result.columns.index("kind")])]}
    wanted = [(c, k) for c, k, state, *_ in EPISODES if state == "firing"]
    assert set(wanted) <= set(ours)
    assert not {(c, k) for c, k, state, *_ in EPISODES if state != "firing"} & set(ours)
    acknowledged = ours[("CUST_90002", "BRADYCARDIA")]
    assert acknowledged[result.columns.index("acknowledged by")] == "dr.jones"
    assert acknowledged[result.columns.index("escalated")] is not None
    assert acknowledged[result.columns.index("severity")] == "critical"
    assert ours[("CUST_90003", "SENSOR_FAULT")][result.columns.index("severity")] == "warning"


def test_open_episode_counts_by_kind(reader, owner, context) -> None:
    result = _single("Open episodes by kind", reader, context)
    assert result.columns == EPISODE_KINDS
    counts = dict(owner.execute(
        "SELECT kind, count(*) FROM alert_episodes WHERE state = 'firing' GROUP BY kind"
    ).fetchall())
    assert result.rows == [tuple(counts.get(kind, 0) for kind in EPISODE_KINDS)]
    assert all(result.rows[0][EPISODE_KINDS.index(k)] >= 1
               for k in ("TACHYCARDIA", "BRADYCARDIA", "SENSOR_FAULT"))


@pytest.mark.parametrize("span", ["live", "week"])
def test_episodes_opened_in_the_range_count_open_and_resolved(span, reader, owner, context,
                                                              week) -> None:
    """Every episode that started firing in the range, still open or resolved since; the
    one opened two hours before the live range only in the week."""
    ctx = {"live": context, "week": week}[span]
    result = _single("Episodes opened in the time range", reader, ctx)
    assert result.columns == EPISODE_KINDS
    counts = dict(owner.execute(
        "SELECT kind, count(*) FROM alert_episodes "
        "WHERE opened_at BETWEEN %s AND %s GROUP BY kind",
        (ctx.time_from, ctx.time_to),
    ).fetchall())
    assert result.rows == [tuple(counts.get(kind, 0) for kind in EPISODE_KINDS)]
    early = owner.execute(
        "SELECT opened_at BETWEEN %s AND %s FROM alert_episodes WHERE customer_id = 'CUST_90004'",
        (ctx.time_from, ctx.time_to),
    ).fetchone()
    assert early == ((span == "week"),)
    assert result.rows[0][EPISODE_KINDS.index("BRADYCARDIA")] >= 2  # the open and resolved one


def test_alert_rules_answer_on_the_database_the_pipeline_filled(reader, owner) -> None:
    """The provisioned alert rules, evaluated as Grafana does (tests/grafana_rules.py) as
    Grafana's role, on the rows the real pipeline wrote: the critical episodes the consumer
    opened fire the first; each rule's answer is what the tables hold at that moment."""
    ours = [c for c, *_ in EPISODES]
    with reader.transaction():  # one now() for the rules and the rows they are held to
        (now,) = reader.execute("SELECT now()").fetchone()
        critical = reader.execute(
            "SELECT customer_id FROM alert_episodes WHERE state = 'firing' "
            "AND kind IN ('TACHYCARDIA', 'BRADYCARDIA')").fetchall()
        (latest,) = reader.execute(
            "SELECT greatest((SELECT max(ingested_at) FROM heartbeat_records), "
            "(SELECT max(detected_at) FROM heartbeat_anomalies))").fetchone()
        received = [at for (at,) in reader.execute(
            "SELECT received_at FROM heartbeat_dead_letters")]
        snapshots = reader.execute(
            "SELECT count(*) FROM pipeline_metrics WHERE metric_name = 'health_consumer_lag'"
        ).fetchone()
        answers = {rule["uid"]: evaluate(reader, rule, now) for rule in alert_rules()}
    assert [c for (c,) in critical if c not in ours]  # opened by the consumer, not the fixture
    assert answers["heartbeat-open-critical-episodes"] == (len(critical), True)
    silent = latest < now - timedelta(minutes=2)
    assert answers["heartbeat-pipeline-silent"] == (float(silent), silent)
    assert len(received) == len(BAD_MESSAGES)
    per_minute = sum(at > now - timedelta(minutes=5) for at in received) / 5
    assert answers["heartbeat-dead-letter-rate"] == (per_minute, False)
    assert snapshots == (0,)  # no Dagster here: nothing to compare, quiet
    assert answers["heartbeat-consumer-lag"] == (0, False)


# -- the SELECT-only role -----------------------------------------------------------------------

UNREADABLE = {"alert_receivers"}


def test_reader_role_reads_everything_and_changes_nothing(database_url) -> None:
    """Grafana never writes: SELECT on every table and view, including ones added later,
    but the stored alert receivers (their URLs may carry tokens: sql/015)."""
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE added_later (x int)")
        relations = [name for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm')"
        )]
        assert {"heartbeat_records", "vw_pipeline_summary", "added_later"} <= set(relations)
        for name in relations:
            privileges = conn.execute(
                "SELECT has_table_privilege(%(r)s, %(t)s, 'SELECT'), "
                "has_table_privilege(%(r)s, %(t)s, 'INSERT, UPDATE, DELETE, TRUNCATE')",
                {"r": READER, "t": name},
            ).fetchone()
            assert privileges == (name not in UNREADABLE, False), name
        conn.execute(f"SET ROLE {READER}")
        assert conn.execute("SELECT count(*) FROM added_later").fetchone() == (0,)
        for statement in ("INSERT INTO added_later VALUES (1)",
                          "DELETE FROM heartbeat_records",
                          "CREATE TABLE grafana_was_here (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_reader_migration_can_run_again(database_url) -> None:
    """The role is cluster-wide: a second database (or a re-run) finds it and only grants."""
    migrate(database_url)
    sql = (sql_dir() / "003_grafana_reader.sql").read_text()
    assert "PASSWORD" not in sql.split("DO $$")[1]  # no secret: login is granted at deploy time
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql)
        (roles,) = conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = %s", (READER,)
        ).fetchone()
        readable = conn.execute(
            "SELECT has_table_privilege(%s, 'heartbeat_anomalies', 'SELECT')", (READER,)
        ).fetchone()
    assert roles == 1 and readable == (True,)
