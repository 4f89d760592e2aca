"""Issue 3's ledger proof, through a whole gateway process: exactly one ``usage_events`` row per
request a client saw, even when PostgreSQL goes away mid-load, and nothing lost on shutdown.

The gateway reaches PostgreSQL through a TCP proxy in the test (``tests.procs.BackgroundProxy``).
Mid-burst the proxy is cut — every connection closed, new ones refused — for a few seconds, then
restored. The burst mixes what the ledger must record: JSON and streamed answers in both client
formats, upstream errors (``x-sim-error``), budget refusals, and streams the client abandons. Each
client notes the ``request-id`` header it got; afterwards the ledger holds exactly those ids, once
each, with the status, flags and usage the client saw, and costs whose ``Decimal`` sum is the admin
usage report's total.

Graceful shutdown: a gateway holding unwritten events in its queue gets SIGTERM and writes them
before it exits; with the database cut at that moment they go to the disk spool instead, and the
next gateway started on that spool replays them.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import asyncpg
import openai
import pytest
import redis.asyncio

from app.config import load_catalog
from tests.procs import (
    BackgroundProxy,
    Call,
    Gateway,
    Stack,
    anthropic_call,
    fresh_database,
    openai_call,
    redis_db_url,
)

pytestmark = pytest.mark.slow

SPOOL_STREAM = "tw:ledger:spool"  # where a gateway with Redis spools events (app/services.py)
MODELS = {"anthropic": "claude-haiku-5-5", "openai": "gpt-5-mini"}
CUT_S = 3.0
# The upstream-500 requests must not open the circuit breaker of the model they share with the
# successful ones (three failures would, by default): the subject here is the ledger, not routing.
NO_BREAKER = {"cooldown_failures": 1_000_000}


# ---- the stack: simulator, PostgreSQL behind a proxy, Redis ----------------------------------------


@pytest.fixture(scope="module")
async def database(postgres_server_url: str) -> AsyncIterator[str]:
    async with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(database: str) -> Iterator[BackgroundProxy]:
    with BackgroundProxy(database) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def stack(proxy: BackgroundProxy, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work: Path = tmp_path_factory.mktemp("gateway-ledger")
    with Stack(work, database_url=proxy.url, redis_url=redis_db_url(redis_url)) as stack:
        yield stack


@pytest.fixture
def restore(proxy: BackgroundProxy) -> Iterator[None]:
    """Whatever a test does to the database connection, the next test finds it up."""
    yield
    if proxy.down:
        proxy.restore()


async def query(database: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Straight to PostgreSQL, not through the proxy."""
    conn = await asyncpg.connect(database.replace("postgresql+asyncpg", "postgresql"))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def rows_by_request(database: str, request_ids: list[str]) -> dict[str, list[asyncpg.Record]]:
    records = await query(database, "SELECT * FROM usage_events WHERE request_id = ANY($1::text[])", request_ids)
    found: dict[str, list[asyncpg.Record]] = {}
    for record in records:
        found.setdefault(record["request_id"], []).append(record)
    return found


