"""Sticky conversations: the key, the stores (local LRU with TTL, Redis), and the router's ordering."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.auth.principal import Principal
from app.config import load_catalog
from app.domain import ChatRequest
from app.routing.corpus import to_chat_request
from app.routing.health import DeploymentHealth
from app.routing.router import Router
from app.routing.sticky import StickyConversations, conversation_key

SYSTEM = "You are a senior distributed-systems engineer."
HARD = (
    "Our Raft-based replicated log occasionally loses acknowledged writes after a leader change when two "
    "partitions heal at the same time. Walk through which safety invariant is violated and design a fix that "
    "keeps linearizable reads without a read quorum."
)
PRINCIPAL = Principal(team_id="team-1", team_name="t", key_id="k", key_prefix="p")


def turn(*texts: str, system: str = SYSTEM) -> ChatRequest:
    messages: list[dict[str, Any]] = []
    for index, text in enumerate(texts):
        if index:
            messages.append({"role": "assistant", "content": f"answer {index}"})
        messages.append({"role": "user", "content": text})
    return to_chat_request({"system": system, "messages": messages})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_key_names_the_conversation_not_the_turn() -> None:
    first = conversation_key("team-1", turn(HARD))
    assert conversation_key("team-1", turn(HARD, "thanks, and RPC means?")) == first
    assert conversation_key("team-2", turn(HARD)) != first
    assert conversation_key("team-1", turn(HARD, system="another prompt")) != first
    assert conversation_key("team-1", turn("another opening")) != first
    assert first.startswith("tw:sticky:team-1:")


async def test_local_store_remembers_until_the_ttl_and_refreshes_it() -> None:
    clock = Clock()
    store = StickyConversations(ttl_s=60, clock=clock)
    chat = turn(HARD)
    assert await store.lookup("team-1", chat) is None
    await store.remember("team-1", chat, "claude-opus-5-5")
    clock.now += 59
    assert await store.lookup("team-1", turn(HARD, "next")) == "claude-opus-5-5"
    await store.remember("team-1", chat, "claude-opus-5-5")  # a turn refreshes the TTL
    clock.now += 59
    assert await store.lookup("team-1", chat) == "claude-opus-5-5"
    clock.now += 61
    assert await store.lookup("team-1", chat) is None


async def test_local_store_is_bounded() -> None:
    store = StickyConversations(max_entries=3)
    for n in range(10):
        await store.remember("team-1", turn(f"conversation {n}"), f"model-{n}")
    assert await store.lookup("team-1", turn("conversation 0")) is None
    assert await store.lookup("team-1", turn("conversation 9")) == "model-9"
    assert len(store._local) == 3


async def test_redis_store_is_shared_and_expires(redis_url: str) -> None:
    from redis.asyncio import Redis

    prefix = f"tw:sticky-test-{uuid.uuid4().hex[:8]}:"
    one, two = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        a = StickyConversations(one, ttl_s=30, key_prefix=prefix)
        b = StickyConversations(two, ttl_s=30, key_prefix=prefix)
        await a.remember("team-1", turn(HARD), "claude-opus-5-5")
        assert await b.lookup("team-1", turn(HARD, "follow-up")) == "claude-opus-5-5"
        keys = [k async for k in one.scan_iter(match=prefix + "*")]
        assert len(keys) == 1 and 0 < await one.pttl(keys[0]) <= 30_000
        await one.delete(*keys)
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_failure_is_a_miss_not_an_error() -> None:
    from redis.asyncio import Redis

    dead = Redis(host="127.0.0.1", port=1)  # redis-py's default retries with backoff: the timeout cuts them
    store = StickyConversations(dead, op_timeout_s=0.2)
    await store.remember("team-1", turn(HARD), "claude-opus-5-5")
    assert await store.lookup("team-1", turn(HARD)) is None
    await dead.aclose()


# ---- the router ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def router() -> Router:
    # The catalog's task tiers decide here, not the learned model: these tests are about stickiness,
    # and must not change meaning when the model is retrained.
    return Router(load_catalog(None), DeploymentHealth(), tier_model=None)


async def test_a_conversation_stays_on_its_model_across_turns(router: Router) -> None:
    store = StickyConversations()
    first = turn(HARD)
    chosen = router.plan(first, PRINCIPAL, sticky_model=await store.lookup("team-1", first)).chosen.name
    await store.remember("team-1", first, chosen)
    second = turn(HARD, "Thanks. Is 17 a prime number? Answer yes or no.")
    unsticky = router.plan(second, PRINCIPAL).chosen.name
    assert unsticky != chosen  # on its own, the easy follow-up would move elsewhere
    plan = router.plan(second, PRINCIPAL, sticky_model=await store.lookup("team-1", second))
    assert plan.chosen.name == chosen and plan.sticky == chosen and f"sticky={chosen}" in plan.reason


def test_a_sticky_model_below_the_needed_tier_is_not_used_but_its_provider_is(router: Router) -> None:
    plan = router.plan(turn("hi", HARD), PRINCIPAL, sticky_model="claude-haiku-5-5")
    assert plan.chosen.tier != "small" and plan.sticky is None
    assert plan.chosen.model.all_deployments(plan.chosen.name)[0].provider == "anthropic"
    assert "sticky-provider=anthropic" in plan.reason


def test_an_unknown_sticky_model_is_ignored(router: Router) -> None:
    plain = router.plan(turn(HARD), PRINCIPAL)
    assert router.plan(turn(HARD), PRINCIPAL, sticky_model="retired-model").chosen.name == plain.chosen.name
