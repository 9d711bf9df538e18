"""The ops bundle (orchestrator/ops/): the Grafana dashboard and the Prometheus alert
rules name only metrics the code registers (or the Temporal SDK exports), their PromQL
parses (promql-parser), the rules have Prometheus's rule-file shape and the dashboard
Grafana's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client import REGISTRY
from ruamel.yaml import YAML

import channels.metrics
import orchestrator.metrics.http
import orchestrator.metrics.ingestion
import orchestrator.metrics.journeys
from orchestrator.metrics.sdk import SDK_METRICS

OPS = Path(__file__).resolve().parents[2] / "orchestrator" / "ops"
MODULES = (channels.metrics, orchestrator.metrics.http, orchestrator.metrics.ingestion,
           orchestrator.metrics.journeys)  # fmt: skip
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
SDK_HISTOGRAMS = {name for name in SDK_METRICS if name.endswith("_seconds")}
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def exposed() -> set[str]:
    """Every series name our metrics (and the SDK's we use) are scraped as, and `up`."""
    names = {"up"}
    for family in REGISTRY.collect():
        if family.name.startswith("orchestrator_"):
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    names |= SDK_METRICS - SDK_HISTOGRAMS
    names |= {h + suffix for h in SDK_HISTOGRAMS for suffix in SUFFIXES["histogram"]}
    return names


def metrics_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects; a syntax error fails the test."""
    # Grafana's interval variable is not PromQL: it stands for a duration.
    parsed = promql_parser.parse(expr.replace("$__rate_interval", "5m"))
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)

    promql_parser.walk(parsed, visit)
    return found


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = YAML(typ="safe").load((OPS / "prometheus" / "alerts.yml").read_text())
    assert set(document) == {"groups"}
    found = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert isinstance(group["name"], str), group
        assert group["rules"], group
        found += group["rules"]
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((OPS / "grafana" / "dashboards" / "orchestrator.json")
                                        .read_text())  # fmt: skip
    return loaded


def test_our_metrics_follow_prometheus_conventions() -> None:
    for family in REGISTRY.collect():
        if not family.name.startswith("orchestrator_"):
            continue
        assert family.type in SUFFIXES, family.name
        assert family.documentation, family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
    counters = [f.name for f in REGISTRY.collect() if f.type == "counter"]
    assert "orchestrator_rate_limit_wait_seconds" in counters  # base units: seconds
    assert all(m.__name__ for m in MODULES)


def test_alert_rules_have_the_rule_file_shape(rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= RULE_KEYS, rule
        assert "alert" in rule, rule
        assert isinstance(rule["expr"], str), rule
        promql_parser.parse_duration(rule.get("for", "0s"))
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]


def test_alerts_cover_the_failures_that_matter(rules: list[dict[str, Any]]) -> None:
    watched = set().union(*(metrics_in(rule["expr"]) for rule in rules))
    for needed in (
        "orchestrator_routing_lag_seconds_bucket",  # routing lag
        "orchestrator_provider_requests_total",  # provider error rate
        "orchestrator_unrouted_events",  # unrouted backlog
        "up",  # worker absent
        "orchestrator_ranking_answers_total",  # model fallbacks
        "temporal_workflow_task_execution_failed_total",
    ):
        assert needed in watched, needed
    absent = [rule for rule in rules if "absent(" in rule["expr"]]
    assert any('job="orchestrator-worker"' in rule["expr"] for rule in absent)


def test_the_dashboard_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"]
    assert dashboard["uid"]
    assert dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        assert panel["type"] == "timeseries"
        assert panel["title"]
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}
        assert grid["x"] + grid["w"] <= 24
        assert panel["datasource"]["uid"] == "prometheus"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs
        assert len(refs) == len(set(refs))


def test_every_metric_named_is_one_the_code_registers(
    rules: list[dict[str, Any]], dashboard: dict[str, Any]
) -> None:
    known = exposed()
    named = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in metrics_in(target["expr"])
    }
    named |= set().union(*(metrics_in(rule["expr"]) for rule in rules))
    assert named - known == set()
    # The dashboard shows each area the issue names.
    for area in ("orchestrator_routing_lag_seconds_bucket", "orchestrator_unrouted_events",
                 "orchestrator_arbitration_decisions_total", "orchestrator_messages_total",
                 "orchestrator_provider_request_duration_seconds_bucket",
                 "orchestrator_ranking_answers_total", "orchestrator_journeys_entered_total",
                 "temporal_workflow_task_schedule_to_start_latency_seconds_bucket",
                 "temporal_workflow_task_execution_failed_total"):  # fmt: skip
        assert area in named, area


def test_an_unknown_metric_or_bad_promql_is_caught() -> None:
    """The checks above would notice a renamed metric or a typo in an expression."""
    assert metrics_in('sum(rate(orchestrator_mesages_total{channel="email"}[5m]))') - exposed()
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        metrics_in("sum(rate(orchestrator_messages_total[5m])")


def test_grafana_provisioning_points_at_the_bundle() -> None:
    yaml = YAML(typ="safe")
    source = yaml.load((OPS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["uid"] == "prometheus"
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.load((OPS / "grafana/provisioning/dashboards/orchestrator.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
