"""Grafana's alert rules (grafana/provisioning/alerting/), checked without a Grafana binary.

There is no Grafana binary here (nor in the package registries), so these tests do
Grafana's part. The files are parsed and held to Grafana 10.4's file-provisioning format
(docs: alerting/set-up/provision-alerting-resources/file-provisioning; the field names of
pkg/services/provisioning/alerting's AlertRuleGroupV1, ContactPointV1 and the policy
Route): every key Grafana requires, with its type, every condition and expression pointing at
a query that exists, every datasource uid provisioned. Each rule is then evaluated the way
Grafana's alerting engine does: its SQL query (A), macros expanded by
heartbeat_platform.grafana_queries, runs as the SELECT-only role Grafana logs in as against a
real PostgreSQL holding the rows the rule watches; the reduce (B) and threshold (C)
expressions of the file are applied to the answer. Each rule gets a quiet database and one
just over its threshold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from heartbeat_platform.grafana_queries import QueryContext, expand
from heartbeat_platform.storage.migrations import migrate
from tests.support.grafana_rules import (
    ALERTING,
    EXPRESSIONS,
    PROVISIONING,
    REDUCERS,
    alert_rule,
    alert_rules,
    evaluate,
    threshold,
)

ROOT = Path(__file__).resolve().parents[2]
READER = "heartbeat_grafana_reader"
# Prometheus' model.ParseDuration, which Grafana uses for interval, for and the policy timers.
DURATION = re.compile(r"0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")
RULE_UID = re.compile(r"[A-Za-z0-9_-]{1,40}")  # Grafana 10.4's rule uid rule
THRESHOLDS = {"gt": 1, "lt": 1, "within_range": 2, "outside_range": 2}  # name: params
RULES = {  # uid: what it watches (issue 10, "Dagster and Grafana")
    "heartbeat-open-critical-episodes": "firing critical episodes",
    "heartbeat-pipeline-silent": "no reading stored for 2 minutes",
    "heartbeat-consumer-lag": "consumer lag of the newest health snapshot",
    "heartbeat-dead-letter-rate": "dead letters per minute",
}


# -- the files ------------------------------------------------------------------------------------

def _load(name: str) -> dict:
    return yaml.safe_load((ALERTING / name).read_text())


def _all_files() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(ALERTING.glob("*.yaml"))}


def _datasources() -> dict[str, dict]:
    config = yaml.safe_load((PROVISIONING / "datasources" / "heartbeat.yaml").read_text())
    return {d["uid"]: d for d in config["datasources"]}


def _is_duration(value: object) -> bool:
    return isinstance(value, str) and value != "" and DURATION.fullmatch(value) is not None


def test_every_file_is_a_version_1_provisioning_file() -> None:
    files = _all_files()
    assert set(files) == {"heartbeat-rules.yaml", "contact-points.yaml",
                          "notification-policies.yaml"}
    kinds = {"groups", "contactPoints", "policies"}
    for name, content in files.items():
        assert content["apiVersion"] == 1, name
        assert set(content) - {"apiVersion"} <= kinds, name


def test_rule_groups_have_the_required_keys() -> None:
    (group,) = _load("heartbeat-rules.yaml")["groups"]
    assert isinstance(group["orgId"], int) and group["orgId"] >= 1
    for key in ("name", "folder"):
        assert isinstance(group[key], str) and group[key].strip(), key
    assert _is_duration(group["interval"])
    assert isinstance(group["rules"], list) and group["rules"]
    # the folder the dashboards are provisioned into: rules and panels side by side
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "heartbeat.yaml").read_text())
    assert group["folder"] == providers["providers"][0]["folder"]


def test_the_rules_are_the_ones_asked_for() -> None:
    rules = alert_rules()
    uids = [r["uid"] for r in rules]
    assert sorted(uids) == sorted(RULES)
    assert len({r["title"] for r in rules}) == len(rules)  # titles are unique in a folder
    assert all(RULE_UID.fullmatch(uid) for uid in uids)


@pytest.mark.parametrize("uid", sorted(RULES))
def test_rule_follows_the_10_4_format(uid: str) -> None:
    rule = alert_rule(uid)
    for key in ("uid", "title", "condition"):
        assert isinstance(rule[key], str) and rule[key], key
    assert rule["noDataState"] in {"NoData", "Alerting", "OK"}
    assert rule["execErrState"] in {"Error", "Alerting", "OK"}
    assert _is_duration(rule["for"])
    assert rule.get("isPaused", False) is False
    for key in ("labels", "annotations"):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in rule[key].items())
    assert rule["annotations"]["summary"]
    # Grafana 10.4 expands $VAR in labels (not in annotations or models): a "$" there is lost
    assert "$" not in json.dumps(rule["labels"])
    assert rule["labels"]["severity"] in {"critical", "warning"}

    data = rule["data"]
    ref_ids = [query["refId"] for query in data]
    assert len(set(ref_ids)) == len(ref_ids)
    assert rule["condition"] in ref_ids
    datasources = _datasources()
    for i, query in enumerate(data):
        assert isinstance(query["refId"], str) and query["refId"]
        assert isinstance(query["model"], dict)
        assert query["model"]["refId"] == query["refId"]
        window = query["relativeTimeRange"]
        assert set(window) == {"from", "to"}
        assert all(isinstance(v, int) and v >= 0 for v in window.values())
        uid_ = query["datasourceUid"]
        if uid_ == EXPRESSIONS:
            assert query["model"]["datasource"] == {"type": EXPRESSIONS, "uid": EXPRESSIONS}
            _check_expression(query["model"], earlier=ref_ids[:i])
        else:
            assert uid_ in datasources, uid_
            assert window["from"] > window["to"]
            datasource = datasources[uid_]
            assert query["model"]["datasource"] == {"type": datasource["type"], "uid": uid_}
            assert datasource["type"] == "grafana-postgresql-datasource"
            assert query["model"]["format"] == "table"
            assert query["model"]["rawQuery"] is True
            assert query["model"]["rawSql"].strip()
            assert "$" not in query["model"]["rawSql"]  # nothing for Grafana to interpolate
    # The condition is the last expression, and everything else feeds into it.
    assert rule["condition"] == ref_ids[-1]
    assert data[-1]["model"]["type"] == "threshold"

    dashboard = json.loads(
        (ROOT / "grafana" / "dashboards" / f"{rule['dashboardUid']}.json").read_text()
    )
    panels = {p["id"]: p for top in dashboard["panels"] for p in (top, *top.get("panels", []))}
    assert rule["panelId"] in panels, "the panel the rule links to"


def test_each_rule_links_the_panel_it_names() -> None:
    """The dashboard builder numbers panels in layout order, so a panel added above another
    moves its id: each rule's panelId line names its panel's title in a comment, and the
    dashboard's panel with that id has that title."""
    text = (ALERTING / "heartbeat-rules.yaml").read_text()
    links = re.findall(r'^\s*panelId: (\d+)\s+# "([^"]+)"$', text, re.MULTILINE)
    assert len(links) == len(re.findall(r"^\s*panelId:", text, re.MULTILINE)) == len(RULES)
    for rule in alert_rules():
        assert rule["dashboardUid"] == "heartbeat-monitoring", rule["uid"]
    dashboard = json.loads(
        (ROOT / "grafana" / "dashboards" / "heartbeat-monitoring.json").read_text())
    titles = {p["id"]: p["title"]
              for top in dashboard["panels"] for p in (top, *top.get("panels", []))}
    for panel_id, title in links:
        assert titles.get(int(panel_id)) == title, f"panelId {panel_id} is not {title!r}"


