"""Parameters the served model's upstream format would lose: a 400 naming the parameter, before any
upstream call, where a client relies on them; accepted where they ask for nothing (docs/parameters.md)."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.helpers import anthropic_client, clear_sim, only_upstream_request, openai_client, upstream_requests
from tests.gateway import Gateway

CLAUDE = "claude-haiku-5-5"
GPT_PASS = "gpt-4.1"  # sampling: pass
GPT_DROP = "gpt-5-mini"  # sampling: drop
ASK: list[Any] = [{"role": "user", "content": "Say something"}]


@pytest.fixture(autouse=True)
def _fresh_sim(gateway: Gateway) -> None:
    clear_sim(gateway)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": -0.3}, "presence_penalty"),
        ({"logit_bias": {"1734": -100}}, "logit_bias"),
        ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
        ({"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
    ],
)
def test_openai_only_parameters_to_claude_are_refused(gateway: Gateway, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(gateway).chat.completions.create(model=CLAUDE, messages=ASK, extra_body=extra)
    assert info.value.param == param  # type: ignore[attr-defined]
    assert param in info.value.message and CLAUDE in info.value.message
    assert upstream_requests(gateway) == []
    # The same request to an OpenAI model goes through, the parameter forwarded untouched.
    openai_client(gateway).chat.completions.create(model=GPT_PASS, messages=ASK, extra_body=extra)
    assert only_upstream_request(gateway, "/v1/chat/completions")["body"][param] == extra[param]


def test_parameters_that_ask_for_nothing_are_accepted(gateway: Gateway) -> None:
    completion = openai_client(gateway).chat.completions.create(
        model=CLAUDE, messages=ASK, frequency_penalty=0, presence_penalty=0, logit_bias={}, seed=3, service_tier="auto"
    )
    assert completion.choices[0].message.content
    body = only_upstream_request(gateway, "/v1/messages")["body"]
    assert not {"frequency_penalty", "presence_penalty", "logit_bias", "seed", "service_tier"} & set(body)


def test_auto_routes_around_a_parameter_claude_cannot_honour(gateway: Gateway) -> None:
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model="auto", messages=ASK, frequency_penalty=0.4
    )
    served = raw.headers["x-tollway-served-model"]
    assert served.startswith("gpt-")
    assert only_upstream_request(gateway, "/v1/chat/completions")["body"]["frequency_penalty"] == 0.4


def test_auto_claude_with_a_penalty_is_refused(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(gateway).chat.completions.create(model="auto:claude", messages=ASK, presence_penalty=1)
    assert info.value.param == "presence_penalty"  # type: ignore[attr-defined]
    assert upstream_requests(gateway) == []


def test_more_than_four_stop_sequences_to_openai_are_refused_not_truncated(gateway: Gateway) -> None:
    stops = ["a1", "b2", "c3", "d4", "e5"]
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(gateway).chat.completions.create(model=GPT_PASS, messages=ASK, stop=stops)
    assert info.value.param == "stop"  # type: ignore[attr-defined]
    with pytest.raises(anthropic.BadRequestError) as a_info:
        anthropic_client(gateway).messages.create(model=GPT_PASS, max_tokens=50, messages=ASK, stop_sequences=stops)
    assert "stop_sequences" in a_info.value.message
    assert upstream_requests(gateway) == []
    anthropic_client(gateway).messages.create(model=CLAUDE, max_tokens=50, messages=ASK, stop_sequences=stops)
    assert only_upstream_request(gateway, "/v1/messages")["body"]["stop_sequences"] == stops


def test_top_k_to_an_openai_model(gateway: Gateway) -> None:
    client = anthropic_client(gateway)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=GPT_PASS, max_tokens=50, messages=ASK, extra_body={"top_k": 5})
    assert "top_k" in info.value.message and upstream_requests(gateway) == []
    # A model whose sampling policy drops every sampling parameter drops top_k with the others.
    client.messages.create(model=GPT_DROP, max_tokens=50, messages=ASK, extra_body={"top_k": 5, "temperature": 0.2})
    body = only_upstream_request(gateway, "/v1/chat/completions")["body"]
    assert "top_k" not in body and "temperature" not in body


def test_an_anthropic_server_tool_is_refused_for_an_openai_model(gateway: Gateway) -> None:
    tools: Any = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]
    with pytest.raises(anthropic.BadRequestError) as info:
        anthropic_client(gateway).messages.create(model=GPT_DROP, max_tokens=50, messages=ASK, tools=tools)
    assert "web_search_20250305" in info.value.message and upstream_requests(gateway) == []


def test_end_user_id_reaches_an_openai_upstream_as_user(gateway: Gateway) -> None:
    anthropic_client(gateway).messages.create(
        model=GPT_DROP, max_tokens=50, messages=ASK, metadata={"user_id": "end-user-9"}
    )
    assert only_upstream_request(gateway, "/v1/chat/completions")["body"]["user"] == "end-user-9"
