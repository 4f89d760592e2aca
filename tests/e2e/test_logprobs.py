"""``logprobs``/``top_logprobs`` with the official openai SDK: passed through where the served model
returns them (JSON and streaming), a 400 naming the parameter where it does not, before any upstream call."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.e2e.helpers import clear_sim, only_upstream_request, openai_client, upstream_requests
from tests.gateway import Gateway

CAPABLE = "gpt-4.1"  # capabilities.logprobs in the default catalog
PATH = "/v1/chat/completions"
MESSAGES: list[Any] = [{"role": "user", "content": "Say something short"}]


@pytest.fixture(autouse=True)
def _fresh_sim(gateway: Gateway) -> None:
    clear_sim(gateway)


def _tokens(logprobs: Any) -> list[str]:
    return [t.token for t in logprobs.content]


def test_json_answer_carries_the_upstream_logprobs(gateway: Gateway) -> None:
    completion = openai_client(gateway).chat.completions.create(
        model=CAPABLE, messages=MESSAGES, logprobs=True, top_logprobs=3
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    assert "".join(_tokens(choice.logprobs)) == choice.message.content
    for token in choice.logprobs.content:
        assert token.logprob <= 0 and token.bytes == list(token.token.encode())
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token
    body = only_upstream_request(gateway, PATH)["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 3


def test_stream_carries_each_chunks_logprobs(gateway: Gateway) -> None:
    client = openai_client(gateway)
    chunks = list(
        client.chat.completions.create(model=CAPABLE, messages=MESSAGES, logprobs=True, top_logprobs=2, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert text and "".join(t.token for t in streamed) == text
    assert all(len(t.top_logprobs) == 2 for t in streamed)
    same = client.chat.completions.create(model=CAPABLE, messages=MESSAGES, logprobs=True, top_logprobs=2)
    assert same.choices[0].logprobs is not None
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in same.choices[0].logprobs.content or []]


def test_without_logprobs_none_are_asked_for(gateway: Gateway) -> None:
    completion = openai_client(gateway).chat.completions.create(model=CAPABLE, messages=MESSAGES)
    assert completion.choices[0].logprobs is None
    assert "logprobs" not in only_upstream_request(gateway, PATH)["body"]


@pytest.mark.parametrize("model", ["claude-haiku-5-5", "gpt-5-mini", "auto:claude"])
@pytest.mark.parametrize("stream", [False, True])
def test_refused_before_any_upstream_call(gateway: Gateway, model: str, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(gateway).chat.completions.create(
            model=model, messages=MESSAGES, logprobs=True, top_logprobs=1, stream=stream
        )
    assert info.value.status_code == 400
    assert info.value.param == "logprobs"  # type: ignore[attr-defined]
    assert "logprobs" in info.value.message and CAPABLE in info.value.message
    assert upstream_requests(gateway) == []


def test_auto_routes_logprobs_only_to_a_model_that_returns_them(gateway: Gateway) -> None:
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES, logprobs=True
    )
    completion = raw.parse()
    assert raw.headers["x-tollway-served-model"] == CAPABLE
    assert completion.choices[0].logprobs is not None and completion.choices[0].logprobs.content
    assert only_upstream_request(gateway, PATH)["body"]["model"] == CAPABLE


def test_logprobs_false_is_served_anywhere(gateway: Gateway) -> None:
    completion = openai_client(gateway).chat.completions.create(
        model="claude-haiku-5-5", messages=MESSAGES, logprobs=False
    )
    assert completion.choices[0].message.content and completion.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
    ],
)
def test_malformed_logprobs_parameters(gateway: Gateway, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(gateway).chat.completions.create(model=CAPABLE, messages=MESSAGES, extra_body=extra)
    assert info.value.param == param  # type: ignore[attr-defined]
    assert upstream_requests(gateway) == []
