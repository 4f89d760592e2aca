"""Response cache: decisions, the canonical key, entry encoding, the in-process LRU."""

from __future__ import annotations

import copy

import pytest

from app.auth.principal import TeamPolicy
from app.caching.response_cache import (
    MemoryResponseCache,
    RedisResponseCache,
    cache_key,
    create_response_cache,
    decide,
    decode_response,
    encode_response,
)
from app.config import Settings
from app.domain import ChatRequest, ChatResponse, Message, ResponseFormat, Tool, Usage

ON = TeamPolicy(response_cache=True)
OFF = TeamPolicy(response_cache=False)


def request(**changes: object) -> ChatRequest:
    req = ChatRequest(
        model="claude-sonnet-5-5",
        messages=[
            Message("user", [{"type": "text", "text": "What is 2 + 2?"}]),
            Message("assistant", [{"type": "text", "text": "4"}]),
            Message(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "result"}],
                    }
                ],
            ),
        ],
        max_tokens=100,
        client_format="anthropic",
        system=[{"type": "text", "text": "You are terse."}],
        temperature=0,
        tools=[Tool("lookup", "Look it up", {"type": "object", "properties": {}})],
    )
    for name, value in changes.items():
        setattr(req, name, value)
    return req


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- decide ----------------------------------------------------------------------------------------


def test_deterministic_request_with_policy_on_is_looked_up_and_stored() -> None:
    assert decide(request(temperature=0), ON, None).lookup is True
    assert decide(request(temperature=0.0), ON, None).store is True
    assert decide(request(temperature=None, top_k=1), ON, None).lookup is True


def test_non_deterministic_or_policy_off_is_neither_looked_up_nor_stored() -> None:
    for req, policy in [
        (request(temperature=0.7), ON),
        (request(temperature=None), ON),
        (request(temperature=0), OFF),
    ]:
        decision = decide(req, policy, None)
        assert (decision.lookup, decision.store) == (False, False)
        assert decision.reason


@pytest.mark.parametrize("policy", [ON, OFF])
def test_headers(policy: TeamPolicy) -> None:
    hot = request(temperature=1.0)
    assert (decide(request(), policy, "bypass").lookup, decide(request(), policy, "bypass").store) == (
        False,
        False,
    )
    assert (decide(hot, policy, "refresh").lookup, decide(hot, policy, "refresh").store) == (False, True)
    assert (decide(hot, policy, " Use ").lookup, decide(hot, policy, "use").store) == (True, True)


def test_unknown_header_value_is_ignored() -> None:
    assert decide(request(), ON, "sometimes") == decide(request(), ON, None)


def test_several_answers_are_never_cached_even_when_asked() -> None:
    for header in (None, "use", "refresh"):
        decision = decide(request(extra={"n": 3}), ON, header)
        assert (decision.lookup, decision.store) == (False, False)
    assert decide(request(extra={"n": 1}), ON, None).lookup is True


# ---- cache_key -------------------------------------------------------------------------------------


def test_key_is_team_prefixed_and_stable() -> None:
    key = cache_key("team-a", "claude-sonnet-5-5", request())
    team, digest = key.split(":")
    assert team == "team-a" and len(digest) == 64
    assert cache_key("team-a", "claude-sonnet-5-5", request()) == key


