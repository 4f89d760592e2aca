"""Automatic prompt-cache breakpoints: placement, client markers, limits, TTL order, no other change."""

from __future__ import annotations

import copy
import random
from decimal import Decimal
from typing import Any

import pytest

from app.caching.prompt_cache import (
    MAX_BREAKPOINTS,
    apply_breakpoints,
    count_breakpoints,
    prompt_cache_enabled,
)
from app.config import ModelConfig, Prices
from app.domain import Block, ChatRequest, Message, Tool
from app.tokens import BYTES_PER_TOKEN_ESTIMATE


def model(min_cache_tokens: int = 1024) -> ModelConfig:
    return ModelConfig(
        provider="anthropic",
        tier="medium",
        context_window=200_000,
        max_output_tokens=64_000,
        min_cache_tokens=min_cache_tokens,
        prices=Prices(
            input=Decimal(3),
            output=Decimal(15),
            cache_write_5m=Decimal("3.75"),
            cache_write_1h=Decimal(6),
            cache_read=Decimal("0.30"),
        ),
    )


def text(tokens: int, seed: str = "w") -> Block:
    """A text block of about ``tokens`` estimated tokens."""
    size = int(tokens * BYTES_PER_TOKEN_ESTIMATE)
    return {"type": "text", "text": (seed + " ") * (size // (len(seed) + 1))}


def tool(name: str, description_tokens: int = 10) -> Tool:
    return Tool(
        name=name,
        description=text(description_tokens)["text"],
        input_schema={"type": "object", "properties": {"q": {"type": "string"}}},
    )


def request(
    messages: list[Message],
    system: list[Block] | None = None,
    tools: list[Tool] | None = None,
    cache_control: dict[str, Any] | None = None,
) -> ChatRequest:
    return ChatRequest(
        model="claude-test",
        messages=messages,
        max_tokens=256,
        client_format="anthropic",
        system=system or [],
        tools=tools or [],
        cache_control=cache_control,
    )


def conversation(turns: int, tokens_per_message: int = 50) -> list[Message]:
    """user, assistant, user, ... ending with a user message: ``turns`` user messages."""
    messages: list[Message] = []
    for turn in range(turns):
        if turn:
            messages.append(Message("assistant", [text(tokens_per_message, f"a{turn}")]))
        messages.append(Message("user", [text(tokens_per_message, f"u{turn}")]))
    return messages


def markers(req: ChatRequest) -> dict[str, dict[str, Any]]:
    """Every marker in the request, by label."""
    found: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(req.tools):
        if "cache_control" in t.extra:
            found[f"tools[{i}]"] = t.extra["cache_control"]
    for i, b in enumerate(req.system):
        if "cache_control" in b:
            found[f"system[{i}]"] = b["cache_control"]
    for i, m in enumerate(req.messages):
        for j, b in enumerate(m.content):
            if "cache_control" in b:
                found[f"messages[{i}][{j}]"] = b["cache_control"]
    return found


def ttl_order_is_valid(req: ChatRequest) -> bool:
    """Every 1h marker precedes every 5m marker (tools → system → messages, then top level)."""
    ttls = [cc.get("ttl", "5m") for cc in markers(req).values()]  # dict keeps prefix order
    if req.cache_control is not None:
        ttls.append(req.cache_control.get("ttl", "5m"))
    first_5m = next((i for i, t in enumerate(ttls) if t == "5m"), len(ttls))
    return all(t == "5m" for t in ttls[first_5m:])


def strip_added(req: ChatRequest, before: ChatRequest, labels: list[str]) -> ChatRequest:
    """A copy of ``req`` without the markers added since ``before``, checking ``labels`` names them."""
    added = sorted(set(markers(req)) - set(markers(before)), key=list(markers(req)).index)
    assert [
        key.split("[")[0] if not key.startswith("messages") else key.rsplit("[", 1)[0] for key in added
    ] == labels
    stripped = copy.deepcopy(req)
    for key in added:
        section, rest = key.split("[", 1)
        indexes = [int(i) for i in rest.replace("]", "").split("[")]
        if section == "tools":
            del stripped.tools[indexes[0]].extra["cache_control"]
        elif section == "system":
            del stripped.system[indexes[0]]["cache_control"]
        else:
            del stripped.messages[indexes[0]].content[indexes[1]]["cache_control"]
    return stripped


# ---- Placement -------------------------------------------------------------------------------------


def test_long_system_and_single_user_turn_marks_system_and_the_final_message() -> None:
    req = request([Message("user", [text(50)])], system=[text(2000)])

    placed = apply_breakpoints(req, model(), ttl="5m")

    assert placed == ["system", "messages[0]"]
    assert req.system[0]["cache_control"] == {"type": "ephemeral"}
    assert req.messages[0].content[0]["cache_control"] == {"type": "ephemeral"}


def test_long_history_marks_head_final_message_and_previous_user_turn() -> None:
    req = request(conversation(turns=4, tokens_per_message=400), system=[text(200), text(1500)])

    placed = apply_breakpoints(req, model(), ttl="5m")

    # 7 messages: u0 a1 u1 a2 u2 a3 u3 → final is messages[6], the previous user turn messages[4].
    assert placed == ["system", "messages[4]", "messages[6]"]
    assert set(markers(req)) == {"system[1]", "messages[4][0]", "messages[6][0]"}


def test_tools_without_system_mark_the_last_tool() -> None:
    req = request([Message("user", [text(20)])], tools=[tool("a", 800), tool("b", 800)])

    placed = apply_breakpoints(req, model(), ttl="5m")

    assert placed == ["tools", "messages[0]"]
    assert req.tools[1].extra["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in req.tools[0].extra


def test_tools_and_system_mark_the_system_not_the_tools() -> None:
    # The system marker's prefix includes the tools, so one marker covers both.
    req = request([Message("user", [text(20)])], system=[text(1500)], tools=[tool("a", 100)])

    assert apply_breakpoints(req, model(), ttl="5m") == ["system", "messages[0]"]
    assert "cache_control" not in req.tools[0].extra


def test_short_prompt_is_left_alone() -> None:
    req = request(conversation(turns=3, tokens_per_message=30), system=[text(100)], tools=[tool("a")])
    before = copy.deepcopy(req)

    assert apply_breakpoints(req, model(1024), ttl="5m") == []
    assert req == before


def test_only_candidates_whose_prefix_reaches_the_minimum_are_marked() -> None:
    # System ~600 tokens (below 1024); with the history the prefix passes the minimum.
    req = request(conversation(turns=3, tokens_per_message=300), system=[text(600)])

    placed = apply_breakpoints(req, model(1024), ttl="5m")

    assert "system" not in placed
    assert placed == ["messages[2]", "messages[4]"]


def test_the_minimum_comes_from_the_model() -> None:
    build = lambda: request([Message("user", [text(20)])], system=[text(700)])  # noqa: E731
    assert apply_breakpoints(build(), model(512), ttl="5m") == ["system", "messages[0]"]
    assert apply_breakpoints(build(), model(1024), ttl="5m") == []
    assert apply_breakpoints(build(), model(0), ttl="5m") == ["system", "messages[0]"]


def test_threshold_is_the_calibrated_estimate_of_the_prefix() -> None:
    # Just above and just below the minimum by the bytes / 3.5 estimate of the prefix up to the system.
    minimum = 1000
    above = request([Message("user", [text(5)])], system=[text(minimum + 5)])
    below = request([Message("user", [text(5)])], system=[text(minimum - 10)])

    assert "system" in apply_breakpoints(above, model(minimum), ttl="5m")
    assert "system" not in apply_breakpoints(below, model(minimum), ttl="5m")


def test_sizing_stops_once_the_prefix_is_long_enough() -> None:
    # A block after the threshold that cannot be serialised: sizing it would raise TypeError.
    unsizeable = {"type": "image", "source": object()}
    req = request(
        [
            Message("user", [text(20)]),
            Message("assistant", [text(20)]),
            Message("user", [unsizeable, text(10)]),
        ],
        system=[text(2000)],
    )

    assert apply_breakpoints(req, model(), ttl="5m") == ["system", "messages[0]", "messages[2]"]


def test_tool_use_and_tool_result_blocks_carry_markers() -> None:
    messages = [
        Message("user", [text(30)]),
        Message(
            "assistant", [text(10), {"type": "tool_use", "id": "toolu_1", "name": "a", "input": {"q": "x"}}]
        ),
        Message("user", [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "found it"}]),
    ]
    req = request(messages, system=[text(1500)], tools=[tool("a")])

    placed = apply_breakpoints(req, model(), ttl="5m")

    assert placed == ["system", "messages[0]", "messages[2]"]
    assert req.messages[2].content[0]["cache_control"] == {"type": "ephemeral"}


def test_thinking_and_empty_text_blocks_never_get_markers() -> None:
    messages = [
        Message("user", [text(30)]),
        Message(
            "assistant",
            [
                {"type": "text", "text": "answer"},
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": ""},
            ],
        ),
    ]
    req = request(messages, system=[text(1500), {"type": "text", "text": ""}])

    placed = apply_breakpoints(req, model(), ttl="5m")

    # The empty last system block is skipped for the one before it; the final (prefill) message's
    # marker walks back past the empty text and thinking blocks to the last text that can carry it.
    assert placed == ["system", "messages[0]", "messages[1]"]
    assert set(markers(req)) == {"system[0]", "messages[0][0]", "messages[1][0]"}


def test_a_message_with_nothing_cacheable_is_skipped() -> None:
    messages = [
        Message("user", [text(30)]),
        Message("assistant", [{"type": "thinking", "thinking": "x", "signature": "s"}]),
    ]
    req = request(messages, system=[text(1500)])

    assert apply_breakpoints(req, model(), ttl="5m") == ["system", "messages[0]"]


def test_unknown_block_types_are_never_marked() -> None:
    req = request([Message("user", [text(30), {"type": "future_block", "x": 1}])], system=[text(1500)])

    assert apply_breakpoints(req, model(), ttl="5m") == ["system", "messages[0]"]
    assert "cache_control" in req.messages[0].content[0]
    assert "cache_control" not in req.messages[0].content[1]


# ---- The client's own markers ----------------------------------------------------------------------


def test_count_breakpoints_sees_every_kind_of_client_marker() -> None:
    cc = {"type": "ephemeral"}
    tools = [tool("a"), tool("b")]
    tools[0].extra["cache_control"] = cc
    req = request(
        [
            Message(
                "user",
                [
                    {"type": "text", "text": "x", "cache_control": cc},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "text", "text": "y", "cache_control": cc}],
                    },
                ],
            )
        ],
        system=[{"type": "text", "text": "s", "cache_control": cc}],
        tools=tools,
        cache_control=cc,
    )
    assert count_breakpoints(req) == 5
    assert count_breakpoints(request([Message("user", [text(5)])])) == 0


