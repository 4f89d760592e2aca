"""Metrics after known calls: exact counters and histogram counts, label caps, the gauges."""

from __future__ import annotations

from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.ledger.events import UsageEvent
from app.observability.metrics import LATENCY_BUCKETS, OTHER, Metrics, status_class


def scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Render and parse the exposition text: {(sample name, labels): value}."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum over every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def event(**fields: object) -> UsageEvent:
    base: dict[str, object] = {
        "request_id": "req",
        "team_id": "team-id",
        "key_id": "key-id",
        "client_format": "anthropic",
        "requested_model": "auto",
        "served_model": "claude-haiku-4-5",
    }
    base.update(fields)
    return UsageEvent(**base)  # type: ignore[arg-type]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(registry=CollectorRegistry())


def test_observe_counts_requests_tokens_and_money_exactly(metrics: Metrics) -> None:
    events = [
        event(
            request_id=f"ok-{i}",
            input_tokens=100 + i,
            output_tokens=20 + i,
            cache_write_5m_tokens=7,
            cache_write_1h_tokens=3,
            cache_read_tokens=1000,
            cost_usd=Decimal("0.0125"),
            uncached_cost_usd=Decimal("0.0500"),
            latency_ms=300.0,
        )
        for i in range(5)
    ]
    # A request whose cache write cost more than it saved: extra cost, not negative savings.
    events.append(
        event(
            request_id="write",
            input_tokens=10,
            cache_write_5m_tokens=4000,
            cost_usd=Decimal("0.0060"),
            uncached_cost_usd=Decimal("0.0050"),
            latency_ms=800.0,
        )
    )
    for e in events:
        metrics.observe(e, team_name="search", route="auto", upstream_s=0.2, ttft_s=None)
    metrics.observe(
        event(
            request_id="fail",
            status=502,
            error_type="overloaded_error",
            latency_ms=40.0,
            client_format="openai",
        ),
        team_name="search",
        route="auto",
        upstream_s=None,
        ttft_s=None,
    )

    s = scrape(metrics)
    ok = {"team": "search", "route": "auto", "served_model": "claude-haiku-4-5", "served_tier": "none"}
    assert value(s, "tollway_requests_total", client_api="anthropic", status_class="2xx", **ok) == 6
    assert value(s, "tollway_requests_total", client_api="openai", status_class="5xx", **ok) == 1
    by_type = {"team": "search", "served_model": "claude-haiku-4-5"}
    assert value(s, "tollway_tokens_total", type="input", **by_type) == sum(e.input_tokens for e in events)
    assert value(s, "tollway_tokens_total", type="output", **by_type) == sum(e.output_tokens for e in events)
    assert value(s, "tollway_tokens_total", type="cache_write", **by_type) == 5 * 10 + 4000
    assert value(s, "tollway_tokens_total", type="cache_read", **by_type) == 5 * 1000
    cost = sum((e.cost_usd for e in events), Decimal(0))
    assert value(s, "tollway_cost_usd_total", **by_type) == pytest.approx(float(cost), rel=1e-12)
    assert value(s, "tollway_cache_savings_usd_total", **by_type) == pytest.approx(5 * 0.0375, rel=1e-12)
    assert value(s, "tollway_cache_extra_cost_usd_total", **by_type) == pytest.approx(0.001, rel=1e-12)
    assert value(s, "tollway_errors_total", client_api="openai", error_type="overloaded_error") == 1
    assert total(s, "tollway_errors_total") == 1

    latency = {"client_api": "anthropic", "served_model": "claude-haiku-4-5"}
    assert value(s, "tollway_request_duration_seconds_count", **latency) == 6
    assert value(s, "tollway_request_duration_seconds_sum", **latency) == pytest.approx(5 * 0.3 + 0.8)
    assert value(s, "tollway_request_duration_seconds_bucket", le="0.25", **latency) == 0
    assert value(s, "tollway_request_duration_seconds_bucket", le="0.5", **latency) == 5
    assert value(s, "tollway_request_duration_seconds_bucket", le="1.0", **latency) == 6
    assert value(s, "tollway_upstream_duration_seconds_count", served_model="claude-haiku-4-5") == 6
    # No stream, no first token: nothing observed.
    assert total(s, "tollway_time_to_first_token_seconds_count") == 0