async def wait_for_rows(database: str, request_ids: list[str], timeout_s: float) -> dict[str, list[Any]]:
    """The ledger rows of ``request_ids`` once every one has arrived (or the timeout passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await rows_by_request(database, request_ids)
        if len(found) >= len(set(request_ids)) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def spool_length(redis_url: str) -> int:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        return int(await client.xlen(SPOOL_STREAM))
    finally:
        await client.aclose()


# ---- the traffic -----------------------------------------------------------------------------------


class Traffic:
    """A mix of every kind of request the ledger records, against one gateway."""

    KINDS = (
        "json-anthropic",
        "json-openai",
        "stream-anthropic",
        "stream-openai",
        "upstream-400",
        "upstream-500",
        "aborted",
        "refused",
    )

    def __init__(self, gateway: Gateway, key: str, refused_key: str, seed: int = 0) -> None:
        self.anthropic = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0, timeout=60)
        self.openai = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=60)
        self.refused = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=refused_key, max_retries=0, timeout=60)
        self.rng = random.Random(seed)
        self.calls: list[Call] = []

    async def send(self, i: int, kind: str | None = None) -> Call:
        kind = kind or self.KINDS[i % len(self.KINDS)]
        prompt = f"Ledger request {i}: {uuid.uuid4().hex}"
        words = {"x-sim-output-tokens": str(self.rng.randint(5, 30))}
        if kind.startswith(("json", "stream")):
            api = kind.split("-")[1]
            send = anthropic_call if api == "anthropic" else openai_call
            client = self.anthropic if api == "anthropic" else self.openai
            call = await send(
                client,
                model=MODELS[api],
                prompt=prompt,
                max_tokens=64,
                stream=kind.startswith("stream"),
                headers=words,
            )
        elif kind == "upstream-400":  # the upstream refuses the request: not retried
            call = await anthropic_call(
                self.anthropic,
                model=MODELS["anthropic"],
                prompt=prompt,
                max_tokens=64,
                headers={"x-sim-error": "400"},
            )
        elif kind == "upstream-500":  # the upstream fails: retried, then a 502
            call = await openai_call(
                self.openai,
                model=MODELS["openai"],
                prompt=prompt,
                max_tokens=64,
                headers={"x-sim-error": "500"},
            )
        elif kind == "aborted":  # the client walks away mid-stream
            call = await anthropic_call(
                self.anthropic,
                model=MODELS["anthropic"],
                prompt=prompt,
                max_tokens=64,
                stream=True,
                abort_after=3,
                headers={"x-sim-output-tokens": "60", "x-sim-tokens-per-second": "100"},
            )
        else:  # a team whose budget cannot fit any request
            call = await anthropic_call(self.refused, model=MODELS["anthropic"], prompt=prompt, max_tokens=64)
        call.label = kind
        self.calls.append(call)
        return call

    async def burst(self, seconds: float, *, rate: float = 20, concurrency: int = 10) -> None:
        """Requests arriving at ``rate`` per second (at most ``concurrency`` at once) for ``seconds``."""
        slots = asyncio.Semaphore(concurrency)
        tasks: list[asyncio.Task[Call]] = []

        async def one(i: int) -> Call:
            async with slots:
                return await self.send(i)

        start = time.monotonic()
        i = len(self.calls)
        while time.monotonic() - start < seconds:
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)

    async def aclose(self) -> None:
        for client in (self.anthropic, self.openai, self.refused):
            await client.close()


def expected_row(call: Call) -> dict[str, Any]:
    """What the ledger must say about a request its client saw."""
    kind = call.label
    if kind.startswith(("json", "stream")):
        return {"status": 200, "error_type": None, "streamed": call.stream, "aborted": False}
    if kind == "aborted":
        return {"status": 499, "error_type": "client_aborted", "streamed": True, "aborted": True}
    if kind == "upstream-400":
        return {"status": 400, "error_type": "invalid_request", "streamed": False, "aborted": False}
    if kind == "upstream-500":
        return {"status": 502, "streamed": False, "aborted": False}
    assert kind == "refused"
    return {"status": 429, "error_type": "rate_limit", "streamed": False, "aborted": False}


def check_rows(calls: list[Call], found: dict[str, list[Any]]) -> None:
    """Exactly one row per request id, saying what the client saw."""
    no_id = Counter((c.label, c.status) for c in calls if not c.request_id)
    assert not no_id, f"responses without a request-id header: {no_id}"
    missing = [c.label for c in calls if c.request_id not in found]
    assert not missing, f"{len(missing)} of {len(calls)} requests have no ledger row: {Counter(missing)}"
    doubled = {rid: len(rows) for rid, rows in found.items() if len(rows) != 1}
    assert not doubled, f"requests recorded more than once: {doubled}"
    assert len({c.request_id for c in calls}) == len(calls), "request ids are unique"

    prices = load_catalog(None).models
    for call in calls:
        (row,) = found[call.request_id]
        for column, value in expected_row(call).items():
            assert row[column] == value, (call.label, column, row[column], value)
        assert row["client_format"] == call.api
        if call.status == 200 and not call.aborted:
            assert row["served_model"] == MODELS[call.api]
            billed_input = (
                row["input_tokens"]
                + row["cache_write_5m_tokens"]
                + row["cache_write_1h_tokens"]
                + row["cache_read_tokens"]
            )
            assert (billed_input, row["output_tokens"]) == (call.input_tokens, call.output_tokens)
            # The price table, applied by hand (prompts this short are never cached).
            price = prices[MODELS[call.api]].prices
            expected = (call.input_tokens * price.input + call.output_tokens * price.output) / Decimal(10**6)
            assert row["cost_usd"] == expected.quantize(Decimal("1e-10")), call.label
        elif call.status != 200:
            assert row["cost_usd"] == 0 and row["output_tokens"] == 0, call.label


async def report_total(gateway: Gateway, admin_key: str) -> dict[str, Any]:
    async with gateway.async_client(admin_key) as admin:
        response = await admin.get("/admin/usage", params={"group_by": "model"})
    assert response.status_code == 200, response.text
    return dict(response.json()["total"])


def new_teams(stack: Stack, gateway: Gateway) -> tuple[str, str]:
    """A team with no limits, and one whose budget fits no request: their keys."""
    served = stack.create_team(gateway=gateway)
    refused = stack.create_team(limits={"tokens_per_day": 10}, gateway=gateway)
    return stack.create_key(served["id"], gateway=gateway)[0], stack.create_key(refused["id"], gateway=gateway)[0]


async def warm(traffic: Traffic) -> None:
    """One request of every kind: both keys are now in the gateway's key cache."""
    await asyncio.gather(*(traffic.send(i, kind) for i, kind in enumerate(Traffic.KINDS)))