def test_client_markers_are_kept_and_their_places_not_doubled() -> None:
    client_marker = {"type": "ephemeral", "ttl": "1h"}
    req = request(conversation(turns=3, tokens_per_message=400), system=[text(1500)])
    req.system[0]["cache_control"] = client_marker

    placed = apply_breakpoints(req, model(), ttl="1h")

    assert req.system[0]["cache_control"] is client_marker  # untouched, same object
    assert placed == ["messages[2]", "messages[4]"]
    assert count_breakpoints(req) == 3


def test_client_markers_take_slots_first_in_priority_order() -> None:
    cc = {"type": "ephemeral"}
    messages = conversation(turns=4, tokens_per_message=400)
    messages[0].content[0]["cache_control"] = dict(cc)
    messages[1].content[0]["cache_control"] = dict(cc)
    messages[2].content[0]["cache_control"] = dict(cc)
    req = request(messages, system=[text(1500)])

    placed = apply_breakpoints(req, model(), ttl="5m")

    assert placed == ["system"]  # one free slot: the head comes first
    assert count_breakpoints(req) == MAX_BREAKPOINTS


def test_four_client_markers_leave_nothing_to_add() -> None:
    messages = conversation(turns=4, tokens_per_message=400)
    for m in messages[:4]:
        m.content[0]["cache_control"] = {"type": "ephemeral"}
    req = request(messages, system=[text(1500)])
    before = copy.deepcopy(req)

    assert apply_breakpoints(req, model(), ttl="5m") == []
    assert req == before