def _check_expression(model: dict, earlier: list[str]) -> None:
    """A reduce or threshold expression as Grafana 10.4's expression engine reads it."""
    assert model["type"] in {"reduce", "threshold"}, model["type"]
    assert model["expression"] in earlier, "refers to a query above it"
    if model["type"] == "reduce":
        assert model["reducer"] in REDUCERS
        assert model.get("settings", {}).get("mode", "") in {"", "dropNN", "replaceNN"}
    else:
        (condition,) = model["conditions"]  # Grafana 10.4 takes exactly one
        evaluator = condition["evaluator"]
        assert evaluator["type"] in THRESHOLDS
        assert len(evaluator["params"]) == THRESHOLDS[evaluator["type"]]
        assert all(isinstance(p, int | float) for p in evaluator["params"])


def test_contact_point_is_a_webhook_from_the_environment() -> None:
    (contact_point,) = _load("contact-points.yaml")["contactPoints"]
    assert isinstance(contact_point["orgId"], int)
    assert isinstance(contact_point["name"], str) and contact_point["name"]
    (receiver,) = contact_point["receivers"]
    assert isinstance(receiver["uid"], str) and RULE_UID.fullmatch(receiver["uid"])
    assert receiver["type"] == "webhook"
    assert isinstance(receiver["settings"], dict)
    assert receiver["settings"]["url"] == "${HEARTBEAT_GRAFANA_ALERT_WEBHOOK_URL}"
    assert receiver["settings"].get("httpMethod", "POST") in {"POST", "PUT"}
    assert isinstance(receiver.get("disableResolveMessage", False), bool)


