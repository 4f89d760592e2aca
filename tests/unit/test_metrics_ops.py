"""Issue 15's metrics: one unit per name, the breaker as labelled states, served tier, route
decisions, per-key and per-end-user counters with capped labels, process metrics, escalation counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from app.budgets.windows import WINDOW_NAMES
from app.observability.metrics import BUDGET_UNITS, OTHER, Metrics
from app.observability.route_reason import route_reason_key
from tests.unit.test_metrics import event, scrape, total, value
from tests.unit.test_metrics_multiprocess import SPECS, start_worker, stop_worker


def observe(metrics: Metrics, route: str | None = "auto", **fields: object) -> None:
    metrics.observe(event(**fields), team_name="t", route=route, upstream_s=None, ttft_s=None)


def test_every_budget_window_has_a_unit_and_each_unit_its_own_metric() -> None:
    assert set(BUDGET_UNITS) == set(WINDOW_NAMES)
    metrics = Metrics(registry=CollectorRegistry())
    for window in WINDOW_NAMES:
        metrics.set_budget_remaining("search", window, 7.0, limit=9.0)
    s = scrape(metrics)
    for window, unit in BUDGET_UNITS.items():
        assert value(s, f"tollway_budget_remaining_{unit}", team="search", window=window) == 7
        assert value(s, f"tollway_budget_limit_{unit}", team="search", window=window) == 9
        for other in {"tokens", "requests", "usd"} - {unit}:  # never under another unit's name
            assert (f"tollway_budget_remaining_{other}", frozenset({("team", "search"), ("window", window)})) not in s
    assert not any(name in ("tollway_budget_remaining", "tollway_budget_limit") for name, _ in s)
    with pytest.raises(ValueError, match="hourly"):
        metrics.set_budget_remaining("search", "hourly", 1.0)


def test_breaker_state_is_one_labelled_state_per_deployment() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    metrics.set_breaker_state("openai/gpt-5", "half_open")
    s = scrape(metrics)
    states = {dict(labels)["state"]: v for (name, labels), v in s.items() if name == "tollway_deployment_breaker_state"}
    assert states == {"closed": 0, "half_open": 1, "open": 0}


def test_served_tier_comes_from_the_catalogue_mapping() -> None:
    metrics = Metrics(registry=CollectorRegistry(), model_tiers={"claude-haiku-4-5": "small"})
    observe(metrics)
    observe(metrics, served_model="not-in-the-catalogue")
    observe(metrics, served_model=None, status=429, error_type="budget")
    s = scrape(metrics)
    assert total(s, "tollway_requests_total", served_tier="small") == 1
    assert total(s, "tollway_requests_total", served_tier="none") == 2


@pytest.mark.parametrize(
    ("reason", "key"),
    [
        ("route=auto task=code src=classifier tier>=medium p=0.41/0.93 q=0.8 cheapest",
         "route=auto task=code src=classifier tier>=medium"),
        ("route=auto task=chat src=header tier>=small downgraded=budget sticky=gpt-5",
         "route=auto task=chat src=header tier>=small downgraded=budget"),
        ("explicit", "explicit"),
        (None, "none"),
        ("", "none"),
    ],
)  # fmt: skip
def test_route_reason_key_keeps_the_decision_only(reason: str | None, key: str) -> None:
    assert route_reason_key(reason) == key


def test_route_reasons_are_counted_by_decision_and_capped() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    for p in ("0.41/0.93", "0.12/0.88"):  # different probabilities, one decision
        observe(metrics, route_reason=f"route=auto task=code src=classifier tier>=medium p={p} cheapest")
    observe(metrics, route=None, route_reason="explicit")
    for i in range(60):
        observe(metrics, route_reason=f"route=auto task=t{i} src=header tier>=small cheapest")
    s = scrape(metrics)
    decision = "route=auto task=code src=classifier tier>=medium"
    assert value(s, "tollway_route_reasons_total", route="auto", reason=decision) == 2
    assert value(s, "tollway_route_reasons_total", route="none", reason="explicit") == 1
    reasons = {dict(labels)["reason"] for (name, labels) in s if name == "tollway_route_reasons_total"}
    assert len(reasons) == 51 and OTHER in reasons  # 50 distinct, then "other"
    assert total(s, "tollway_route_reasons_total") == 63


def test_keys_and_end_users_are_counted_with_capped_labels() -> None:
    metrics = Metrics(registry=CollectorRegistry(), key_label_cap=2, end_user_label_cap=2)
    tokens = {"input_tokens": 10, "output_tokens": 5, "cache_read_tokens": 3, "cache_write_1h_tokens": 2}
    for key, user in (("k1", "alice"), ("k1", "alice"), ("k2", "bob"), ("k3", "carol"), ("k4", "d" * 300)):
        observe(metrics, key_id=key, end_user=user, **tokens)
    observe(metrics, key_id=None, end_user=None)  # nothing to count per key or user
    s = scrape(metrics)
    assert value(s, "tollway_key_requests_total", key_id="k1") == 2
    assert value(s, "tollway_key_tokens_total", key_id="k1") == 40
    assert value(s, "tollway_key_requests_total", key_id=OTHER) == 2  # k3 and k4, past the cap
    assert value(s, "tollway_end_user_requests_total", end_user="alice") == 2
    assert value(s, "tollway_end_user_tokens_total", end_user=OTHER) == 40
    assert total(s, "tollway_key_requests_total") == total(s, "tollway_end_user_requests_total") == 5
    body = metrics.render()[0].decode()
    assert "d" * 65 not in body


def test_long_end_user_ids_are_cut_to_64_characters() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    observe(metrics, end_user="u" * 300)
    assert value(scrape(metrics), "tollway_end_user_requests_total", end_user="u" * 64) == 1


def test_process_metrics_are_exported_in_both_modes(tmp_path: Path) -> None:
    single = scrape(Metrics(registry=CollectorRegistry()))
    names = {name for name, _ in single}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names
    assert value(single, "process_resident_memory_bytes") > 0

    workers = [start_worker(tmp_path, spec) for spec in SPECS]
    try:
        merged = scrape(Metrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path)))
    finally:
        for proc in workers:
            stop_worker(proc)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "tollway_requests_total"} <= {
        name for name, _ in merged
    }


def test_escalation_counts_sum_each_pair() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    assert metrics.escalation_counts() == {"total": 0, "pairs": []}
    metrics.escalation("haiku", "sonnet")
    metrics.escalation("haiku", "sonnet")
    metrics.escalation("sonnet", "opus")
    assert metrics.escalation_counts() == {
        "total": 3,
        "pairs": [{"from": "haiku", "to": "sonnet", "count": 2}, {"from": "sonnet", "to": "opus", "count": 1}],
    }