def test_ttft_comes_from_the_argument_or_the_event(metrics: Metrics) -> None:
    metrics.observe(
        event(ttft_ms=150.0, streamed=True), team_name="t", route=None, upstream_s=None, ttft_s=None
    )
    metrics.observe(
        event(ttft_ms=None, streamed=True), team_name="t", route=None, upstream_s=None, ttft_s=0.4
    )
    s = scrape(metrics)
    ttft = {"served_model": "claude-haiku-4-5"}
    assert value(s, "tollway_time_to_first_token_seconds_count", **ttft) == 2
    assert value(s, "tollway_time_to_first_token_seconds_bucket", le="0.2", **ttft) == 1
    assert value(s, "tollway_time_to_first_token_seconds_bucket", le="0.5", **ttft) == 2
    assert value(s, "tollway_time_to_first_token_seconds_sum", **ttft) == pytest.approx(0.55)
    # No route and no served model are labelled "none", never left empty.
    assert (
        value(
            s,
            "tollway_requests_total",
            team="t",
            client_api="anthropic",
            route="none",
            served_model="claude-haiku-4-5",
            served_tier="none",
            status_class="2xx",
        )
        == 2
    )


def test_unauthenticated_request_counts_without_a_team(metrics: Metrics) -> None:
    metrics.observe(
        event(team_id=None, key_id=None, served_model=None, status=401, error_type="authentication"),
        team_name=None,
        route=None,
        upstream_s=None,
        ttft_s=None,
    )
    s = scrape(metrics)
    assert (
        value(
            s,
            "tollway_requests_total",
            team="none",
            client_api="anthropic",
            route="none",
            served_model="none",
            served_tier="none",
            status_class="4xx",
        )
        == 1
    )
    assert value(s, "tollway_errors_total", client_api="anthropic", error_type="authentication") == 1


def test_team_label_cap_maps_the_101st_team_to_other() -> None:
    metrics = Metrics(team_label_cap=100, registry=CollectorRegistry())
    for i in range(101):
        metrics.observe(
            event(output_tokens=1), team_name=f"team-{i:03}", route="r", upstream_s=None, ttft_s=None
        )
    # Teams seen before the cap keep their label afterwards.
    metrics.observe(event(output_tokens=1), team_name="team-000", route="r", upstream_s=None, ttft_s=None)
    metrics.observe(event(output_tokens=1), team_name="team-late", route="r", upstream_s=None, ttft_s=None)

    s = scrape(metrics)
    teams = {dict(labels)["team"] for (name, labels) in s if name == "tollway_requests_total"}
    assert len(teams) == 101
    assert OTHER in teams and "team-100" not in teams and "team-late" not in teams
    by_team = {
        "client_api": "anthropic",
        "route": "r",
        "served_model": "claude-haiku-4-5",
        "served_tier": "none",
        "status_class": "2xx",
    }
    assert value(s, "tollway_requests_total", team="team-000", **by_team) == 2
    assert value(s, "tollway_requests_total", team=OTHER, **by_team) == 2
    assert value(s, "tollway_tokens_total", team=OTHER, served_model="claude-haiku-4-5", type="output") == 2
    # Budget gauges are not exported for teams past the cap (one shared gauge would be misleading),
    # but rejections still count.
    metrics.set_budget_remaining("team-late", "tokens_per_day", 5.0, limit=10.0)
    metrics.budget_rejected("team-late", "tokens_per_day")
    s = scrape(metrics)
    assert total(s, "tollway_budget_remaining_tokens") == 0
    assert value(s, "tollway_budget_rejections_total", team=OTHER, window="tokens_per_day") == 1


def test_error_types_are_sanitised_and_capped(metrics: Metrics) -> None:
    metrics.observe(
        event(status=500, error_type="Upstream: Weird ERROR!"),
        team_name="t",
        route=None,
        upstream_s=None,
        ttft_s=None,
    )
    metrics.observe(
        event(status=503, error_type=None), team_name="t", route=None, upstream_s=None, ttft_s=None
    )
    for i in range(60):
        metrics.observe(
            event(status=502, error_type=f"kind_{i}"), team_name="t", route=None, upstream_s=None, ttft_s=None
        )
    s = scrape(metrics)
    error_types = {dict(labels)["error_type"] for (name, labels) in s if name == "tollway_errors_total"}
    assert "upstream_weird_error" in error_types
    assert "http_503" in error_types
    assert OTHER in error_types
    # 50 distinct error-type names, then "other"; status-derived names are bounded by HTTP itself.
    assert len(error_types - {"http_503"}) == 51
    assert total(s, "tollway_errors_total") == 62