def _routes(route: dict) -> Iterator[dict]:
    yield route
    for child in route.get("routes", []):
        yield from _routes(child)


def test_notification_policy_routes_every_rule_to_the_contact_point() -> None:
    (policy,) = _load("notification-policies.yaml")["policies"]
    assert isinstance(policy["orgId"], int)
    receivers = {cp["name"] for cp in _load("contact-points.yaml")["contactPoints"]}
    assert policy["receiver"] in receivers  # the root: every alert lands somewhere
    assert isinstance(policy["group_by"], list) and "alertname" in policy["group_by"]
    for route in _routes(policy):
        assert route.get("receiver", policy["receiver"]) in receivers
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                assert _is_duration(route[key]), (key, route[key])
        for matcher in route.get("object_matchers", []):
            label, operator, value = matcher
            assert operator in {"=", "!=", "=~", "!~"}
            assert isinstance(label, str) and isinstance(value, str)
    # each child route catches at least one of our rules (no dead route)
    for child in policy.get("routes", []):
        assert any(all(r["labels"].get(label) == value
                       for label, _, value in child["object_matchers"]) for r in alert_rules())


# -- the rules against a database ----------------------------------------------------------------

@pytest.fixture
def alert_db(database_url: str) -> Iterator[psycopg.Connection]:
    """An empty, migrated database, as its owner (who writes what the rules watch)."""
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def as_reader(database_url: str, alert_db) -> Iterator[psycopg.Connection]:
    """The same database with Grafana's privileges."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"SET ROLE {READER}")
        yield conn


def _now(conn: psycopg.Connection) -> datetime:
    (now,) = conn.execute("SELECT now()").fetchone()
    return now


def add_episode(conn: psycopg.Connection, customer: str, kind: str, state: str, *,
                opened: datetime | None, resolved: datetime | None = None,
                worst: int = 200, readings: int = 1, acknowledged_by: str | None = None,
                escalated: datetime | None = None) -> int:
    """An alert_episodes row as sql/009 defines it (the consumer's writer makes the same)."""
    severity = "critical" if kind in {"TACHYCARDIA", "BRADYCARDIA"} else "warning"
    first = opened or datetime.now(UTC)
    last = resolved or first + timedelta(seconds=readings)
    (episode_id,) = conn.execute(
        """
        INSERT INTO alert_episodes (customer_id, kind, state, severity, opened_at, resolved_at,
            first_heart_rate, worst_heart_rate, readings, first_reading_at, last_reading_at,
            last_evaluated_at, acknowledged_at, acknowledged_by, escalated_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        RETURNING episode_id
        """,
        (customer, kind, state, severity, opened, resolved, worst, worst, readings, first,
         last, last, first if acknowledged_by else None, acknowledged_by, escalated),
    ).fetchone()
    return episode_id


def test_reader_can_read_the_alerting_tables(alert_db) -> None:
    """Grafana's role reads the tables sql/009 added (default privileges of sql/003) and
    cannot change them."""
    for name in ("alert_episodes", "alert_outbox", "alert_overrides",
                 "vw_alert_overrides_in_force"):
        privileges = alert_db.execute(
            "SELECT has_table_privilege(%(r)s, %(t)s, 'SELECT'), "
            "has_table_privilege(%(r)s, %(t)s, 'INSERT, UPDATE, DELETE, TRUNCATE')",
            {"r": READER, "t": name},
        ).fetchone()
        assert privileges == (True, False), name


def test_open_critical_episodesalert_rule(alert_db, as_reader) -> None:
    rule = alert_rule("heartbeat-open-critical-episodes")
    now = _now(alert_db)
    hour = timedelta(hours=1)
    # quiet: a resolved critical episode, a firing sensor fault, a pending tachycardia
    add_episode(alert_db, "CUST_00001", "TACHYCARDIA", "resolved", opened=now - hour,
                resolved=now - hour / 2)
    add_episode(alert_db, "CUST_00002", "SENSOR_FAULT", "firing", opened=now, worst=0)
    add_episode(alert_db, "CUST_00003", "TACHYCARDIA", "pending", opened=None)
    add_episode(alert_db, "CUST_00004", "NO_SIGNAL", "firing", opened=now, worst=72)
    assert evaluate(as_reader, rule, now) == (0, False)
    # firing: one bradycardia, then a tachycardia too
    add_episode(alert_db, "CUST_00005", "BRADYCARDIA", "firing", opened=now, worst=31)
    assert evaluate(as_reader, rule, now) == (1, True)
    add_episode(alert_db, "CUST_00001", "TACHYCARDIA", "firing", opened=now, worst=210)
    assert evaluate(as_reader, rule, now) == (2, True)
    # resolved again: quiet
    alert_db.execute("UPDATE alert_episodes SET state = 'resolved', resolved_at = now() "
                     "WHERE state = 'firing' AND severity = 'critical'")
    assert evaluate(as_reader, rule, now) == (0, False)


def _insert_reading(conn: psycopg.Connection, table: str, at: datetime, offset: int) -> None:
    if table == "heartbeat_records":
        conn.execute(
            "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
            "kafka_partition, kafka_offset, ingested_at) VALUES ('CUST_00001', %s, 72, 0, %s, %s)",
            (at - timedelta(seconds=1), offset, at),
        )
    else:
        conn.execute(
            "INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate, "
            "anomaly_type, raw_payload, kafka_partition, kafka_offset, detected_at) "
            "VALUES ('CUST_00001', %s, 200, 'TACHYCARDIA', '{}', 1, %s, %s)",
            (at - timedelta(seconds=1), offset, at),
        )


def test_pipeline_silentalert_rule(alert_db, as_reader) -> None:
    rule = alert_rule("heartbeat-pipeline-silent")
    now = _now(alert_db)
    # nothing ever stored: silent
    assert evaluate(as_reader, rule, now) == (1, True)
    # readings 3 and 5 minutes ago: still silent for the last 2 minutes
    _insert_reading(alert_db, "heartbeat_records", now - timedelta(minutes=5), 1)
    _insert_reading(alert_db, "heartbeat_anomalies", now - timedelta(minutes=3), 2)
    assert evaluate(as_reader, rule, now) == (1, True)
    # an anomaly stored a minute ago: the pipeline is alive
    _insert_reading(alert_db, "heartbeat_anomalies", now - timedelta(minutes=1), 3)
    assert evaluate(as_reader, rule, now) == (0, False)
    # and a valid reading alone is enough too
    alert_db.execute("DELETE FROM heartbeat_anomalies")
    _insert_reading(alert_db, "heartbeat_records", now - timedelta(seconds=10), 4)
    assert evaluate(as_reader, rule, now) == (0, False)


def _snapshot(conn: psycopg.Connection, at: datetime, lags: list[float]) -> None:
    """What pipeline_health_snapshot writes: one health_consumer_lag row per partition, in
    one transaction (one recorded_at), next to its other health_* rows."""
    for partition, lag in enumerate(lags):
        conn.execute(
            "INSERT INTO pipeline_metrics (metric_name, metric_value, labels, recorded_at) "
            "VALUES ('health_consumer_lag', %s, %s, %s)",
            (lag, json.dumps({"partition": partition}), at),
        )
    conn.execute(
        "INSERT INTO pipeline_metrics (metric_name, metric_value, labels, recorded_at) "
        "VALUES ('health_throughput_per_s', 9999999, '{\"window_s\": 60}', %s)", (at,),
    )


def test_consumer_lagalert_rule(alert_db, as_reader) -> None:
    rule = alert_rule("heartbeat-consumer-lag")
    limit = threshold(rule["uid"])
    now = _now(alert_db)
    # no snapshot (Dagster not running): nothing to compare, quiet
    assert evaluate(as_reader, rule, now) == (0, False)
    # an old snapshot far behind, then the newest one exactly at the threshold: quiet
    _snapshot(alert_db, now - timedelta(minutes=3), [limit, limit, limit])
    _snapshot(alert_db, now - timedelta(minutes=1), [limit - 10, 10, 0])
    assert evaluate(as_reader, rule, now) == (limit, False)
    # the newest snapshot one message over it (summed over partitions): firing
    _snapshot(alert_db, now, [limit / 2, limit / 2 + 1, 0])
    assert evaluate(as_reader, rule, now) == (limit + 1, True)
    # a snapshot older than 5 minutes is not "now": quiet
    alert_db.execute("UPDATE pipeline_metrics SET recorded_at = recorded_at - interval '10 min'")
    assert evaluate(as_reader, rule, now) == (0, False)


def _dead_letters(conn: psycopg.Connection, at: datetime, count: int, first: int) -> None:
    conn.execute(
        "INSERT INTO heartbeat_dead_letters (kafka_partition, kafka_offset, raw_value, reason, "
        "received_at) SELECT 0, o, 'not json', 'not JSON', %s "
        "FROM generate_series(%s::bigint, %s::bigint) o",
        (at, first, first + count - 1),
    )


def test_dead_letter_ratealert_rule(alert_db, as_reader) -> None:
    rule = alert_rule("heartbeat-dead-letter-rate")
    per_minute = threshold(rule["uid"])
    window = 5  # minutes the query counts
    now = _now(alert_db)
    assert evaluate(as_reader, rule, now) == (0, False)
    # a burst 10 minutes ago does not count; exactly the threshold in the window: quiet
    _dead_letters(alert_db, now - timedelta(minutes=10), 10_000, first=1)
    _dead_letters(alert_db, now - timedelta(minutes=4), int(per_minute * window), first=20_000)
    assert evaluate(as_reader, rule, now) == (per_minute, False)
    # five more (one more a minute): firing
    _dead_letters(alert_db, now - timedelta(seconds=30), window, first=30_000)
    assert evaluate(as_reader, rule, now) == (per_minute + 1, True)


# -- bounded reads --------------------------------------------------------------------------------

def _plan_nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _episode_queries() -> dict[str, str]:
    """The dashboard's episode panels and the episode rule, as Grafana sends them."""
    dashboard = json.loads((ROOT / "grafana/dashboards/heartbeat-monitoring.json").read_text())
    panels = {p["title"]: p for p in dashboard["panels"]}
    queries = {title: panels[title]["targets"][0]["rawSql"]
               for title in ("Open episodes", "Open episodes by kind",
                             "Episodes opened in the time range")}
    rule = alert_rule("heartbeat-open-critical-episodes")
    queries[rule["uid"]] = rule["data"][0]["model"]["rawSql"]
    return queries


def test_episode_queries_read_no_history(alert_db) -> None:
    """Years of resolved episodes and a few open ones: every episode query reaches its rows
    through the partial indexes, never by scanning the table."""
    alert_db.execute(
        """
        INSERT INTO alert_episodes (customer_id, kind, state, severity, opened_at, resolved_at,
            first_heart_rate, worst_heart_rate, readings, first_reading_at, last_reading_at,
            last_evaluated_at)
        SELECT 'CUST_' || lpad((i % 10000)::text, 5, '0'), 'TACHYCARDIA', 'resolved',
               'critical', t, t + interval '1 minute', 190, 200, 3, t, t + interval '1 minute',
               t + interval '1 minute'
        FROM generate_series(1, 50000) AS i,
             LATERAL (SELECT now() - interval '400 days' + i * interval '10 minutes') AS x(t)
        WHERE t < now() - interval '1 day'
        """
    )
    now = _now(alert_db)
    for i in range(5):
        add_episode(alert_db, f"CUST_1{i:04d}", "BRADYCARDIA", "firing", opened=now)
    alert_db.execute("ANALYZE alert_episodes")
    ctx = QueryContext(now - timedelta(hours=6), now)
    for name, sql in _episode_queries().items():
        (plan,) = alert_db.execute(f"EXPLAIN (FORMAT JSON) {expand(sql, ctx)}").fetchone()[0]
        nodes = list(_plan_nodes(plan["Plan"]))
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], name
        indexes = {n["Index Name"] for n in nodes
                   if n.get("Index Name", "").startswith("alert_episodes")}
        assert indexes, name
        assert indexes <= {"alert_episodes_firing", "alert_episodes_resolved_at"}, (name, indexes)
