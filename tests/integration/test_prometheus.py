"""A real Prometheus against the platform: Debian's `prometheus` and `promtool`.

A `consume` and a `produce` command run as the user runs them, each serving /metrics on a
port of its own (`--metrics-port 0`); our own Prometheus process (a free loopback port, a
temporary config made from `prometheus/prometheus.yml` with those two targets and a 1 s
scrape interval, a temporary storage folder) scrapes both while readings flow. Then every
PromQL expression of the dashboard goes through Prometheus' HTTP API and must return series,
and promtool checks the compose config and both /metrics texts.

Without the binaries these tests skip with one line saying what to install; under CI=true
they fail (.ci/run installs the package).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from heartbeat_platform import readiness
from heartbeat_platform.config import load_settings
from heartbeat_platform.local.process import free_port, wait_until
from tests.integration.test_prometheus_panels import prometheus_targets
from tests.support.peers import ready
from tests.support.pipeline import ConsumerProcess, ProducerProcess

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_CONFIG = ROOT / "prometheus" / "prometheus.yml"
SCRAPE_SECONDS = 1
# Grafana's $__rate_interval is at least four scrape intervals; ten here, so that a scrape
# delayed on a busy machine still leaves a rate() several samples.
RATE_INTERVAL = f"{10 * SCRAPE_SECONDS}s"
SCRAPES_BEFORE_QUERYING = 12  # successful scrapes of each target: more than the window


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = (f"the Prometheus tests need Debian's prometheus package ({tool}): "
                   "apt-get install prometheus (as .ci/run does)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_promtool_accepts_the_compose_config() -> None:
    checked = subprocess.run([_require("promtool"), "check", "config", str(COMPOSE_CONFIG)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


# -- a consumer, a producer, and Prometheus scraping both -----------------------------------------

@dataclass
class Scraped:
    url: str  # Prometheus' HTTP API
    metrics: dict[str, str]  # /metrics text of each command, read while it runs

    def query(self, expr: str) -> list[dict]:
        """An instant query's result (a vector), or AssertionError with Prometheus' error."""
        body = urllib.parse.urlencode({"query": expr}).encode()
        request = urllib.request.Request(f"{self.url}/api/v1/query", data=body)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:  # 400/422: a bad expression, with the reason
            answer = json.load(error)
        assert answer["status"] == "success", f"{expr}: {answer}"
        assert answer["data"]["resultType"] == "vector", answer["data"]
        return answer["data"]["result"]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _prometheus_config(targets: list[str]) -> dict:
    """The compose stack's config, scraping `targets` every SCRAPE_SECONDS instead."""
    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    interval = f"{SCRAPE_SECONDS}s"
    config["global"].update(scrape_interval=interval, scrape_timeout=interval,
                            evaluation_interval=interval)
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": targets}]
    return config


