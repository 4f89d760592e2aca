"""``promtool check metrics`` (Prometheus's naming linter) on real scrapes: nothing to report.

One scrape of a running gateway after varied traffic (a named model, a route, a stream, an error,
an end user, a limited team so every budget unit is exported, breaker states), and one render of
two worker processes' files merged (multiprocess mode), both fed to Debian's ``promtool``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.observability.metrics import Metrics
from tests.conftest import IN_CI
from tests.gateway import run_gateway
from tests.unit.test_metrics_multiprocess import SPECS, start_worker, stop_worker

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool_lint(body: str) -> subprocess.CompletedProcess[str]:
    if not Path(PROMTOOL).exists():
        message = "promtool is not installed (Debian: apt-get install -y prometheus)"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: fails rather than skips)")
        pytest.skip(message)
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60, check=False
    )


def families(body: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(body)}


def test_promtool_finds_nothing_in_a_scrape_after_traffic(tmp_path: Path) -> None:
    with run_gateway(tmp_path) as gw:
        admin = gw.admin()
        limits = {"requests_per_minute": 1000, "tokens_per_day": 1_000_000, "usd_per_day": "50"}
        team = admin.post("/admin/teams", json={"name": "linted", "limits": limits})
        assert team.status_code == 201, team.text
        key = admin.post("/admin/teams/linted/keys", json={"name": "promtool"}).json()["key"]
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
        client.chat.completions.create(
            model="gpt-5-mini", max_tokens=16, user="end-user-7", messages=[{"role": "user", "content": "hi"}]
        )
        client.chat.completions.create(
            model="auto", max_tokens=16, messages=[{"role": "user", "content": "Write a haiku about tolls."}]
        )
        stream = client.chat.completions.create(
            model="gpt-5-mini", max_tokens=16, stream=True, messages=[{"role": "user", "content": "count"}]
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])

        scrape = httpx.get(f"{gw.url}/metrics", timeout=30)
        assert scrape.status_code == 200
        body = scrape.text

    # The scrape holds what the linter is meant to judge, not an empty registry.
    names = families(body)
    for name in (
        "tollway_requests",
        "tollway_route_reasons",
        "tollway_key_requests",
        "tollway_end_user_requests",
        "tollway_time_to_first_token_seconds",
        "tollway_errors",
        "tollway_budget_remaining_tokens",
        "tollway_budget_remaining_requests",
        "tollway_budget_remaining_usd",
        "tollway_deployment_breaker_state",
        "process_resident_memory_bytes",
        "python_info",
    ):
        assert name in names, f"{name} missing from the scrape"
    assert 'tollway_end_user_requests_total{end_user="end-user-7"} 1.0' in body
    assert 'route="auto"' in body

    result = promtool_lint(body)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_promtool_finds_nothing_in_a_multiprocess_render(tmp_path: Path) -> None:
    workers = [start_worker(tmp_path, spec) for spec in SPECS]
    try:
        reader = Metrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path))
        body = reader.render()[0].decode()
    finally:
        for proc in workers:
            stop_worker(proc)
    names = families(body)
    assert {"tollway_requests", "tollway_deployment_breaker_state", "process_cpu_seconds"} <= names
    result = promtool_lint(body)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
