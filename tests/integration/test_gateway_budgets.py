"""Issue 4's proof, through whole gateways: 4 gateway processes sharing one Redis and one PostgreSQL
database, 200 concurrent requests (official SDKs, both client formats, round-robin over the four)
against a team token budget that fits about 50 of them in strict mode.

Each scenario uses a fresh team. A client whose request is refused only because other requests'
reservations were in flight retries, as a client honouring ``retry-after`` would; a client refused
because settled usage leaves no room stops. Then, for non-streaming, streaming and aborted-stream
traffic:

* the settled total — what the clients were told they used, the ledger's total for the team
  (``GET /admin/usage``), the limiter's ``used`` in Redis (``GET /v1/me``) — is one number, and it
  never exceeds the budget;
* the budget ends used to within one request's worst case (or every request was served);
* every refusal is a 429 in the client's own error format naming the window, the settled usage, the
  limit and this request's worst case, with a ``retry-after`` that tells the truth;
* nothing stays reserved in Redis once the responses are over.

Finally a gateway is killed with SIGKILL mid-stream: its reservations are released once they
expire, by the other gateways, and nothing leaks.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis.asyncio

from app.budgets.windows import team_keys
from tests.procs import Call, Gateway, Stack, anthropic_call, fresh_database, openai_call, redis_db_url

pytestmark = pytest.mark.slow

GATEWAYS = 4
REQUESTS = 200
MAX_TOKENS = 100
PROMPT = "Request {:03d}: summarise our team's token budget rules in plain words."
# Strict mode's worst case (app/budgets/estimate.py, app/tokens.py): the prompt's UTF-8 bytes plus
# 16 per request, 8 per message and 4 per text block, plus max_tokens. Every prompt has the same length.
PROMPT_BYTES = len(PROMPT.format(0).encode())
WORST = PROMPT_BYTES + 16 + 8 + 4 + MAX_TOKENS
BUDGET = 50 * WORST
MODELS = {"anthropic": "claude-haiku-5-5", "openai": "gpt-5-mini"}
SOFT_RETRIES_MAX = 400

REFUSAL = re.compile(
    r"Team budget '(?P<window>\w+)' exceeded: (?P<used>[\d,]+) tokens used of (?P<limit>[\d,]+) tokens"
    r"(?: \((?P<reserved>[\d,]+) tokens more reserved by requests in flight\))?"
    r"; this request needs up to (?P<requested>[\d,]+) tokens\."
    r".* The window resets at (?P<reset>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\."
)


# ---- the stack: one simulator, four gateways, one database, one Redis ------------------------------


@pytest.fixture(scope="module")
async def database(postgres_server_url: str) -> AsyncIterator[str]:
    async with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="module")
def stack(database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work: Path = tmp_path_factory.mktemp("gateway-budgets")
    with Stack(work, database_url=database, redis_url=redis_db_url(redis_url)) as stack:
        stack.start_gateways(GATEWAYS)
        yield stack


@dataclass
class Team:
    id: str
    name: str
    key: str


def budget_team(stack: Stack, tokens_per_day: int = BUDGET) -> Team:
    team = stack.create_team(f"budget-{uuid.uuid4().hex[:8]}", limits={"tokens_per_day": tokens_per_day})
    key, _ = stack.create_key(team["id"])
    return Team(team["id"], team["name"], key)


# ---- the workload ---------------------------------------------------------------------------------


@dataclass
class Refusal:
    window: str
    used: int
    limit: int
    reserved: int
    requested: int
    reset: datetime

    @property
    def hard(self) -> bool:
        """Settled usage alone leaves no room (the limiter's own definition): retrying cannot help."""
        return self.used + self.requested > self.limit


def parse_refusal(call: Call) -> Refusal:
    match = REFUSAL.search(call.error_message)
    assert match, f"a 429 must name the window, usage, limit and request: {call.error!r}"

    def number(name: str) -> int:
        return int((match.group(name) or "0").replace(",", ""))

    return Refusal(
        match.group("window"),
        number("used"),
        number("limit"),
        number("reserved"),
        number("requested"),
        datetime.fromisoformat(match.group("reset").replace("Z", "+00:00")),
    )


@dataclass
class Result:
    calls: list[Call]  # every attempt, soft-refused retries included
    finals: list[Call]  # what each of the REQUESTS clients ended with

    def served(self) -> list[Call]:
        return [c for c in self.finals if c.status == 200]

    def refused(self) -> list[Call]:
        return [c for c in self.calls if c.status == 429]


async def run_clients(
    gateways: list[Gateway], key: str, *, stream: bool, abort_after: int | None = None, seed: int = 0
) -> Result:
    """REQUESTS clients at once, round-robin over the gateways and alternating client formats."""
    rng = random.Random(seed)
    sdk: dict[tuple[str, int], Any] = {}
    for n, gw in enumerate(gateways):
        sdk["anthropic", n] = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=60)
        sdk["openai", n] = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=60)
    calls: list[Call] = []
    start = asyncio.Event()

    async def client(i: int) -> Call:
        n = i % len(gateways)
        api = "anthropic" if (i // len(gateways)) % 2 == 0 else "openai"
        send = anthropic_call if api == "anthropic" else openai_call
        # Replies of 70..130 words: requests for more than max_tokens stop at max_tokens.
        headers = {"x-sim-output-tokens": str(rng.randint(70, 130))}
        if abort_after is not None:
            headers["x-sim-tokens-per-second"] = "100"  # paced, so the client leaves mid-stream
        await start.wait()
        for _ in range(SOFT_RETRIES_MAX):
            call = await send(
                sdk[api, n],
                model=MODELS[api],
                prompt=PROMPT.format(i),
                max_tokens=MAX_TOKENS,
                stream=stream,
                abort_after=abort_after,
                headers=headers,
            )
            calls.append(call)
            if call.status != 429 or parse_refusal(call).hard:
                return call
            await asyncio.sleep(rng.uniform(0.02, 0.1))  # only in-flight reservations were in the way
        raise AssertionError(f"client {i} was refused {SOFT_RETRIES_MAX} times for in-flight reservations")

    tasks = [asyncio.create_task(client(i)) for i in range(REQUESTS)]
    start.set()
    try:
        finals = await asyncio.gather(*tasks)
    finally:
        for c in sdk.values():
            await c.close()
    return Result(calls, list(finals))


# ---- reading the settled total back ---------------------------------------------------------------


async def budget_window(gateway: Gateway, key: str) -> dict[str, Any]:
    async with gateway.async_client(key) as client:
        response = await client.get("/v1/me")
    assert response.status_code == 200, response.text
    return dict(response.json()["budget"]["team"]["tokens_per_day"])


async def settled_window(gateway: Gateway, key: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The team's tokens_per_day window once nothing is reserved any more (settles run after the
    response has been sent, so the last ones may still be on their way)."""
    deadline = time.monotonic() + timeout_s
    while True:
        window = await budget_window(gateway, key)
        if window["reserved"] == 0 or time.monotonic() > deadline:
            return window
        await asyncio.sleep(0.05)


async def ledger_total(stack: Stack, team: Team, requests: int, timeout_s: float = 15.0) -> dict[str, Any]:
    """The admin usage report's total for the team, once it holds ``requests`` rows."""
    deadline = time.monotonic() + timeout_s
    async with stack.gateways[-1].async_client(stack.admin_key) as admin:
        while True:
            response = await admin.get("/admin/usage", params={"team": team.id, "group_by": "team"})
            assert response.status_code == 200, response.text
            total = dict(response.json()["total"])
            if total["requests"] >= requests or time.monotonic() > deadline:
                return total
            await asyncio.sleep(0.1)


async def in_flight_in_redis(redis_url: str, team_id: str) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """The raw in-flight amounts and live reservation records of the team, straight from Redis (a
    settled or expired reservation leaves a record ``s`` / ``x`` that makes a repeated settle a no-op)."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys = team_keys(team_id)
        records = await client.hgetall(keys.reservations)
        live = {rid: rec for rid, rec in records.items() if rec not in (b"s", b"x")}
        return await client.hgetall(keys.inflight), live
    finally:
        await client.aclose()


def ledger_tokens(total: dict[str, Any]) -> int:
    return int(
        total["input_tokens"] + total["output_tokens"] + total["cache_write_tokens"] + total["cache_read_tokens"]
    )


def next_utc_midnight() -> datetime:
    return (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def seconds_to_next_utc_midnight() -> float:
    return (next_utc_midnight() - datetime.now(UTC)).total_seconds()


# ---- the checks every scenario shares --------------------------------------------------------------


def check_refusals(result: Result) -> None:
    for call in result.refused():
        refusal = parse_refusal(call)
        assert refusal.window == "tokens_per_day"
        assert refusal.limit == BUDGET
        assert refusal.requested == WORST, "strict mode reserves prompt bytes + overheads + max_tokens"
        assert 0 <= refusal.used <= BUDGET
        assert refusal.reset == next_utc_midnight(), "the day window resets at the next UTC midnight"
        assert call.request_id, "a refusal carries its request id"
        # The client's own error format.
        if call.api == "anthropic":
            assert call.error is not None and call.error["type"] == "error"
            assert call.error["error"]["type"] == "rate_limit_error"
        else:
            assert call.error is not None
            assert call.error["error"]["type"] == "rate_limit_exceeded"
            assert call.error["error"]["code"] == "rate_limit_exceeded"
        # retry-after tells the truth: the window's reset when settled usage leaves no room, a second
        # when only requests in flight were in the way.
        retry_after = int(call.headers["retry-after"])
        if refusal.hard:
            assert abs(retry_after - seconds_to_next_utc_midnight()) < 60, retry_after
            assert call.headers.get("x-should-retry") == ("false" if retry_after > 60 else "true")
        else:
            assert retry_after == 1


async def check_settled(stack: Stack, team: Team, result: Result, *, expect_exhausted: bool) -> int:
    """The settled total, read three ways, is one number within the budget; returns it."""
    clients_saw = sum(c.tokens for c in result.calls if c.status == 200)
    window = await settled_window(stack.gateways[1], team.key)
    assert window["reserved"] == 0, f"reservations left in flight: {window}"
    assert window["limit"] == BUDGET
    inflight, reservations = await in_flight_in_redis(stack.redis_url or "", team.id)
    assert inflight == {} and reservations == {}, "nothing may stay reserved in Redis"

    total = await ledger_total(stack, team, requests=len(result.calls))
    assert total["requests"] == len(result.calls), "one ledger row per request, refusals included"
    assert total["errors"] == sum(1 for c in result.calls if c.status != 200)
    assert window["used"] == ledger_tokens(total) == clients_saw, (window, total, clients_saw)

    settled = int(window["used"])
    # The promise: concurrent requests on four replicas never spend more than the budget.
    assert settled <= BUDGET
    hard = [c for c in result.finals if c.status == 429]
    assert all(c.status in (200, 429) for c in result.finals), Counter(c.status for c in result.finals)
    if expect_exhausted:
        assert hard, "the budget must run out for this scenario to mean anything"
    # No large under-use: a client was turned away for good only when the settled usage left less
    # than its worst case, so the budget ends used to within one request's worth.
    if hard:
        assert BUDGET - settled < WORST, (settled, BUDGET, WORST)
    else:
        assert len(result.served()) == REQUESTS
    return settled


# ---- the scenarios ---------------------------------------------------------------------------------


async def test_concurrent_requests_never_overspend(stack: Stack) -> None:
    team = budget_team(stack)
    result = await run_clients(stack.gateways, team.key, stream=False, seed=1)
    check_refusals(result)
    settled = await check_settled(stack, team, result, expect_exhausted=True)
    served = result.served()
    # Each request used at most its worst case, and the budget ended used to within one worst case:
    # at least 50 were served, and no more than the budget holds at the smallest actual usage.
    assert 50 <= len(served) <= BUDGET // min(c.tokens for c in served)
    assert {c.api for c in served} == {"anthropic", "openai"}
    # Successful answers carry the remaining budget (settled usage), in their client's header names,
    # and what requests in flight hold (this one's reservation included) in a header of its own.
    for call in served:
        if call.api == "anthropic":
            assert int(call.headers["anthropic-ratelimit-tokens-limit"]) == BUDGET
            remaining = int(call.headers["anthropic-ratelimit-tokens-remaining"])
        else:
            assert int(call.headers["x-ratelimit-limit-tokens"]) == BUDGET
            remaining = int(call.headers["x-ratelimit-remaining-tokens"])
        reserved = int(call.headers["x-tollway-budget-reserved-tokens"])
        assert WORST <= reserved <= remaining <= BUDGET
    assert settled > BUDGET - WORST


async def test_concurrent_streams_never_overspend(stack: Stack) -> None:
    team = budget_team(stack)
    result = await run_clients(stack.gateways, team.key, stream=True, seed=2)
    check_refusals(result)
    await check_settled(stack, team, result, expect_exhausted=True)
    served = result.served()
    assert len(served) >= 50
    for call in served:  # a whole stream: its usage came from the stream itself
        assert call.stream and not call.aborted and call.deltas == call.output_tokens > 0


ABORT_AFTER = 5


@pytest.fixture(scope="module")
async def aborted(stack: Stack) -> tuple[Team, Result]:
    """200 clients that each leave their stream after ABORT_AFTER content deltas."""
    team = budget_team(stack)
    result = await run_clients(stack.gateways, team.key, stream=True, abort_after=ABORT_AFTER, seed=3)
    return team, result


async def test_aborted_streams_settle_their_reservations(stack: Stack, aborted: tuple[Team, Result]) -> None:
    team, result = aborted
    left = [c for c in result.calls if c.aborted]
    assert len(left) == len(result.served()) > 0
    assert all(c.deltas == ABORT_AFTER for c in left)
    check_refusals(result)

    window = await settled_window(stack.gateways[2], team.key)
    assert window["reserved"] == 0, f"aborted streams left reservations in flight: {window}"
    inflight, reservations = await in_flight_in_redis(stack.redis_url or "", team.id)
    assert inflight == {} and reservations == {}
    # What was settled is what the ledger recorded, within the budget.
    total = await ledger_total(stack, team, requests=len(result.calls))
    assert total["requests"] == len(result.calls)
    assert window["used"] == ledger_tokens(total) <= BUDGET


async def test_aborted_streams_count_their_partial_usage(stack: Stack, aborted: tuple[Team, Result]) -> None:
    """An aborted stream still cost its prompt and the tokens generated so far (issue 3: "streams the
    client aborted (the tokens generated so far, marked aborted)"); the budget must count them too.
    One simulator word is one token and one delta, so the client's delta count is a lower bound."""
    team, result = aborted
    left = [c for c in result.calls if c.aborted]
    await ledger_total(stack, team, requests=len(result.calls))
    rows = await ledger_rows(stack, [c.request_id for c in left])
    assert len(rows) == len(left)
    # A client that closes after the gateway already wrote the whole answer was served in full (200);
    # one that closes while the stream is still running is recorded as aborted (499).
    assert all((row["aborted"] and row["status"] == 499) or (row["status"] == 200 and not row["aborted"])
               for row in rows.values())
    assert any(row["aborted"] and row["status"] == 499 for row in rows.values())
    problems = [
        (c.api, rows[c.request_id]["input_tokens"], rows[c.request_id]["output_tokens"])
        for c in left
        if rows[c.request_id]["input_tokens"] < 1 or rows[c.request_id]["output_tokens"] < c.deltas
    ]
    assert not problems, (
        f"{len(problems)} of {len(left)} aborted streams were recorded with less usage than they had "
        f"incurred — (client api, input tokens, output tokens) × count, each client having read "
        f"{ABORT_AFTER} deltas: {sorted(Counter(problems).items())[:6]}"
    )
    window = await settled_window(stack.gateways[3], team.key)
    assert window["used"] >= sum(1 + c.deltas for c in left)


async def ledger_rows(stack: Stack, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(stack.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        records = await conn.fetch(
            "SELECT request_id, status, aborted, input_tokens, output_tokens FROM usage_events"
            " WHERE request_id = ANY($1::text[])",
            request_ids,
        )
    finally:
        await conn.close()
    return {r["request_id"]: dict(r) for r in records}


async def test_a_killed_gateway_leaks_no_budget(stack: Stack) -> None:
    """SIGKILL a gateway while three of its streams hold reservations: they are not settled, and
    the other replicas release them once they expire (a short TOLLWAY_RESERVATION_TTL_S here)."""
    ttl_s = 4
    # Room for the three streams' worst cases, not for a fourth.
    team = budget_team(stack, tokens_per_day=3 * WORST + WORST // 2)
    doomed = await asyncio.to_thread(stack.start_gateway, reservation_ttl_s=ttl_s)
    survivor = stack.gateways[0]
    client = anthropic.AsyncAnthropic(base_url=doomed.url, api_key=team.key, max_retries=0, timeout=60)
    on_survivors = [
        anthropic.AsyncAnthropic(base_url=gw.url, api_key=team.key, max_retries=0) for gw in stack.gateways[:2]
    ]
    slow = {"x-sim-tokens-per-second": "2", "x-sim-output-tokens": "100"}  # 50 s streams
    started = asyncio.Event()
    first_deltas = 0
    sent_at = time.monotonic()

    async def hold_a_stream(i: int) -> None:
        nonlocal first_deltas
        try:
            async with client.messages.stream(
                model=MODELS["anthropic"],
                max_tokens=MAX_TOKENS,
                messages=[{"role": "user", "content": PROMPT.format(i)}],
                extra_headers=slow,
            ) as events:
                async for event in events:
                    if event.type == "content_block_delta":
                        first_deltas += 1
                        if first_deltas == 3:
                            started.set()
        except (anthropic.APIConnectionError, httpx.HTTPError):
            pass  # the gateway died under it

    holders = [asyncio.create_task(hold_a_stream(i)) for i in range(3)]
    try:
        await asyncio.wait_for(started.wait(), timeout=20)
        before = await budget_window(survivor, team.key)
        assert before["reserved"] == 3 * WORST and before["used"] == 0, before

        await asyncio.to_thread(stack.kill, doomed)
        killed_at = time.monotonic()
        after_kill = await budget_window(survivor, team.key)
        if killed_at - sent_at < ttl_s - 1:  # the reservations cannot have expired yet
            assert after_kill["reserved"] == 3 * WORST, "a killed gateway settles nothing"
            refused = await anthropic_call(
                on_survivors[0],
                model=MODELS["anthropic"],
                prompt=PROMPT.format(9),
                max_tokens=MAX_TOKENS,
                headers={"x-sim-output-tokens": "1"},
            )
            assert refused.status == 429, "the dead gateway's reservations still hold the budget"
            assert not parse_refusal(refused).hard

        deadline = time.monotonic() + ttl_s + 10
        window = await budget_window(survivor, team.key)
        while window["reserved"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # polling another process: no event to wait on
            window = await budget_window(survivor, team.key)
        released_after = time.monotonic() - sent_at
        assert window["reserved"] == 0, f"reservations leaked past their expiry: {window}"
        assert released_after >= ttl_s - 0.5, "released before their expiry"
        assert released_after <= ttl_s + 10
        assert window["used"] == 0  # never settled: the dead process never learned its usage
        inflight, reservations = await in_flight_in_redis(stack.redis_url or "", team.id)
        assert inflight == {} and reservations == {}

        # The whole budget is available again, on any replica.
        served = await anthropic_call(
            on_survivors[1],
            model=MODELS["anthropic"],
            prompt=PROMPT.format(10),
            max_tokens=MAX_TOKENS,
        )
        assert served.status == 200
    finally:
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        for c in [client, *on_survivors]:
            await c.close()
