"""Issue 7's proof: ``/metrics`` after known traffic, counted exactly, from a gateway running two
worker processes (``tollway serve --workers 2``: prometheus-client's multiprocess files, merged at
scrape time).

The traffic, sent with the official SDKs over fresh connections so that both workers take part:
non-streaming and streaming requests to two models in both client formats, a few 4xx (a bad key, an
unknown model, ``max_tokens`` above the model's maximum) and one budget refusal. Then every scrape,
whichever worker serves it, says exactly: requests by status class, tokens by type equal to the
usage the clients got back, cost equal to the ``Decimal`` sum of the ledger rows (as a float),
one time-to-first-token observation per stream, one latency observation per request, one budget
rejection. Each worker's own metric file shows that it served part of the traffic, so the numbers
really are a merge.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import asyncpg
import httpx
import openai
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import Call, Gateway, Stack, anthropic_call, fresh_database, openai_call, redis_db_url

pytestmark = pytest.mark.slow

MODELS = {"anthropic": "claude-haiku-5-5", "openai": "gpt-5-mini"}
ROUNDS_MAX = 5  # rounds of the known traffic until both workers have served some of it


@pytest.fixture(scope="module")
async def database(postgres_server_url: str) -> AsyncIterator[str]:
    async with fresh_database(postgres_server_url) as url:
        yield url


@dataclass
class Setup:
    stack: Stack
    gateway: Gateway
    metrics_dir: Path


@pytest.fixture(scope="module")
def setup(database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work: Path = tmp_path_factory.mktemp("gateway-metrics")
    metrics_dir = work / "metrics"
    with Stack(work, database_url=database, redis_url=redis_db_url(redis_url)) as stack:
        # Our own multiprocess directory (emptied by `tollway serve`), to look at each worker's file.
        gateway = stack.start_gateway(workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
        yield Setup(stack, gateway, metrics_dir)


# ---- the known traffic -----------------------------------------------------------------------------


@dataclass
class Expected:
    calls: list[Call] = field(default_factory=list)
    rejected_teams: Counter[str] = field(default_factory=Counter)

    def served(self) -> list[Call]:
        return [c for c in self.calls if c.status == 200]

    def status_classes(self) -> Counter[str]:
        return Counter(f"{c.status // 100}xx" for c in self.calls)


async def one_round(gateway: Gateway, key: str, tight_key: str, expected: Expected) -> None:
    """K=8 non-streaming + M=6 streaming requests over two models, 3 client errors, 1 budget refusal;
    every request on a connection of its own."""

    def claude(k: str = key) -> Any:
        return anthropic.AsyncAnthropic(base_url=gateway.url, api_key=k, max_retries=0, timeout=60)

    def gpt(k: str = key) -> Any:
        return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=k, max_retries=0, timeout=60)

    n = len(expected.calls)
    requests: list[Any] = []
    for i in range(4):
        words = {"x-sim-output-tokens": str(10 + i)}
        prompt = f"Metrics request {n + i}: how many tokens is this?"
        requests.append(anthropic_call(claude(), model=MODELS["anthropic"], prompt=prompt, max_tokens=64))
        requests.append(openai_call(gpt(), model=MODELS["openai"], prompt=prompt, max_tokens=64, headers=words))
    for i in range(3):
        words = {"x-sim-output-tokens": str(20 + i)}
        prompt = f"Metrics stream {n + i}: tell me a story."
        requests.append(
            anthropic_call(
                claude(), model=MODELS["anthropic"], prompt=prompt, max_tokens=64, stream=True, headers=words
            )
        )
        requests.append(
            openai_call(gpt(), model=MODELS["openai"], prompt=prompt, max_tokens=64, stream=True, headers=words)
        )
    # 401: not a key; 404: no such model; 400: more output than the model can produce.
    requests.append(anthropic_call(claude("tw-not-a-key"), model=MODELS["anthropic"], prompt="x", max_tokens=8))
    requests.append(openai_call(gpt(), model="no-such-model", prompt="x", max_tokens=8))
    requests.append(anthropic_call(claude(), model=MODELS["anthropic"], prompt="x", max_tokens=10_000_000))
    # 429: a team whose whole budget is smaller than this request's worst case.
    requests.append(anthropic_call(claude(tight_key), model=MODELS["anthropic"], prompt="x", max_tokens=64))
    calls = await asyncio.gather(*requests)
    assert [c.status for c in calls[-4:]] == [401, 404, 400, 429], [(c.status, c.error) for c in calls[-4:]]
    assert all(c.status == 200 for c in calls[:-4]), [(c.status, c.error) for c in calls[:-4]]
    expected.calls.extend(calls)
    expected.rejected_teams["tight"] += 1


# ---- reading metrics -------------------------------------------------------------------------------


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(gateway: Gateway) -> Samples:
    """One scrape on a fresh connection (so either worker may answer), as name → [(labels, value)]."""
    response = httpx.get(gateway.url + "/metrics", timeout=30, headers={"connection": "close"})
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for sample_labels, value in samples.get(name, []):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            out[sample_labels[label]] = out.get(sample_labels[label], 0.0) + value
    return {k: v for k, v in out.items() if v}


def requests_per_worker(metrics_dir: Path) -> dict[int, float]:
    """tollway_requests_total as each worker's own file has it."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[-1])
        for metric in MultiProcessCollector.merge([str(path)], accumulate=True):
            if metric.name == "tollway_requests":
                counts[pid] = sum(s.value for s in metric.samples if s.name == "tollway_requests_total")
    return counts