def test_key_ignores_cache_markers_stream_format_and_metadata() -> None:
    base = cache_key("t", "m", request())
    marked = request()
    marked.system[0]["cache_control"] = {"type": "ephemeral"}
    marked.messages[0].content[0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    marked.messages[2].content[0]["content"][0]["cache_control"] = {"type": "ephemeral"}
    marked.tools[0].extra["cache_control"] = {"type": "ephemeral"}
    marked.cache_control = {"type": "ephemeral"}
    assert cache_key("t", "m", marked) == base
    assert cache_key("t", "m", request(stream=True, include_usage=True)) == base
    assert cache_key("t", "m", request(client_format="openai")) == base
    assert cache_key("t", "m", request(metadata={"user_id": "u1"})) == base
    assert (
        cache_key("t", "m", request(extra={"user": "u1", "stream_options": {"include_usage": True}})) == base
    )
    assert cache_key("t", "m", request(temperature=0.0)) == cache_key("t", "m", request(temperature=0))


def test_key_does_not_strip_cache_control_inside_tool_inputs() -> None:
    # "cache_control" may legitimately be a property name in a schema or a tool input.
    schema = {"type": "object", "properties": {"cache_control": {"type": "string"}}}
    assert cache_key("t", "m", request(tools=[Tool("x", None, schema)])) != cache_key(
        "t", "m", request(tools=[Tool("x", None, {"type": "object", "properties": {}})])
    )


@pytest.mark.parametrize(
    "change",
    [
        {"system": [{"type": "text", "text": "You are verbose."}]},
        {"messages": [Message("user", [{"type": "text", "text": "What is 2 + 3?"}])]},
        {"tools": []},
        {"tool_choice": {"type": "any"}},
        {"response_format": ResponseFormat(type="json_object")},
        {"max_tokens": 101},
        {"stop_sequences": ["\n"]},
        {"temperature": 0.2},
        {"top_p": 0.9},
        {"top_k": 1},
        {"seed": 7},
        {"extra": {"thinking": {"type": "adaptive"}}},
        {"anthropic_beta": "some-beta-2026-01-01"},
    ],
)
def test_key_changes_with_everything_that_affects_the_output(change: dict[str, object]) -> None:
    assert cache_key("t", "m", request(**change)) != cache_key("t", "m", request())


def test_key_separates_teams_and_served_models() -> None:
    keys = {cache_key(team, model, request()) for team in ("a", "b") for model in ("m1", "m2")}
    assert len(keys) == 4


def test_key_does_not_mutate_the_request() -> None:
    req = request()
    req.messages[0].content[0]["cache_control"] = {"type": "ephemeral"}
    before = copy.deepcopy(req)
    cache_key("t", "m", req)
    assert req == before


# ---- encoding --------------------------------------------------------------------------------------


def test_encoding_round_trips_every_field() -> None:
    resp = ChatResponse(
        id="msg_1",
        model="claude-sonnet-5-5",
        content=[
            {"type": "text", "text": "4 ✓"},
            {"type": "tool_use", "id": "toolu_1", "name": "x", "input": {"a": [1]}},
        ],
        stop_reason="stop_sequence",
        usage=Usage(
            input_tokens=11,
            output_tokens=22,
            cache_write_5m_tokens=33,
            cache_write_1h_tokens=44,
            cache_read_tokens=55,
        ),
        stop_sequence="\n\n",
        extra={"stop_details": None, "container": {"id": "c1"}},
        created=1_700_000_000,
    )
    assert decode_response(encode_response(resp)) == resp


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"v": 99}', b'{"v": 1, "id": "x"}'])
def test_decoding_anything_else_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_response(data)


# ---- MemoryResponseCache ---------------------------------------------------------------------------


async def test_memory_lru_evicts_the_least_recently_used() -> None:
    cache = MemoryResponseCache(max_entries=2, ttl_s=60, max_entry_bytes=100)
    await cache.put("a", b"1")
    await cache.put("b", b"2")
    assert await cache.get("a") == b"1"  # a is now the most recently used
    await cache.put("c", b"3")
    assert await cache.get("b") is None
    assert await cache.get("a") == b"1"
    assert await cache.get("c") == b"3"
    assert len(cache) == 2


async def test_memory_ttl_uses_the_injected_clock() -> None:
    clock = FakeClock()
    cache = MemoryResponseCache(max_entries=10, ttl_s=30, max_entry_bytes=100, clock=clock)
    await cache.put("k", b"v")
    clock.now += 29.9
    assert await cache.get("k") == b"v"
    clock.now += 0.1
    assert await cache.get("k") is None
    assert len(cache) == 0


async def test_memory_total_bytes_are_bounded() -> None:
    cache = MemoryResponseCache(max_entries=100, ttl_s=60, max_entry_bytes=100, max_total_bytes=250)
    for key in "abc":
        assert await cache.put(key, b"x" * 100)
    assert await cache.get("a") is None  # 300 bytes > 250: the oldest went
    assert await cache.get("b") == b"x" * 100
    assert await cache.put("b", b"y" * 10)  # replacing an entry frees its old size
    assert await cache.put("d", b"z" * 100)
    assert await cache.get("c") == b"x" * 100 and await cache.get("b") == b"y" * 10


async def test_create_response_cache_picks_the_store() -> None:
    settings = Settings(
        response_cache_max_entries=3, response_cache_ttl_s=5, response_cache_max_entry_bytes=10
    )
    memory = create_response_cache(settings, None)
    assert isinstance(memory, MemoryResponseCache)
    assert not await memory.put("k", b"x" * 11)
    assert await memory.put("k", b"x" * 10)

    import redis.asyncio

    client = redis.asyncio.Redis()  # not connected until used
    try:
        assert isinstance(create_response_cache(settings, client), RedisResponseCache)
    finally:
        await client.aclose()
