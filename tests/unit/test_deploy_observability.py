"""The Grafana dashboard and the Prometheus rules query only metrics Tollway exports, in valid PromQL.

The exported names come from a real ``Metrics`` after every method ran once (so each family has
samples), parsed from the exposition text: ``_total``, ``_bucket``, ``_sum`` and ``_count`` are the
names as Prometheus stores them. Each expression is parsed with ``promql-parser`` (a PromQL parser
from PyPI; ``promtool`` is not distributed there) and every selector's metric name is checked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.ledger.events import UsageEvent
from app.observability.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_BUILTINS = {"up"}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    metrics = Metrics(registry=CollectorRegistry())
    metrics.request_started("anthropic")
    metrics.observe(
        UsageEvent(
            request_id="r", team_id="t", key_id="k", client_format="anthropic", requested_model="auto",
            served_model="m", input_tokens=1, output_tokens=1, cache_write_5m_tokens=1, cache_read_tokens=1,
            cost_usd=Decimal("0.2"), uncached_cost_usd=Decimal("0.1"), latency_ms=1.0, ttft_ms=1.0,
            status=500, error_type="api_error", end_user="user-1", usage_flag="over_reservation",
            route_reason="route=auto task=chat src=classifier tier>=small p=0.50/0.90 cheapest",
        ),
        team_name="t", route="auto", upstream_s=0.1, ttft_s=0.1,
    )  # fmt: skip
    metrics.observe(
        UsageEvent(
            request_id="s", team_id="t", key_id="k", client_format="anthropic", requested_model="auto",
            served_model="m", cost_usd=Decimal("0.1"), uncached_cost_usd=Decimal("0.2"),
        ),
        team_name="t", route="auto", upstream_s=None, ttft_s=None,
    )  # fmt: skip
    metrics.observe_inter_event(0.01, "anthropic")
    metrics.budget_rejected("t", "tokens_per_day")
    metrics.set_budget_remaining("t", "tokens_per_day", 1.0, limit=2.0)
    metrics.set_budget_remaining("t", "requests_per_minute", 1.0, limit=2.0)
    metrics.set_budget_remaining("t", "usd_per_day", 1.0, limit=2.0)
    metrics.response_cache(hit=True)
    metrics.retry("p", "m")
    metrics.fallback("m", "n")
    metrics.escalation("m", "n")
    metrics.set_breaker_state("d", "open")
    metrics.set_ledger(1, 1)
    body = metrics.render()[0].decode()
    names = {sample.name for family in text_string_to_metric_families(body) for sample in family.samples}
    # Every family produced samples: nothing below passes because a metric was simply never touched.
    families = {family.name for family in text_string_to_metric_families(body)}
    assert all(any(n.startswith(f) for n in names) for f in families)
    return names


def selectors(expr: str) -> Iterator[tuple[str | None, str]]:
    """(metric name, matchers) of every vector selector in a PromQL expression."""
    found: list[tuple[str | None, str]] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, str(node.matchers)))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    yield from found


def assert_queries_exported(exprs: list[tuple[str, str]], exported: set[str]) -> None:
    problems: list[str] = []
    for where, expr in exprs:
        try:
            names = [name for name, _ in selectors(expr)]
        except Exception as err:  # the parser's error type is not part of its API
            problems.append(f"{where}: does not parse as PromQL ({err}): {expr}")
            continue
        if not names:
            problems.append(f"{where}: selects no metric: {expr}")
        for name in names:
            if name is None or (name not in exported and name not in PROMETHEUS_BUILTINS):
                problems.append(f"{where}: '{name}' is not a metric Tollway exports")
    assert not problems, "\n".join(problems)


# ---- Grafana ---------------------------------------------------------------------------------------

GRAFANA_VARIABLES = re.compile(r"\$__(rate_interval|interval|range)|\$\{?(\w+)\}?")


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables by what they expand to: durations, or regexes inside matchers."""
    return GRAFANA_VARIABLES.sub(lambda m: "5m" if m.group(1) else ".*", expr)


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "tollway.json").read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_every_dashboard_query_names_an_exported_metric(exported: set[str]) -> None:
    exprs = [
        (f"panel '{p['title']}' {t['refId']}", grafana_to_promql(t["expr"]))
        for p in panels()
        for t in p["targets"]
    ]
    assert len(exprs) >= 30
    assert_queries_exported(exprs, exported)

    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
        assert match, f"variable {variable['name']}: unexpected query {variable['query']}"
        assert match.group(1) in exported


def test_dashboard_covers_what_ops_watch() -> None:
    titles = " | ".join(p["title"].lower() for p in panels())
    for topic in (
        "spend by team",
        "spend by model",
        "budget remaining",
        "budget used",
        "cache savings",
        "latency p50 / p99",
        "time to first token p50 / p99",
        "error and rejection rates",
        "circuit breakers",
        "retries",
        "fallbacks",
        "in flight",
        "ledger",
        "routing mix",
        "served tier",
        "route reasons",
        "latency p99 by model",
        "time to first token p50 by model",
        "keys and end users",
        "process cpu and memory",
    ):
        assert topic in titles, f"no panel for {topic!r}"


def test_dashboard_layout_and_datasource() -> None:
    board = dashboard()
    all_panels = board["panels"]
    assert len({p["id"] for p in all_panels}) == len(all_panels)
    # No two panels overlap on Grafana's 24-column grid.
    cells: set[tuple[int, int]] = set()
    for p in all_panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel '{p['title']}' overlaps another"
        cells |= mine
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [variable] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == provisioned["datasources"][0]["uid"]


# ---- Prometheus ------------------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_expression_names_an_exported_metric(exported: set[str]) -> None:
    assert_queries_exported([(f"alert {r['alert']}", r["expr"]) for r in rules()], exported)


def test_alert_rules_are_well_formed() -> None:
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule[
            "alert"
        ]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"]
        if "for" in rule:
            assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
        # Templates only use labels the expression keeps.
        for label in re.findall(r"\$labels\.(\w+)", rule["annotations"]["summary"]):
            assert label in rule["expr"] or label == "instance", f"{rule['alert']}: $labels.{label}"


def test_alerts_cover_budgets_errors_latency_and_the_ledger() -> None:
    by_metric: dict[str, list[str]] = {}
    for rule in rules():
        for name, _ in selectors(rule["expr"]):
            by_metric.setdefault(str(name), []).append(rule["expr"])
    for unit in ("tokens", "usd"):  # 80 % and 100 % of a token and a USD budget
        budget_exprs = " ".join(by_metric[f"tollway_budget_remaining_{unit}"])
        assert ">= 0.8" in budget_exprs and ">= 1" in budget_exprs
    assert any('status_class="5xx"' in e for e in by_metric["tollway_requests_total"])
    assert any("histogram_quantile(0.99" in e for e in by_metric["tollway_request_duration_seconds_bucket"])
    assert "tollway_ledger_queue_depth" in by_metric and "tollway_ledger_spool_events" in by_metric


def test_prometheus_config_loads_the_rules() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "tollway"]
    assert job["metrics_path"] == "/metrics"
