"""Response-cache stores against a real Redis: one suite for both stores, then Redis specifics."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio

from app.caching.response_cache import (
    REDIS_KEY_PREFIX,
    MemoryResponseCache,
    RedisResponseCache,
    ResponseCache,
    cache_key,
    decode_response,
    encode_response,
)
from app.domain import ChatRequest, ChatResponse, Message, Usage

TTL_S = 0.3


@dataclass
class Store:
    cache: ResponseCache
    expire: Callable[[], Awaitable[None]]  # make everything stored so far outlive its TTL


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        now = [0.0]

        async def advance() -> None:
            now[0] += TTL_S

        yield Store(
            MemoryResponseCache(max_entries=100, ttl_s=TTL_S, max_entry_bytes=1000, clock=lambda: now[0]),
            advance,
        )
        return
    client = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))

    async def wait() -> None:  # real expiry in Redis
        await asyncio.sleep(TTL_S + 0.1)

    try:
        yield Store(RedisResponseCache(client, ttl_s=TTL_S, max_entry_bytes=1000), wait)
    finally:
        await client.aclose()


def chat(text: str) -> ChatRequest:
    return ChatRequest(
        model="claude-sonnet-5-5",
        messages=[Message("user", [{"type": "text", "text": text}])],
        max_tokens=50,
        client_format="openai",
        temperature=0,
    )


def answer(text: str) -> ChatResponse:
    return ChatResponse(
        id="msg_" + text,
        model="claude-sonnet-5-5",
        content=[{"type": "text", "text": text}],
        stop_reason="end_turn",
        usage=Usage(input_tokens=10, output_tokens=3),
    )


def unique() -> str:
    return uuid.uuid4().hex  # the Redis database outlives one test


async def test_miss_then_hit(store: Store) -> None:
    key = cache_key(unique(), "claude-sonnet-5-5", chat("hello"))
    assert await store.cache.get(key) is None
    assert await store.cache.put(key, encode_response(answer("hi")))
    cached = await store.cache.get(key)
    assert cached is not None and decode_response(cached) == answer("hi")


async def test_teams_never_share_entries(store: Store) -> None:
    team_a, team_b = unique(), unique()
    req = chat("same question")
    await store.cache.put(cache_key(team_a, "claude-sonnet-5-5", req), encode_response(answer("for a")))
    assert await store.cache.get(cache_key(team_b, "claude-sonnet-5-5", req)) is None
    await store.cache.put(cache_key(team_b, "claude-sonnet-5-5", req), encode_response(answer("for b")))
    a = await store.cache.get(cache_key(team_a, "claude-sonnet-5-5", req))
    assert a is not None and decode_response(a).content[0]["text"] == "for a"


async def test_entries_expire_after_the_ttl(store: Store) -> None:
    key = cache_key(unique(), "m", chat("short-lived"))
    await store.cache.put(key, b"value")
    assert await store.cache.get(key) == b"value"
    await store.expire()
    assert await store.cache.get(key) is None


async def test_entries_over_the_maximum_size_are_not_stored(store: Store) -> None:
    key = cache_key(unique(), "m", chat("big"))
    assert not await store.cache.put(key, b"x" * 1001)
    assert await store.cache.get(key) is None
    assert await store.cache.put(key, b"x" * 1000)
    assert await store.cache.get(key) == b"x" * 1000


async def test_a_put_replaces_the_entry(store: Store) -> None:
    key = cache_key(unique(), "m", chat("refresh me"))
    await store.cache.put(key, b"old")
    await store.cache.put(key, b"new")
    assert await store.cache.get(key) == b"new"


# ---- Redis specifics -------------------------------------------------------------------------------


async def test_redis_key_layout_and_expiry(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        team = unique()
        key = cache_key(team, "m", chat("layout"))
        await RedisResponseCache(client, ttl_s=60, max_entry_bytes=100).put(key, b"v")
        stored = [k.decode() async for k in client.scan_iter(match=f"{REDIS_KEY_PREFIX}{team}:*")]
        assert stored == [f"tw:rc:{key}"]
        assert 59_000 < await client.pttl(stored[0]) <= 60_000
    finally:
        await client.aclose()


async def test_redis_client_decoding_responses_still_returns_bytes(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        cache = RedisResponseCache(client, ttl_s=60, max_entry_bytes=1000)
        key = cache_key(unique(), "m", chat("decoded"))
        await cache.put(key, encode_response(answer("é")))
        cached = await cache.get(key)
        assert cached is not None and decode_response(cached) == answer("é")
    finally:
        await client.aclose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_redis_is_a_miss_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=0.2)
    try:
        cache = RedisResponseCache(client, ttl_s=60, max_entry_bytes=1000)
        assert await cache.get("team:abc") is None
        assert await cache.put("team:abc", b"v") is False
        assert await cache.get("team:abc") is None
    finally:
        await client.aclose()
    warnings = [r for r in caplog.records if r.name == "tollway.caching"]
    assert len(warnings) == 1  # logged once, the rest suppressed
    assert "treated as a miss" in warnings[0].getMessage()


async def test_a_hanging_redis_times_out_into_a_miss() -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(5)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        cache = RedisResponseCache(client, ttl_s=60, max_entry_bytes=1000, op_timeout_s=0.1)
        started = time.monotonic()
        assert await cache.get("team:abc") is None
        assert await cache.put("team:abc", b"v") is False
        assert time.monotonic() - started < 1.0
    finally:
        await client.aclose()
        server.close()