def test_top_level_automatic_marker_counts_and_covers_the_final_message() -> None:
    req = request(
        conversation(turns=3, tokens_per_message=400),
        system=[text(1500)],
        cache_control={"type": "ephemeral"},
    )

    placed = apply_breakpoints(req, model(), ttl="5m")

    assert placed == ["system", "messages[2]"]  # not messages[4]: the automatic marker lands there
    assert count_breakpoints(req) == 3


def test_never_more_than_four_breakpoints_and_nothing_else_changes() -> None:
    rng = random.Random(6)
    kinds = ["text", "empty", "thinking", "tool_use", "tool_result", "image"]

    def block(kind: str) -> Block:
        if kind == "text":
            return text(rng.randint(1, 600), rng.choice("abc"))
        if kind == "empty":
            return {"type": "text", "text": ""}
        if kind == "thinking":
            return {"type": "thinking", "thinking": "t" * rng.randint(1, 500), "signature": "s"}
        if kind == "tool_use":
            return {
                "type": "tool_use",
                "id": "toolu_x",
                "name": "a",
                "input": {"q": "x" * rng.randint(0, 900)},
            }
        if kind == "tool_result":
            return {"type": "tool_result", "tool_use_id": "toolu_x", "content": "r" * rng.randint(0, 900)}
        return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 500}}

    placed_in: dict[int, int] = {}  # how many requests got n markers: the sample must exercise them all
    for _ in range(400):
        roles = ["user", "assistant"]
        messages = [
            Message(roles[i % 2], [block(rng.choice(kinds)) for _ in range(rng.randint(1, 3))])  # type: ignore[arg-type]
            for i in range(rng.randint(1, 9))
        ]
        req = request(
            messages,
            system=[text(rng.randint(1, 900)) for _ in range(rng.randint(0, 2))],
            tools=[tool(f"t{i}", rng.randint(1, 400)) for i in range(rng.randint(0, 3))],
            cache_control={"type": "ephemeral"} if rng.random() < 0.2 else None,
        )
        for _ in range(rng.randint(0, 5)):  # client markers on random eligible blocks, at most 4 total
            candidates = [b for m in req.messages for b in m.content if b.get("type") in ("text", "tool_use")]
            if candidates and count_breakpoints(req) < MAX_BREAKPOINTS:
                rng.choice(candidates)["cache_control"] = {"type": "ephemeral"}
        before = copy.deepcopy(req)
        client = count_breakpoints(req)

        placed = apply_breakpoints(req, model(rng.choice([0, 512, 1024, 2048])), ttl=rng.choice(["5m", "1h"]))

        assert count_breakpoints(req) == client + len(placed) <= MAX_BREAKPOINTS
        placed_in[len(placed)] = placed_in.get(len(placed), 0) + 1
        assert strip_added(req, before, placed) == before
        assert ttl_order_is_valid(req)
        for m in req.messages:
            for b in m.content:
                if b.get("type") in ("thinking", "redacted_thinking") or b == {"type": "text", "text": ""}:
                    assert "cache_control" not in b
    assert all(placed_in.get(n, 0) >= 10 for n in range(4)), placed_in


