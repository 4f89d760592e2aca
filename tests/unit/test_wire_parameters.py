"""app.wire.parameters: which parameters each upstream format would lose, per client format."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain import ChatRequest, Message, Tool
from app.wire.parameters import unsupported


def req(client_format: str = "openai", **fields: Any) -> ChatRequest:
    return ChatRequest(
        model="m",
        messages=[Message("user", [{"type": "text", "text": "hi"}])],
        max_tokens=10,
        client_format=client_format,  # type: ignore[arg-type]
        **fields,
    )


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"frequency_penalty": 0.1}, "frequency_penalty"),
        ({"presence_penalty": -1}, "presence_penalty"),
        ({"logit_bias": {"5": 1}}, "logit_bias"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"audio": {"voice": "alloy"}, "modalities": ["text", "audio"]}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"web_search_options": {}}, None),  # empty: asks for nothing
        ({"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
    ],
)
def test_openai_fields_to_anthropic(extra: dict[str, Any], param: str | None) -> None:
    refused = unsupported(req(extra=extra), "anthropic")
    assert list(refused) == ([param] if param else [])
    assert unsupported(req(extra=extra), "openai") == {}  # forwarded untouched to their own format


@pytest.mark.parametrize(
    "extra",
    [
        {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}},
        {"seed": 3, "service_tier": "auto", "store": True, "reasoning_effort": "low", "modalities": ["text"]},
    ],
)
def test_what_asks_for_nothing_or_changes_no_answer_is_not_refused(extra: dict[str, Any]) -> None:
    assert unsupported(req(extra=extra), "anthropic") == {}


def test_stop_sequences_beyond_four_to_openai() -> None:
    five = ["a", "b", "c", "d", "e"]
    assert list(unsupported(req(stop_sequences=five), "openai")) == ["stop"]
    assert list(unsupported(req("anthropic", stop_sequences=five), "openai")) == ["stop_sequences"]
    assert unsupported(req(stop_sequences=five[:4]), "openai") == {}
    assert unsupported(req("anthropic", stop_sequences=five), "anthropic") == {}


def test_anthropic_fields_to_openai() -> None:
    assert list(unsupported(req("anthropic", top_k=5), "openai")) == ["top_k"]
    assert unsupported(req("anthropic", top_k=5), "openai", sampling="drop") == {}
    assert list(unsupported(req("anthropic", extra={"mcp_servers": [{"url": "x"}]}), "openai")) == ["mcp_servers"]
    assert list(unsupported(req("anthropic", extra={"container": "c1"}), "openai")) == ["container"]
    server = Tool("web_search", None, {}, {"type": "web_search_20250305"})
    custom = Tool("f", None, {"type": "object"}, {"type": "custom"})
    refused = unsupported(req("anthropic", tools=[custom, server]), "openai")
    assert list(refused) == ["tools"] and "tools[1]" in refused["tools"] and "web_search_20250305" in refused["tools"]
    assert unsupported(req("anthropic", tools=[custom], extra={"thinking": {"type": "adaptive"}}), "openai") == {}


def test_responses_clients_have_nothing_to_lose() -> None:
    assert unsupported(req("responses"), "openai") == unsupported(req("responses"), "anthropic") == {}