async def during(seconds: float, action: Callable[[], Awaitable[None]]) -> None:
    await asyncio.sleep(seconds)
    await action()


# ---- the tests ---------------------------------------------------------------------------------------


async def test_exactly_one_row_per_request_while_postgres_is_cut_mid_load(
    stack: Stack, proxy: BackgroundProxy, database: str, restore: None
) -> None:
    # Keys stay cached through the outage here, so that every request of the burst is served and
    # must be recorded (what a shorter key cache does during an outage is the next test's subject).
    gateway = await asyncio.to_thread(stack.start_gateway, key_cache_ttl_s=60, **NO_BREAKER)
    key, refused_key = new_teams(stack, gateway)
    traffic = Traffic(gateway, key, refused_key, seed=11)
    redis_url = stack.redis_url or ""
    seen_while_cut: dict[str, Any] = {}

    async def cut_then_restore() -> None:
        await asyncio.to_thread(proxy.cut)
        deadline = time.monotonic() + CUT_S
        async with gateway.async_client() as client:
            while time.monotonic() < deadline:
                seen_while_cut["spooled"] = max(seen_while_cut.get("spooled", 0), await spool_length(redis_url))
                ready = await client.get("/readyz")
                seen_while_cut.setdefault("readyz", ready.status_code)
                await asyncio.sleep(0.2)
        await asyncio.to_thread(proxy.restore)

    try:
        await warm(traffic)
        # 2 s healthy, CUT_S without a database, then healthy again until the burst ends.
        await asyncio.gather(traffic.burst(2 + CUT_S + 2), during(2, cut_then_restore))
        calls = traffic.calls
        assert Counter(c.label for c in calls).keys() == set(Traffic.KINDS)
        unexpected = [(c.label, c.status) for c in calls if c.status != _client_status(c)]
        assert not unexpected, f"requests answered wrongly during the outage: {Counter(unexpected)}"
        assert seen_while_cut["spooled"] > 0, "events made during the cut went to the Redis spool"
        assert seen_while_cut["readyz"] == 503, "not ready while the database is unreachable"

        found = await wait_for_rows(database, [c.request_id for c in calls], timeout_s=40)
        check_rows(calls, found)
        total_rows = await query(database, "SELECT count(*) AS n FROM usage_events")
        assert total_rows[0]["n"] == len(calls), "no row for a request nobody made"
        assert await spool_length(redis_url) == 0, "the spool was replayed and emptied"

        # Costs: the Decimal sum of the rows is the report's total, to the last digit.
        costs = sum((rows[0]["cost_usd"] for rows in found.values()), Decimal(0))
        total = await report_total(gateway, stack.admin_key)
        assert Decimal(total["cost_usd"]) == costs > 0
        assert total["requests"] == len(calls)
        assert total["errors"] == sum(1 for c in calls if expected_row(c)["status"] >= 400)
    finally:
        await traffic.aclose()
        await asyncio.to_thread(stack.stop, gateway.proc)


def _client_status(call: Call) -> int:
    """The HTTP status the client should have seen."""
    status = expected_row(call)["status"]
    return 200 if status == 499 else int(status)