async def ledger_costs(database: str, rows: int, timeout_s: float = 15) -> Decimal:
    conn = await asyncpg.connect(database.replace("postgresql+asyncpg", "postgresql"))
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            count = await conn.fetchval("SELECT count(*) FROM usage_events")
            if count >= rows or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert count == rows, f"{count} ledger rows, expected {rows}"
        return Decimal(await conn.fetchval("SELECT coalesce(sum(cost_usd), 0) FROM usage_events"))
    finally:
        await conn.close()


# ---- the test --------------------------------------------------------------------------------------


async def test_metrics_count_known_traffic_exactly_across_two_workers(setup: Setup, database: str) -> None:
    stack, gateway = setup.stack, setup.gateway
    team = stack.create_team("metrics-main")
    tight = stack.create_team("tight", limits={"tokens_per_day": 10})
    key, _ = stack.create_key(team["id"])
    tight_key, _ = stack.create_key(tight["id"])

    expected = Expected()
    for _ in range(ROUNDS_MAX):
        await one_round(gateway, key, tight_key, expected)
        await asyncio.sleep(0.2)  # metrics are counted right after each response is sent
        if len([pid for pid, n in requests_per_worker(setup.metrics_dir).items() if n > 0]) >= 2:
            break
    calls = expected.calls
    streams = [c for c in expected.served() if c.stream]
    assert streams and len(streams) < len(expected.served())

    # Wait until the last request has been counted, then every scrape must agree to the unit.
    deadline = time.monotonic() + 10
    counted = total(await asyncio.to_thread(scrape, gateway), "tollway_requests_total")
    while counted < len(calls) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # another process: polling is all there is
        counted = total(await asyncio.to_thread(scrape, gateway), "tollway_requests_total")
    scrapes = [await asyncio.to_thread(scrape, gateway) for _ in range(4)]
    samples = scrapes[0]

    # Both workers served part of the traffic, and the scrape is the sum of their files.
    per_worker = requests_per_worker(setup.metrics_dir)
    workers = set(gateway.proc.children())
    serving = {pid for pid, n in per_worker.items() if n > 0}
    assert len(serving) == 2 and serving <= workers, (per_worker, workers)
    assert sum(per_worker.values()) == len(calls)

    # Requests by status class.
    assert by_label(samples, "tollway_requests_total", "status_class") == {
        k: float(v) for k, v in expected.status_classes().items()
    }
    assert total(samples, "tollway_requests_total", team="metrics-main", status_class="2xx") == len(expected.served())
    assert total(samples, "tollway_requests_total", team="none", status_class="4xx") == sum(
        1 for c in calls if c.status == 401
    )
    assert by_label(samples, "tollway_errors_total", "error_type") == {
        k: float(v)
        for k, v in Counter(
            {401: "authentication", 404: "not_found", 400: "invalid_request", 429: "rate_limit"}[c.status]
            for c in calls
            if c.status != 200
        ).items()
    }

    # Tokens by type, per model: exactly the usage the clients were told.
    for api, model in MODELS.items():
        served = [c for c in expected.served() if c.api == api]
        tokens = by_label(samples, "tollway_tokens_total", "type", served_model=model)
        assert tokens == {
            "input": float(sum(c.input_tokens for c in served)),
            "output": float(sum(c.output_tokens for c in served)),
        }, model  # prompts this short are never cached: no cache_write / cache_read series

    # Cost: the ledger's exact Decimal sum, as a float.
    costs = await ledger_costs(database, rows=sum(1 for c in calls if c.status != 401))
    assert costs > 0
    assert total(samples, "tollway_cost_usd_total") == pytest.approx(float(costs), rel=1e-9, abs=1e-12)

    # Histograms: one latency observation per request, one upstream observation per served
    # request, one time-to-first-token observation per stream.
    assert total(samples, "tollway_request_duration_seconds_count") == len(calls)
    assert total(samples, "tollway_upstream_duration_seconds_count") == len(expected.served())
    assert total(samples, "tollway_time_to_first_token_seconds_count") == len(streams)
    assert by_label(samples, "tollway_time_to_first_token_seconds_count", "served_model") == {
        model: float(sum(1 for c in streams if c.api == api)) for api, model in MODELS.items()
    }
    for name in ("tollway_request_duration_seconds", "tollway_time_to_first_token_seconds"):
        infinite = total(samples, f"{name}_bucket", le="+Inf")
        assert infinite == total(samples, f"{name}_count")
    # One inter-event observation per write to the client: events that arrive in one upstream read
    # go out together, so a stream has at least one write and at most one per event.
    writes = total(samples, "tollway_stream_inter_event_seconds_count")
    assert len(streams) <= writes <= sum(c.deltas + 8 for c in streams)

    # Budget: one refusal per round, for the tight team's daily window; its remaining budget is exported.
    assert by_label(samples, "tollway_budget_rejections_total", "window", team="tight") == {
        "tokens_per_day": float(expected.rejected_teams["tight"])
    }
    assert total(samples, "tollway_budget_rejections_total") == expected.rejected_teams["tight"]
    assert total(samples, "tollway_budget_limit_tokens", team="tight", window="tokens_per_day") == 10
    assert total(samples, "tollway_requests_in_flight") == 0

    # Whichever worker answered, every scrape says the same.
    checked = (
        "tollway_requests_total",
        "tollway_tokens_total",
        "tollway_cost_usd_total",
        "tollway_request_duration_seconds_count",
        "tollway_time_to_first_token_seconds_count",
        "tollway_budget_rejections_total",
    )
    for other in scrapes[1:]:
        for name in checked:
            assert sorted(map(str, other[name])) == sorted(map(str, samples[name])), name
