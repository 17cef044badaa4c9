"""Each Prometheus metric's name has one home, heartbeat_platform.metrics: the collectors
register exactly the `Metric`s listed there, and the dashboard's PromQL selects only series
they expose. tests/integration/test_prometheus_panels.py checks each expression against a
running pipeline's /metrics in detail; this needs nothing started."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from heartbeat_platform.metrics import (
    CONSUMER_METRICS,
    PRODUCER_METRICS,
    ConsumerMetrics,
    ConsumerSnapshot,
    Metric,
    ProducerCollector,
)

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "grafana" / "build_dashboards.py"
DASHBOARD = ROOT / "grafana" / "dashboards" / "heartbeat-monitoring.json"


def registries() -> tuple[CollectorRegistry, CollectorRegistry]:
    """A consumer's and a producer's registry, with a sample in every labelled family."""
    consumer, producer = CollectorRegistry(), CollectorRegistry()
    ConsumerMetrics(consumer, lambda: ConsumerSnapshot(lag={0: 3}, lost_at_source={0: 0},
                                                          truncated_stored={0: 0}))
    producer.register(ProducerCollector(lambda: SimpleNamespace(
        sent=2, delivered=1, failed=0, uncertain=1, recreated=0)))
    return consumer, producer


def exposed() -> dict[str, set[str]]:
    """Sample name -> its label names, as /metrics would serve them."""
    samples: dict[str, set[str]] = {}
    for registry in registries():
        for family in registry.collect():
            for sample in family.samples:
                samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def selected_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once label matchers,
    ranges, strings and by/without lists are removed, and that is not a function call."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\{[^}]*\}|\[[^\]]*\]', " ", expr)
    expr = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", expr)
    return set(re.findall(r"\b[A-Za-z_:][\w:]*\b(?!\s*\()", expr))


def prometheus_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
    return [t["expr"] for p in panels for t in p.get("targets", [])
            if (t.get("datasource") or {}).get("type") == "prometheus"]


def test_the_collectors_register_exactly_the_listed_metrics() -> None:
    for registry, listed in zip(registries(), (CONSUMER_METRICS, PRODUCER_METRICS),
                                strict=True):
        assert {(f.name, f.type) for f in registry.collect()} == {
            (m.name, m.kind) for m in listed}
    samples = exposed()
    for metric in (*CONSUMER_METRICS, *PRODUCER_METRICS):
        assert metric.sample in samples, metric
        assert samples[metric.sample] - {"le"} == ({metric.label} if metric.label else set())


def test_sample_names_follow_prometheus() -> None:
    assert Metric("x", "counter").sample == "x_total"
    assert Metric("x", "gauge").sample == "x"
    assert Metric("x", "histogram").sample == "x_bucket"


def test_the_dashboard_selects_only_exposed_series() -> None:
    exprs = prometheus_exprs()
    assert len(exprs) == 12
    used = set().union(*(selected_metrics(expr) for expr in exprs))
    samples = exposed()
    assert used and used <= set(samples), used - set(samples)
    assert used <= {m.sample for m in (*CONSUMER_METRICS, *PRODUCER_METRICS)}


def test_the_selector_reader_finds_the_metric_names() -> None:
    expr = ('60 * sum by (outcome) (rate(heartbeat_producer_messages_total{outcome=~"a|b"}'
            '[$__rate_interval])) + histogram_quantile(0.5, sum by (le) (rate(h_bucket[5m])))'
            " / max without (partition) (lag)")
    assert selected_metrics(expr) == {"heartbeat_producer_messages_total", "h_bucket", "lag"}


def test_the_builder_names_no_metric_itself() -> None:
    """The builder writes PromQL and descriptions from the `Metric` constants: a name typed
    there would be a second home, free to drift from what the collectors register."""
    source = BUILDER.read_text()
    typed = [m.name for m in (*CONSUMER_METRICS, *PRODUCER_METRICS) if m.name in source]
    assert typed == [], "use heartbeat_platform.metrics' constants in the builder"
