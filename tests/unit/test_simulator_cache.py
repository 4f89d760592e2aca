"""The simulator's prompt caches: Anthropic breakpoint accounting (writes, reads, TTLs, limits) and
OpenAI automatic prefix caching, with time moved by an injected clock instead of sleeping."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from app.simulator import SimulatorConfig, create_simulator_app
from app.simulator.prompt_cache import TTLStore
from tests.servers import serve

# One plain client for raw calls: httpx.post() would build (and verify-configure) a client per call.
HTTP = httpx.Client(timeout=30)
MODEL = "claude-sonnet-5-5"
LONG = "The quick brown fox jumps over the lazy dog. " * 100  # 4500 bytes -> 1125 tokens
OTHER_LONG = "Pack my box with five dozen liquor jugs, please. " * 100


def tokens(text: str) -> int:
    return math.ceil(len(text.encode()) / 4)


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sim:
    url: str
    clock: Clock


@pytest.fixture(scope="module")
def sim() -> Iterator[Sim]:
    clock = Clock()
    config = SimulatorConfig(min_cache_tokens=lambda model: 2048 if model == "big-minimum" else 1024)
    with serve(create_simulator_app(config, clock=clock)) as url:
        yield Sim(url, clock)


@pytest.fixture(autouse=True)
def _reset(sim: Sim) -> None:
    HTTP.post(sim.url + "/_sim/reset").raise_for_status()


@pytest.fixture(scope="module")
def claude(sim: Sim) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def gpt(sim: Sim) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)


def cached_system(text: str, ttl: str | None = None) -> list[dict[str, Any]]:
    cache_control: dict[str, Any] = {"type": "ephemeral"}
    if ttl:
        cache_control["ttl"] = ttl
    return [{"type": "text", "text": text, "cache_control": cache_control}]


def usage_of(claude: anthropic.Anthropic, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("max_tokens", 5)
    kwargs.setdefault("messages", [{"role": "user", "content": "Hello"}])
    usage = claude.messages.create(**kwargs).usage
    assert usage.cache_creation is not None
    return {
        "input": usage.input_tokens,
        "write": usage.cache_creation_input_tokens,
        "read": usage.cache_read_input_tokens,
        "5m": usage.cache_creation.ephemeral_5m_input_tokens,
        "1h": usage.cache_creation.ephemeral_1h_input_tokens,
    }


# prefix = request overhead (5) + system text; the rest = one message (3) + "Hello" (2)
SYSTEM_PREFIX = 5 + tokens(LONG)
USER_TAIL = 3 + tokens("Hello")


def test_write_then_read(claude: anthropic.Anthropic) -> None:
    first = usage_of(claude, system=cached_system(LONG))
    second = usage_of(claude, system=cached_system(LONG))

    assert first == {"input": USER_TAIL, "write": SYSTEM_PREFIX, "read": 0, "5m": SYSTEM_PREFIX, "1h": 0}
    assert second == {"input": USER_TAIL, "write": 0, "read": SYSTEM_PREFIX, "5m": 0, "1h": 0}
    total = claude.messages.count_tokens(
        model=MODEL, system=cached_system(LONG), messages=[{"role": "user", "content": "Hello"}]
    ).input_tokens
    assert total == second["input"] + second["read"] + second["write"]


def test_cache_key_depends_on_model_and_content(claude: anthropic.Anthropic) -> None:
    usage_of(claude, system=cached_system(LONG))
    other_model = usage_of(claude, model="claude-opus-5-5", system=cached_system(LONG))
    other_text = usage_of(claude, system=cached_system(LONG + "!"))
    without_marker = usage_of(claude, system=[{"type": "text", "text": LONG}])

    assert other_model["read"] == 0 and other_model["write"] == SYSTEM_PREFIX
    assert other_text["read"] == 0 and other_text["write"] > 0
    assert without_marker == {"input": SYSTEM_PREFIX + USER_TAIL, "write": 0, "read": 0, "5m": 0, "1h": 0}


def test_below_minimum_caches_nothing(claude: anthropic.Anthropic) -> None:
    short = "A short system prompt."
    first = usage_of(claude, system=cached_system(short))
    second = usage_of(claude, system=cached_system(short))
    per_model = usage_of(claude, model="big-minimum", system=cached_system(LONG))  # 1130 < 2048
    lowered = usage_of(claude, system=cached_system(short), extra_headers={"x-sim-min-cache-tokens": "5"})
    lowered_again = usage_of(
        claude, system=cached_system(short), extra_headers={"x-sim-min-cache-tokens": "5"}
    )

    for usage in (first, second, per_model):
        assert (usage["write"], usage["read"], usage["5m"], usage["1h"]) == (0, 0, 0, 0)
    assert first["input"] == 5 + tokens(short) + USER_TAIL
    assert lowered["write"] == 5 + tokens(short) and lowered_again["read"] == 5 + tokens(short)


def test_five_minute_expiry_is_refreshed_by_hits(claude: anthropic.Anthropic, sim: Sim) -> None:
    assert usage_of(claude, system=cached_system(LONG))["write"] == SYSTEM_PREFIX
    sim.clock.advance(299)
    assert usage_of(claude, system=cached_system(LONG))["read"] == SYSTEM_PREFIX
    sim.clock.advance(299)  # 598 s after the write, but 299 s after the refreshing hit
    assert usage_of(claude, system=cached_system(LONG))["read"] == SYSTEM_PREFIX
    sim.clock.advance(301)
    expired = usage_of(claude, system=cached_system(LONG))
    assert expired["read"] == 0 and expired["write"] == SYSTEM_PREFIX


def test_one_hour_ttl_split_and_expiry(claude: anthropic.Anthropic, sim: Sim) -> None:
    tool: Any = {
        "name": "search",
        "description": OTHER_LONG,
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
    tool_tokens = math.ceil(len(orjson.dumps({k: v for k, v in tool.items() if k != "cache_control"})) / 4)
    kwargs: Any = {"tools": [tool], "tool_choice": {"type": "none"}, "system": cached_system(LONG)}

    first = usage_of(claude, **kwargs)
    hour_prefix = 5 + tool_tokens
    assert first["1h"] == hour_prefix
    assert first["5m"] == tokens(LONG)
    assert first["write"] == hour_prefix + tokens(LONG) and first["read"] == 0

    sim.clock.advance(600)  # the 5m entry is gone, the 1h entry lives
    later = usage_of(claude, **kwargs)
    assert later == {
        "input": USER_TAIL,
        "write": tokens(LONG),
        "read": hour_prefix,
        "5m": tokens(LONG),
        "1h": 0,
    }

    sim.clock.advance(3601)
    assert usage_of(claude, **kwargs)["read"] == 0


def test_breakpoint_limits(claude: anthropic.Anthropic) -> None:
    five_blocks = [
        {"type": "text", "text": f"block {i}", "cache_control": {"type": "ephemeral"}} for i in range(5)
    ]
    with pytest.raises(anthropic.BadRequestError) as too_many:
        usage_of(claude, system=five_blocks)
    assert "maximum of 4" in str(too_many.value)

    four_plus_automatic: Any = {"system": five_blocks[:4], "cache_control": {"type": "ephemeral"}}
    with pytest.raises(anthropic.BadRequestError):
        usage_of(claude, **four_plus_automatic)

    with pytest.raises(anthropic.BadRequestError) as misordered:
        usage_of(claude, system=[*cached_system("first", "5m"), *cached_system("second", "1h")])
    assert "1h" in str(misordered.value)

    with pytest.raises(anthropic.BadRequestError):
        usage_of(claude, system=cached_system(""))

    assert usage_of(claude, system=five_blocks[:4])["input"] > 0  # four are fine


def test_markers_inside_a_tool_result_are_breakpoints(claude: anthropic.Anthropic) -> None:
    def conversation(result_blocks: list[dict[str, Any]]) -> Any:
        return [
            {"role": "user", "content": "look it up"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": result_blocks},
                    {"type": "text", "text": "Summarise."},
                ],
            },
        ]

    marked = {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}
    tools: Any = [{"name": "f", "input_schema": {"type": "object"}}]
    first = usage_of(claude, tools=tools, tool_choice={"type": "none"}, messages=conversation([marked]))
    second = usage_of(
        claude,
        tools=tools,
        tool_choice={"type": "none"},
        messages=conversation([marked, {"type": "text", "text": "appended later"}]),
    )

    assert first["write"] > tokens(LONG) and first["input"] == tokens("Summarise.")
    # the prefix ends at the nested block: what follows it inside the tool_result is not part of it
    assert second["read"] == first["write"]
    assert second["input"] == tokens("appended later") + tokens("Summarise.")

    four_top_level = [
        {"type": "text", "text": f"block {i}", "cache_control": {"type": "ephemeral"}} for i in range(4)
    ]
    with pytest.raises(anthropic.BadRequestError):  # 4 on system + 1 nested = 5
        usage_of(claude, system=four_top_level, tools=tools, messages=conversation([marked]))


def test_automatic_caching_marks_the_last_block(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": LONG}]
    prefix = 5 + 3 + tokens(LONG)
    first = usage_of(claude, messages=messages, cache_control={"type": "ephemeral"})
    second = usage_of(claude, messages=messages, cache_control={"type": "ephemeral"})

    assert (first["write"], first["read"], first["input"]) == (prefix, 0, 0)
    assert (second["write"], second["read"], second["input"]) == (0, prefix, 0)


def test_conversation_reads_the_previous_turns_breakpoint(claude: anthropic.Anthropic) -> None:
    def turn(text: str, cache: bool) -> dict[str, Any]:
        block: dict[str, Any] = {"type": "text", "text": text}
        if cache:
            block["cache_control"] = {"type": "ephemeral"}
        return {"role": "user", "content": [block]}

    first_turn = [turn(LONG, cache=True)]
    usage_of(claude, messages=first_turn)
    second_turn = [
        turn(LONG, cache=True),
        {"role": "assistant", "content": "Noted."},
        turn("And now a follow-up question " * 5, cache=True),
    ]
    second = usage_of(claude, messages=second_turn)

    first_prefix = 5 + 3 + tokens(LONG)
    second_prefix = first_prefix + 3 + tokens("Noted.") + 3 + tokens("And now a follow-up question " * 5)
    assert second == {
        "input": 0,
        "write": second_prefix - first_prefix,
        "read": first_prefix,
        "5m": second_prefix - first_prefix,
        "1h": 0,
    }


def test_tool_use_input_key_order_matters(claude: anthropic.Anthropic) -> None:
    def conversation(tool_input: dict[str, Any]) -> Any:
        return [
            {"role": "user", "content": LONG},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": tool_input}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "ok",
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            },
        ]

    tools: Any = [{"name": "f", "input_schema": {"type": "object"}}]
    usage_of(claude, tools=tools, messages=conversation({"a": 1, "b": 2}))
    same = usage_of(claude, tools=tools, messages=conversation({"a": 1, "b": 2}))
    reordered = usage_of(claude, tools=tools, messages=conversation({"b": 2, "a": 1}))

    assert same["read"] > 0
    assert reordered["read"] == 0 and reordered["write"] == same["read"]


def test_stream_reports_cache_usage(claude: anthropic.Anthropic) -> None:
    usage_of(claude, system=cached_system(LONG))
    with claude.messages.stream(
        model=MODEL, max_tokens=5, system=cached_system(LONG), messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    assert start.message.usage.cache_read_input_tokens == SYSTEM_PREFIX
    assert final.usage.cache_read_input_tokens == SYSTEM_PREFIX
    assert final.usage.input_tokens == USER_TAIL


# ---- OpenAI automatic caching ------------------------------------------------------------------------


def cached_tokens(gpt: openai.OpenAI, messages: Any, model: str = "gpt-5") -> tuple[int, int]:
    usage = gpt.chat.completions.create(model=model, messages=messages).usage
    assert usage is not None and usage.prompt_tokens_details is not None
    return usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0


def test_openai_caches_long_prefixes(gpt: openai.OpenAI, sim: Sim) -> None:
    system = {"role": "system", "content": LONG}
    prefix = 5 + 3 + tokens(LONG)

    first_prompt, first_cached = cached_tokens(gpt, [system, {"role": "user", "content": "one"}])
    second_prompt, second_cached = cached_tokens(gpt, [system, {"role": "user", "content": "two"}])
    other_model = cached_tokens(gpt, [system, {"role": "user", "content": "two"}], model="gpt-5-mini")[1]

    assert first_cached == 0 and first_prompt == prefix + 3 + tokens("one")
    assert second_cached == prefix and second_prompt == prefix + 3 + tokens("two")
    assert other_model == 0

    sim.clock.advance(301)
    assert cached_tokens(gpt, [system, {"role": "user", "content": "three"}])[1] == 0


def test_openai_short_prompts_are_not_cached(gpt: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    cached_tokens(gpt, messages)
    assert cached_tokens(gpt, messages)[1] == 0


def test_openai_stream_usage_reports_cached_tokens(gpt: openai.OpenAI) -> None:
    messages: Any = [{"role": "system", "content": LONG}, {"role": "user", "content": "hi"}]
    cached_tokens(gpt, messages)
    chunks = list(
        gpt.chat.completions.create(
            model="gpt-5", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 5 + 3 + tokens(LONG) + 3 + tokens("hi")


# ---- The store itself --------------------------------------------------------------------------------


def test_ttl_store_is_a_bounded_lru() -> None:
    store = TTLStore(max_entries=2)
    store.put(b"a", 300, now=0)
    store.put(b"b", 300, now=0)
    assert store.hit(b"a", now=1)  # a is now the most recent
    store.put(b"c", 300, now=2)  # evicts b, the least recently used
    assert not store.hit(b"b", now=3)
    assert store.hit(b"a", now=3) and store.hit(b"c", now=3)
    assert len(store) == 2
    assert not store.hit(b"a", now=3 + 300)  # expired
    store.put(b"d", 3600, now=0)
    store.put(b"d", 300, now=10)  # a 5m write does not shorten a live 1h entry
    assert store.hit(b"d", now=1000)