@pytest.fixture(scope="module")
def scraped(services, embedded_postgres, tmp_path_factory) -> Iterator[Scraped]:
    prometheus = _require("prometheus")
    topic = f"prometheus-peer-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        database_url=embedded_postgres.ensure_database(f"prom_{uuid.uuid4().hex[:12]}"),
        kafka_bootstrap_servers=services.bootstrap_servers,
        kafka_topic=topic,
        kafka_group_id=f"group-{topic}",
        heartbeat_state_dir=tmp_path_factory.mktemp("prometheus-peer-state"),
        heartbeat_consume_batch_size=200,
        _env_file=None,
    )
    readiness.prepare(settings)
    root = tmp_path_factory.mktemp("prometheus-peer")
    consumer = ConsumerProcess(settings, "--metrics-port", "0")
    producer = ProducerProcess(settings, "--metrics-port", "0", "--rate", "400", "--seed", "3")
    server = None
    try:
        assert consumer.serving_metrics.wait(60), consumer.text()
        assert producer.serving_metrics.wait(60), producer.text()
        assert consumer.assigned.wait(60), consumer.text()
        ports = {"consume": consumer.metrics_port, "produce": producer.metrics_port}
        config = root / "prometheus.yml"
        config.write_text(yaml.safe_dump(_prometheus_config(
            [f"127.0.0.1:{port}" for port in ports.values()])))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with (root / "prometheus.log").open("w") as log:
            server = subprocess.Popen(
                [prometheus, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        log_text = lambda: (root / "prometheus.log").read_text()  # noqa: E731
        assert wait_until(lambda: ready(url) or server.poll() is not None, 60), log_text()
        assert server.poll() is None, log_text()
        peer = Scraped(url, {})
        # Every target up for enough scrapes that each rate() window is full of samples.
        enough = f"min(sum_over_time(up[1m])) >= {SCRAPES_BEFORE_QUERYING} and count(up) == 2"
        assert wait_until(lambda: bool(peer.query(enough)), 90, interval=1), (
            peer.query("up"), log_text())
        peer.metrics.update({name: _scrape(p) for name, p in ports.items()})
        yield peer
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        producer.stop()
        consumer.stop()
        for process in (producer, consumer):
            code, _ = process.finish(60)
            assert code == 0, process.text()


# -- every dashboard expression, evaluated by Prometheus ------------------------------------------

def _instant(expr: str) -> str:
    """The expression as Grafana sends it, its one variable replaced by a concrete window."""
    concrete = expr.replace("$__rate_interval", RATE_INTERVAL)
    assert "$" not in concrete, f"a Grafana variable this test does not expand: {expr}"
    return concrete


@pytest.mark.parametrize("target", [pytest.param(t, id=name) for name, t in prometheus_targets()])
def test_every_dashboard_query_returns_series_from_prometheus(
    target: dict, scraped: Scraped
) -> None:
    result = scraped.query(_instant(target["expr"]))
    assert result, f"no series: {target['expr']}"
    for series in result:
        value = float(series["value"][1])
        # NaN is what a quantile of buckets nobody observed in the window gives: an empty line
        assert math.isfinite(value), series
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
            assert label in series["metric"], f"legend {{{{{label}}}}}: {series['metric']}"


def test_the_dashboard_reads_both_commands(scraped: Scraped) -> None:
    """Both targets healthy, and readings flowed through them while Prometheus watched."""
    up = {s["metric"]["instance"]: s["value"][1] for s in scraped.query('up{job="heartbeat"}')}
    assert len(up) == 2 and set(up.values()) == {"1"}, up
    for expr in (f"sum(rate(heartbeat_consumer_messages_total[{RATE_INTERVAL}]))",
                 f'sum(rate(heartbeat_producer_messages_total{{outcome="delivered"}}'
                 f"[{RATE_INTERVAL}]))"):
        (series,) = scraped.query(expr)
        assert float(series["value"][1]) > 0, expr


def test_the_prometheus_run_can_tell_a_wrong_query(scraped: Scraped) -> None:
    """What the test above would see from a broken expression: nothing, or an error."""
    assert scraped.query(f"sum(rate(heartbeat_consumer_mesages_total[{RATE_INTERVAL}]))") == []
    assert scraped.query('sum by (outcome) (heartbeat_producer_messages_total'
                         '{outcome="delivred"})') == []
    with pytest.raises(AssertionError, match="parse error"):
        scraped.query("sum(rate(heartbeat_consumer_messages_total))")


# -- promtool on what the commands serve -----------------------------------------------------------

@pytest.mark.parametrize("command", ["consume", "produce"])
def test_promtool_finds_nothing_to_fix_in_the_metrics(command: str, scraped: Scraped) -> None:
    text = scraped.metrics[command]
    assert "heartbeat_" in text
    checked = subprocess.run([_require("promtool"), "check", "metrics"], input=text,
                             capture_output=True, text=True, timeout=60)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_promtool_reports_what_it_would_fix() -> None:
    """The check above sees lint problems: a counter without `_total`, a missing help text."""
    text = ("# HELP heartbeat_consumer_messages Messages\n"
            "# TYPE heartbeat_consumer_messages counter\nheartbeat_consumer_messages 3\n"
            "# TYPE heartbeat_consumer_lag_ms gauge\nheartbeat_consumer_lag_ms 4\n")
    checked = subprocess.run([_require("promtool"), "check", "metrics"], input=text,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode != 0
    assert 'should have "_total" suffix' in checked.stderr
    assert "heartbeat_consumer_lag_ms no help text" in checked.stderr