def test_nothing_else_changes() -> None:
    req = request(
        conversation(turns=5, tokens_per_message=300), system=[text(1500)], tools=[tool("a"), tool("b")]
    )
    req.temperature = 0.5
    req.extra["thinking"] = {"type": "adaptive"}
    before = copy.deepcopy(req)

    placed = apply_breakpoints(req, model(), ttl="1h")

    assert len(placed) == 3
    assert req != before
    assert strip_added(req, before, placed) == before


# ---- TTL -------------------------------------------------------------------------------------------


def test_policy_ttl_sets_the_marker_ttl() -> None:
    one_hour = request(conversation(turns=2, tokens_per_message=400), system=[text(1500)])
    five_min = copy.deepcopy(one_hour)

    apply_breakpoints(one_hour, model(), ttl="1h")
    apply_breakpoints(five_min, model(), ttl="5m")

    assert set(cc["ttl"] for cc in markers(one_hour).values()) == {"1h"}
    assert all(cc == {"type": "ephemeral"} for cc in markers(five_min).values())


def test_a_client_5m_marker_before_forces_5m_after_it() -> None:
    messages = conversation(turns=4, tokens_per_message=400)
    messages[1].content[0]["cache_control"] = {"type": "ephemeral"}  # client, 5m, before u1
    req = request(messages, system=[text(1500)])

    apply_breakpoints(req, model(), ttl="1h")

    found = markers(req)
    assert found["system[0]"] == {"type": "ephemeral", "ttl": "1h"}  # before the client's 5m: 1h
    assert found["messages[4][0]"] == {"type": "ephemeral"}  # after it: 5m
    assert found["messages[6][0]"] == {"type": "ephemeral"}
    assert ttl_order_is_valid(req)


def test_a_client_1h_marker_after_lifts_earlier_markers_to_1h() -> None:
    messages = conversation(turns=4, tokens_per_message=400)
    messages[5].content[0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    req = request(messages, system=[text(1500)])

    apply_breakpoints(req, model(), ttl="5m")

    found = markers(req)
    assert found["system[0]"]["ttl"] == "1h"
    assert found["messages[4][0]"]["ttl"] == "1h"
    assert found["messages[6][0]"] == {"type": "ephemeral"}  # after the client's 1h: the policy's 5m
    assert ttl_order_is_valid(req)


def test_a_top_level_1h_marker_lifts_all_added_markers_to_1h() -> None:
    req = request(
        conversation(turns=3, tokens_per_message=400),
        system=[text(1500)],
        cache_control={"type": "ephemeral", "ttl": "1h"},
    )

    apply_breakpoints(req, model(), ttl="5m")

    assert all(cc.get("ttl") == "1h" for cc in markers(req).values())
    assert ttl_order_is_valid(req)


# ---- Opt-out ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "header", "expected"),
    [
        ("auto", None, True),
        ("auto", "off", False),
        ("auto", " OFF ", False),
        ("auto", "on", True),
        ("off", None, False),
        ("off", "on", False),
    ],
)
def test_prompt_cache_enabled(policy: str, header: str | None, expected: bool) -> None:
    assert prompt_cache_enabled(policy, header) is expected