async def test_requests_are_served_while_postgres_is_cut(
    stack: Stack, proxy: BackgroundProxy, database: str, restore: None
) -> None:
    """The request path never needs the database (docs/architecture.md: keys are cached in process,
    the ledger spools): an outage longer than the default key-cache TTL (2 s) must not turn valid
    keys into errors, or clients see request ids the ledger never records."""
    gateway = await asyncio.to_thread(stack.start_gateway, **NO_BREAKER)  # default key-cache TTL
    key, refused_key = new_teams(stack, gateway)
    traffic = Traffic(gateway, key, refused_key, seed=12)
    try:
        await warm(traffic)
        await asyncio.to_thread(proxy.cut)
        await traffic.burst(CUT_S + 1, rate=10, concurrency=4)
        await asyncio.to_thread(proxy.restore)
        during_cut = traffic.calls[len(Traffic.KINDS) :]
        unexpected = Counter(
            (c.label, c.status, c.error_message[:40]) for c in during_cut if c.status != _client_status(c)
        )
        no_id = Counter((c.label, c.status) for c in during_cut if not c.request_id)
        assert not unexpected and not no_id, (
            f"{sum(unexpected.values())} of {len(during_cut)} requests failed while the database was down "
            f"(kind, status, message): {sorted(unexpected.items())[:5]}; "
            f"{sum(no_id.values())} responses had no request-id header: {sorted(no_id.items())[:5]}"
        )
        found = await wait_for_rows(database, [c.request_id for c in traffic.calls], timeout_s=40)
        check_rows(traffic.calls, found)
    finally:
        if proxy.down:
            await asyncio.to_thread(proxy.restore)
        await traffic.aclose()
        await asyncio.to_thread(stack.stop, gateway.proc)


async def test_sigterm_writes_the_queued_events_before_exiting(stack: Stack, database: str) -> None:
    # Nothing is written until a minute has passed or 100,000 events wait: everything stays queued.
    gateway = await asyncio.to_thread(
        stack.start_gateway,
        ledger_flush_interval_s=60,
        ledger_batch_size=100_000,
        key_cache_ttl_s=60,
        **NO_BREAKER,
    )
    key, refused_key = new_teams(stack, gateway)
    traffic = Traffic(gateway, key, refused_key, seed=13)
    try:
        await asyncio.gather(*(traffic.send(i) for i in range(40)))
    finally:
        await traffic.aclose()
    ids = [c.request_id for c in traffic.calls]
    await asyncio.sleep(0.5)
    assert await rows_by_request(database, ids) == {}, "the events are still queued in the gateway"

    code = await asyncio.to_thread(stack.stop, gateway.proc, sig=signal.SIGTERM, timeout=30)
    assert code in (0, -signal.SIGTERM), gateway.proc.log_tail()  # uvicorn re-raises the signal
    check_rows(traffic.calls, await rows_by_request(database, ids))


async def test_sigterm_without_a_database_spools_to_disk_and_the_next_gateway_replays(
    stack: Stack, proxy: BackgroundProxy, database: str, restore: None
) -> None:
    spool_dir = stack.work_dir / f"spool-{uuid.uuid4().hex[:6]}"
    no_redis: dict[str, Any] = {"redis_url": None, "spool_dir": spool_dir, **NO_BREAKER}  # disk spool
    gateway = await asyncio.to_thread(
        stack.start_gateway, ledger_flush_interval_s=60, ledger_batch_size=100_000, **no_redis
    )
    served = stack.create_team(gateway=gateway)
    key = stack.create_key(served["id"], gateway=gateway)[0]
    traffic = Traffic(gateway, key, key, seed=14)
    kinds = [k for k in Traffic.KINDS if k != "refused"]  # budgets need Redis
    try:
        await asyncio.gather(*(traffic.send(i, kinds[i % len(kinds)]) for i in range(30)))
    finally:
        await traffic.aclose()
    ids = [c.request_id for c in traffic.calls]

    await asyncio.to_thread(proxy.cut)
    code = await asyncio.to_thread(stack.stop, gateway.proc, sig=signal.SIGTERM, timeout=30)
    assert code in (0, -signal.SIGTERM), gateway.proc.log_tail()  # uvicorn re-raises the signal
    spooled = [line for path in spool_dir.glob("segment-*.jsonl") for line in path.read_text().splitlines()]
    assert len(spooled) == len(ids), "shutdown drained the queue into the spool"
    assert all(rid in "".join(spooled) for rid in ids)

    await asyncio.to_thread(proxy.restore)
    assert await rows_by_request(database, ids) == {}
    successor = await asyncio.to_thread(stack.start_gateway, **no_redis)
    try:
        found = await wait_for_rows(database, ids, timeout_s=30)
        check_rows(traffic.calls, found)
        deadline = time.monotonic() + 10
        segments = list(spool_dir.glob("segment-*.jsonl"))
        while segments and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # another process's files: nothing to wait on but the clock
            segments = list(spool_dir.glob("segment-*.jsonl"))
        assert not segments, "replayed segments are deleted"
    finally:
        await asyncio.to_thread(stack.stop, successor.proc)
