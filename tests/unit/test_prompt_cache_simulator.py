"""Breakpoints through the simulator (which models the 5-minute and 1-hour prefix caches), priced.

The simulator is an independent implementation of Anthropic's cache rules: it rejects more than four
breakpoints and 1h-after-5m orderings with a 400, reads the furthest cached breakpoint and bills
writes by TTL. Costs are computed from the usage it reports with ``app.ledger.pricing.cost_of``.
"""

from __future__ import annotations

import copy
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest

from app.caching.prompt_cache import MAX_BREAKPOINTS, apply_breakpoints, count_breakpoints
from app.config import ModelConfig, Prices
from app.domain import ChatRequest, Message, Usage
from app.ledger.pricing import cost_of
from app.simulator import SimulatorConfig, create_simulator_app
from app.wire.anthropic import build_request, parse_usage

MIN_TOKENS = 1024
# Base input 3 USD/Mtok: 5m write 1.25x, 1h write 2x, read 0.1x.
MODEL = ModelConfig(
    provider="anthropic",
    tier="medium",
    context_window=200_000,
    max_output_tokens=64_000,
    min_cache_tokens=MIN_TOKENS,
    prices=Prices(
        input=Decimal(3),
        output=Decimal(15),
        cache_write_5m=Decimal("3.75"),
        cache_write_1h=Decimal(6),
        cache_read=Decimal("0.30"),
    ),
)


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sim:
    client: httpx.AsyncClient
    clock: Clock

    async def send(self, req: ChatRequest) -> Usage:
        body = build_request(req, "claude-test", stream=False)
        response = await self.client.post(
            "/v1/messages", json=body, headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}
        )
        assert response.status_code == 200, response.text
        return parse_usage(response.json()["usage"])


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    clock = Clock()
    config = SimulatorConfig(min_cache_tokens=lambda model: MIN_TOKENS)
    app = create_simulator_app(config, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield Sim(client, clock)


def words(n_bytes: int, seed: int) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_bytes:
        word = rng.choice(["cache", "prefix", "gateway", "token", "budget", "route", "ledger", "stream"])
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def chat(history: list[tuple[str, str]], system_bytes: int = 8000) -> ChatRequest:
    return ChatRequest(
        model="claude-test",
        messages=[Message(role, [{"type": "text", "text": text}]) for role, text in history],  # type: ignore[arg-type]
        max_tokens=100,
        client_format="anthropic",
        system=[{"type": "text", "text": words(system_bytes, 0)}],
    )


def conversation(turns: int) -> list[tuple[str, str]]:
    history: list[tuple[str, str]] = []
    for turn in range(turns):
        if turn:
            history.append(("assistant", words(600, 100 + turn)))
        history.append(("user", words(800, turn)))
    return history


def priced(usage: Usage) -> tuple[Decimal, Decimal]:
    cost = cost_of(MODEL, usage)
    return cost.total, cost.uncached


def by_multipliers(usage: Usage) -> Decimal:
    base = MODEL.prices.input
    return (
        usage.input_tokens * base
        + usage.cache_write_5m_tokens * base * Decimal("1.25")
        + usage.cache_write_1h_tokens * base * 2
        + usage.cache_read_tokens * base * Decimal("0.1")
        + usage.output_tokens * MODEL.prices.output
    ) / 1_000_000


async def test_each_turn_reads_what_the_previous_turn_wrote(sim: Sim) -> None:
    usages: list[Usage] = []
    for turns in (1, 2, 3):
        req = chat(conversation(turns))
        apply_breakpoints(req, MODEL, ttl="5m")
        usages.append(await sim.send(req))

    first, second, third = usages
    assert first.cache_read_tokens == 0 and first.cache_write_5m_tokens > 0
    assert first.input_tokens == 0  # the marker sits on the last block: everything is written
    # The second turn reads the whole first prompt (its marker on the previous user turn matches the
    # first turn's final marker) and writes only the new assistant reply and user message.
    assert second.cache_read_tokens == first.prompt_tokens
    assert second.cache_write_5m_tokens == second.prompt_tokens - first.prompt_tokens
    assert third.cache_read_tokens == second.prompt_tokens
    for usage in usages:
        total, uncached = priced(usage)
        assert total == by_multipliers(usage)
        assert (
            uncached
            == (usage.prompt_tokens * MODEL.prices.input + usage.output_tokens * MODEL.prices.output)
            / 1_000_000
        )
    # The first turn pays the 1.25x write premium; later turns cost well under half the uncached price.
    assert priced(first)[0] > priced(first)[1]
    assert priced(third)[0] < priced(third)[1] / 2


async def test_another_conversation_reads_the_shared_system_prompt(sim: Sim) -> None:
    first = chat([("user", words(800, 1))])
    apply_breakpoints(first, MODEL, ttl="5m")
    await sim.send(first)

    other = chat([("user", words(800, 2))])
    apply_breakpoints(other, MODEL, ttl="5m")
    usage = await sim.send(other)

    assert usage.cache_read_tokens > 0  # the system prompt, written by the first conversation
    assert usage.cache_read_tokens < usage.prompt_tokens


async def test_without_breakpoints_nothing_is_cached(sim: Sim) -> None:
    for _ in range(2):
        usage = await sim.send(chat(conversation(2)))
        assert (usage.cache_read_tokens, usage.cache_write_tokens) == (0, 0)
        total, uncached = priced(usage)
        assert total == uncached


async def test_short_prompts_are_left_alone(sim: Sim) -> None:
    req = chat([("user", "Hello")], system_bytes=400)
    before = copy.deepcopy(req)
    assert apply_breakpoints(req, MODEL, ttl="5m") == []
    assert req == before
    usage = await sim.send(req)
    assert usage.cache_write_tokens == 0


async def test_a_marker_just_under_the_real_minimum_costs_nothing(sim: Sim) -> None:
    # The estimate (bytes / 3.5) says the prefix is long enough; the simulator (bytes / 4) disagrees.
    # The marker is placed, silently ignored, and the request is billed exactly as uncached.
    req = chat([("user", "Hi")], system_bytes=int(MIN_TOKENS * 3.8))
    assert apply_breakpoints(req, MODEL, ttl="5m") == ["system", "messages[0]"]
    usage = await sim.send(req)
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (0, 0)
    assert priced(usage)[0] == priced(usage)[1]


async def test_1h_ttl_is_billed_at_its_price_and_outlives_5m(sim: Sim) -> None:
    first = chat(conversation(1))
    apply_breakpoints(first, MODEL, ttl="1h")
    usage = await sim.send(first)
    assert usage.cache_write_1h_tokens == usage.prompt_tokens and usage.cache_write_5m_tokens == 0
    output = usage.output_tokens * MODEL.prices.output
    assert priced(usage)[0] == (usage.prompt_tokens * MODEL.prices.input * 2 + output) / 1_000_000

    sim.clock.now += 10 * 60  # past 5 minutes, within the hour
    again = chat(conversation(1))
    apply_breakpoints(again, MODEL, ttl="1h")
    assert (await sim.send(again)).cache_read_tokens == usage.prompt_tokens

    five = chat(conversation(1), system_bytes=8100)  # a different prefix, cached for 5 minutes
    apply_breakpoints(five, MODEL, ttl="5m")
    await sim.send(five)
    sim.clock.now += 6 * 60
    five_again = chat(conversation(1), system_bytes=8100)
    apply_breakpoints(five_again, MODEL, ttl="5m")
    assert (await sim.send(five_again)).cache_read_tokens == 0


async def test_client_markers_plus_ours_are_always_accepted(sim: Sim) -> None:
    """Random client markers (valid on their own) + ours: never a 400 for count or TTL order."""
    rng = random.Random(66)
    for case in range(60):
        req = chat(conversation(rng.randint(1, 5)), system_bytes=rng.choice([500, 3000, 9000]))
        slots = [b for m in req.messages for b in m.content] + req.system
        rng.shuffle(slots)
        chosen = slots[: rng.randint(0, 3)]
        # The client's own markers in valid order: 1h ones first in prefix order, then 5m.
        order = [
            b
            for b in req.system + [b for m in req.messages for b in m.content]
            if any(b is c for c in chosen)
        ]
        cut = rng.randint(0, len(order))
        for index, block in enumerate(order):
            block["cache_control"] = (
                {"type": "ephemeral", "ttl": "1h"} if index < cut else {"type": "ephemeral"}
            )
        if rng.random() < 0.3 and len(chosen) < MAX_BREAKPOINTS:
            req.cache_control = {"type": "ephemeral"}
        client = count_breakpoints(req)

        placed = apply_breakpoints(req, MODEL, ttl=rng.choice(["5m", "1h"]))

        assert count_breakpoints(req) == client + len(placed) <= MAX_BREAKPOINTS, case
        await sim.send(req)  # asserts 200


def test_cost_of_follows_the_cache_multipliers() -> None:
    usage = Usage(
        input_tokens=100,
        output_tokens=50,
        cache_write_5m_tokens=2000,
        cache_write_1h_tokens=1000,
        cache_read_tokens=10_000,
    )
    cost = cost_of(MODEL, usage)
    # 100*3 + 2000*3.75 + 1000*6 + 10000*0.30 + 50*15 = 300 + 7500 + 6000 + 3000 + 750 = 17550 micro-USD
    assert cost.total == Decimal("0.01755")
    assert cost.total == by_multipliers(usage)
    # Uncached: all 13,100 prompt tokens at 3 USD/Mtok + the output.
    assert cost.uncached == Decimal("0.04005")
    assert cost.savings == Decimal("0.0225")