def test_in_flight_gauge_follows_start_and_finish(metrics: Metrics) -> None:
    for _ in range(3):
        metrics.request_started("openai")
    metrics.request_started("anthropic")
    metrics.request_finished("openai")
    s = scrape(metrics)
    assert value(s, "tollway_requests_in_flight", client_api="openai") == 2
    assert value(s, "tollway_requests_in_flight", client_api="anthropic") == 1


def test_inter_event_histogram(metrics: Metrics) -> None:
    for gap in (0.002, 0.002, 0.03, 4.0):
        metrics.observe_inter_event(gap, "anthropic")
    s = scrape(metrics)
    assert value(s, "tollway_stream_inter_event_seconds_count", client_api="anthropic") == 4
    assert value(s, "tollway_stream_inter_event_seconds_bucket", client_api="anthropic", le="0.005") == 2
    assert value(s, "tollway_stream_inter_event_seconds_bucket", client_api="anthropic", le="0.05") == 3
    assert value(s, "tollway_stream_inter_event_seconds_bucket", client_api="anthropic", le="+Inf") == 4


def test_budget_cache_upstream_and_ledger_metrics(metrics: Metrics) -> None:
    metrics.set_budget_remaining("search", "tokens_per_day", 1000.0, limit=5000.0)
    metrics.set_budget_remaining("search", "tokens_per_day", 750.0)
    metrics.budget_rejected("search", "usd_per_month")
    metrics.budget_rejected(None, "requests_per_minute")
    for hit in (True, False, False):
        metrics.response_cache(hit)
    metrics.retry("anthropic", "claude-haiku-4-5")
    metrics.retry("anthropic", "claude-haiku-4-5")
    metrics.fallback("claude-haiku-4-5", "claude-sonnet-5-5")
    metrics.escalation("claude-haiku-4-5", "claude-opus-5-5")
    metrics.set_breaker_state("anthropic/claude-haiku-4-5", "open")
    metrics.set_breaker_state("openai/gpt-5-mini", "half_open")
    metrics.set_breaker_state("openai/gpt-5-mini", "closed")
    metrics.set_ledger(queue_depth=12, spool_size=3)

    s = scrape(metrics)
    assert value(s, "tollway_budget_remaining_tokens", team="search", window="tokens_per_day") == 750
    assert value(s, "tollway_budget_limit_tokens", team="search", window="tokens_per_day") == 5000
    assert value(s, "tollway_budget_rejections_total", team="search", window="usd_per_month") == 1
    assert value(s, "tollway_budget_rejections_total", team="none", window="requests_per_minute") == 1
    assert value(s, "tollway_response_cache_lookups_total", result="hit") == 1
    assert value(s, "tollway_response_cache_lookups_total", result="miss") == 2
    assert value(s, "tollway_retries_total", provider="anthropic", model="claude-haiku-4-5") == 2
    assert (
        value(s, "tollway_fallbacks_total", from_model="claude-haiku-4-5", to_model="claude-sonnet-5-5") == 1
    )
    assert (
        value(s, "tollway_escalations_total", from_model="claude-haiku-4-5", to_model="claude-opus-5-5") == 1
    )
    breaker = "tollway_deployment_breaker_state"
    haiku, mini = "anthropic/claude-haiku-4-5", "openai/gpt-5-mini"
    assert value(s, breaker, deployment=haiku, state="open") == 1
    assert value(s, breaker, deployment=haiku, state="closed") == 0
    assert value(s, breaker, deployment=haiku, state="half_open") == 0
    assert value(s, breaker, deployment=mini, state="closed") == 1  # the last state set wins
    assert value(s, breaker, deployment=mini, state="half_open") == 0
    assert value(s, breaker, deployment=mini, state="open") == 0
    assert value(s, "tollway_ledger_queue_depth") == 12
    assert value(s, "tollway_ledger_spool_events") == 3
    with pytest.raises(ValueError, match="ajar"):
        metrics.set_breaker_state("x", "ajar")


def test_no_created_series_and_no_request_ids_in_labels(metrics: Metrics) -> None:
    metrics.observe(event(request_id="req_secret_123"), team_name="t", route="r", upstream_s=0.1, ttft_s=0.1)
    body = metrics.render()[0].decode()
    assert "req_secret_123" not in body
    assert "_created" not in body


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, "2xx"), (299, "2xx"), (404, "4xx"), (429, "4xx"), (503, "5xx"), (0, "none")],
)
def test_status_class(status: int, expected: str) -> None:
    assert status_class(status) == expected


def test_latency_buckets_cover_long_generations() -> None:
    assert LATENCY_BUCKETS == tuple(sorted(LATENCY_BUCKETS))
    assert LATENCY_BUCKETS[-1] >= 600  # the default upstream read timeout
