"""Multiprocess mode: two worker *processes* write to one PROMETHEUS_MULTIPROC_DIR, one render sums
them exactly, and the live gauges of workers that exited disappear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from app.observability.metrics import (
    MULTIPROC_ENV,
    Metrics,
    prepare_multiprocess_dir,
    remove_multiprocess_dir,
)
from tests.unit.test_metrics import scrape, total, value

REPO = Path(__file__).resolve().parents[2]

# One "worker": records known traffic, reports ready, stays alive until its stdin closes.
WORKER = """
import json, sys
from decimal import Decimal
from app.ledger.events import UsageEvent
from app.observability.metrics import Metrics, multiprocess_enabled

assert multiprocess_enabled(), "PROMETHEUS_MULTIPROC_DIR was not set before prometheus_client loaded"
spec = json.loads(sys.argv[1])
m = Metrics()
for i in range(spec["requests"]):
    m.observe(
        UsageEvent(
            request_id=f"{spec['name']}-{i}", team_id="t", key_id="k", client_format="anthropic",
            requested_model="auto", served_model="claude-haiku-4-5",
            input_tokens=spec["input"], output_tokens=spec["output"],
            cost_usd=Decimal(spec["cost"]), uncached_cost_usd=Decimal(spec["cost"]),
            latency_ms=spec["latency_ms"], status=spec["status"],
        ),
        team_name="search", route="auto", upstream_s=0.1, ttft_s=0.15,
    )
for _ in range(spec["in_flight"]):
    m.request_started("anthropic")
m.set_breaker_state("anthropic/claude-haiku-4-5", spec["breaker"])
m.set_ledger(spec["queue"], spec["spool"])
m.set_budget_remaining("search", "tokens_per_day", spec["remaining"], limit=1000.0)
print("ready", flush=True)
sys.stdin.readline()
"""

SPECS = [
    {
        "name": "a",
        "requests": 7,
        "input": 11,
        "output": 5,
        "cost": "0.25",
        "latency_ms": 120.0,
        "status": 200,
        "in_flight": 3,
        "breaker": "open",
        "queue": 4,
        "spool": 9,
        "remaining": 600.0,
    },
    {
        "name": "b",
        "requests": 5,
        "input": 13,
        "output": 2,
        "cost": "0.125",
        "latency_ms": 2000.0,
        "status": 200,
        "in_flight": 2,
        "breaker": "closed",
        "queue": 6,
        "spool": 9,
        "remaining": 550.0,
    },
]


def start_worker(directory: Path, spec: dict[str, object]) -> subprocess.Popen[str]:
    env = {**os.environ, MULTIPROC_ENV: str(directory), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(spec)],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop_worker(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def test_two_processes_sum_exactly_in_one_render(tmp_path: Path) -> None:
    # Started one after the other, so b's budget gauge is the most recent one.
    workers = [start_worker(tmp_path, spec) for spec in SPECS]
    try:
        reader = Metrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path))
        s = scrape(reader)
        labels = {
            "team": "search",
            "client_api": "anthropic",
            "route": "auto",
            "served_model": "claude-haiku-4-5",
            "served_tier": "none",
        }
        assert value(s, "tollway_requests_total", status_class="2xx", **labels) == 7 + 5
        tokens = {"team": "search", "served_model": "claude-haiku-4-5"}
        assert value(s, "tollway_tokens_total", type="input", **tokens) == 7 * 11 + 5 * 13
        assert value(s, "tollway_tokens_total", type="output", **tokens) == 7 * 5 + 5 * 2
        assert value(s, "tollway_cost_usd_total", **tokens) == 7 * 0.25 + 5 * 0.125  # exact in binary
        latency = {"client_api": "anthropic", "served_model": "claude-haiku-4-5"}
        assert value(s, "tollway_request_duration_seconds_count", **latency) == 12
        assert value(s, "tollway_request_duration_seconds_bucket", le="0.25", **latency) == 7
        assert value(s, "tollway_request_duration_seconds_bucket", le="2.5", **latency) == 12
        assert value(s, "tollway_time_to_first_token_seconds_count", served_model="claude-haiku-4-5") == 12
        # Gauges combine per their mode: in flight and queue add up, the breaker is the worst view,
        # the shared spool is not double counted, the budget is the latest refresh.
        assert value(s, "tollway_requests_in_flight", client_api="anthropic") == 3 + 2
        breaker = {"deployment": "anthropic/claude-haiku-4-5"}
        assert value(s, "tollway_deployment_breaker_state", state="open", **breaker) == 1
        assert value(s, "tollway_deployment_breaker_state", state="closed", **breaker) == 1  # the other one
        assert value(s, "tollway_ledger_queue_depth") == 4 + 6
        assert value(s, "tollway_ledger_spool_events") == 9
        assert value(s, "tollway_budget_remaining_tokens", team="search", window="tokens_per_day") == 550
        assert value(s, "tollway_budget_limit_tokens", team="search", window="tokens_per_day") == 1000
    finally:
        for proc in workers:
            stop_worker(proc)

    # Both workers exited: their in-flight requests, breaker views and queues are gone; what they
    # counted stays (counters never go back).
    s = scrape(reader)
    assert total(s, "tollway_requests_in_flight") == 0
    assert total(s, "tollway_deployment_breaker_state") == 0
    assert total(s, "tollway_ledger_queue_depth") == 0
    assert total(s, "tollway_requests_total") == 12
    assert total(s, "tollway_request_duration_seconds_count") == 12


def test_prepare_multiprocess_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # setenv first, so monkeypatch restores the variable's original state whatever the code sets.
    monkeypatch.setenv(MULTIPROC_ENV, "")
    monkeypatch.delenv(MULTIPROC_ENV)
    assert prepare_multiprocess_dir(workers=1) is None
    assert MULTIPROC_ENV not in os.environ

    made = prepare_multiprocess_dir(workers=2)
    assert made is not None and Path(made).is_dir()
    assert os.environ[MULTIPROC_ENV] == made
    remove_multiprocess_dir(made)
    assert not Path(made).exists()

    # An operator's directory is kept but emptied of a previous run's files.
    mine = tmp_path / "metrics"
    mine.mkdir()
    (mine / "counter_123.db").write_bytes(b"stale")
    (mine / "keep.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_ENV, str(mine))
    assert prepare_multiprocess_dir(workers=4) == str(mine)
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"]
    remove_multiprocess_dir(str(mine))  # not one we made: left alone
    assert mine.is_dir()
