"""otel/: the dashboard and the Prometheus rules only name metrics atlas exports.

Docker cannot run here, so these files are checked as data: every series a dashboard
query or an alert expression names must be one the collector makes of an atlas
instrument (see atlas_actors.telemetry.prometheus), so renaming a metric cannot break
them silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from atlas_actors.config import StorageConfig
from atlas_actors.telemetry.default_alerts import default_rules
from atlas_actors.telemetry.metrics import CATALOGUE
from atlas_actors.telemetry.prometheus import prometheus_name, prometheus_rules

OTEL = Path(__file__).resolve().parent.parent / "otel"
SERIES = re.compile(r"\batlas_[a-z0-9_]+")
EXPORTED = {prometheus_name(name) for name in CATALOGUE}


def queries(node: Any) -> Iterator[str]:
    """Every PromQL text in a Grafana dashboard (panel targets, variable queries)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str | dict):
                yield from [value] if isinstance(value, str) else queries(value)
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def test_prometheus_names_follow_the_collectors_translation() -> None:
    assert prometheus_name("writer.writes") == "atlas_writer_writes_total"
    assert prometheus_name("pool.waiting_requests") == "atlas_pool_waiting_requests"
    assert prometheus_name("errors.disk_full") == "atlas_errors_disk_full_total"


def test_every_series_the_dashboard_queries_is_exported() -> None:
    dashboard = json.loads((OTEL / "grafana" / "dashboards" / "atlas.json").read_text())
    texts = list(queries(dashboard))
    assert len(texts) > 20
    named = {series for text in texts for series in SERIES.findall(text)}
    assert named, "no atlas series in the dashboard"
    assert named <= EXPORTED, f"not exported by atlas: {sorted(named - EXPORTED)}"


def test_the_dashboard_has_the_plans_operational_and_performance_panels() -> None:
    dashboard = json.loads((OTEL / "grafana" / "dashboards" / "atlas.json").read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "Status",
        "Reader pool",
        "Active transactions",
        "Error rates",
        "Cache",
        "Latency",
        "Throughput",
        "WAL",
    } <= titles
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["description"], panel["title"]


def test_the_prometheus_rules_are_the_default_rules_and_name_exported_series() -> None:
    text = (OTEL / "prometheus" / "alerts.yml").read_text()
    # Regenerate with: python -m atlas_actors.telemetry.prometheus > otel/prometheus/alerts.yml
    assert text == prometheus_rules(default_rules(StorageConfig()))
    expressions = re.findall(r"^\s+expr: (.*)$", text, flags=re.MULTILINE)
    assert len(expressions) == len(default_rules(StorageConfig()))
    named = {series for expr in expressions for series in SERIES.findall(expr)}
    assert named <= EXPORTED, f"not exported by atlas: {sorted(named - EXPORTED)}"


def test_every_file_the_compose_setup_mounts_exists() -> None:
    compose = (OTEL / "docker-compose.yml").read_text()
    mounted = re.findall(r"-\s+\./([^:]+):", compose)
    assert "collector.yaml" in mounted and "grafana/dashboards" in mounted
    for path in mounted:
        assert (OTEL / path).exists(), path


def test_every_metric_and_default_rule_is_documented_in_the_architecture_notes() -> None:
    notes = (OTEL.parent / "docs" / "architecture.md").read_text()
    undocumented = [name for name in CATALOGUE if f"`{name}`" not in notes]
    assert not undocumented, undocumented
    rules = [r.name for r in default_rules(StorageConfig()) if f"`{r.name}`" not in notes]
    assert not rules, rules
