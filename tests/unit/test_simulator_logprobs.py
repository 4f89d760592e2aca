"""The simulator's Chat Completions logprobs: shapes the openai SDK parses, JSON and stream agreeing,
and the real API's refusals (reasoning models, top_logprobs without logprobs)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest

from app.simulator import create_simulator_app
from app.simulator.logprobs import token_logprob
from tests.servers import serve

ASK = [{"role": "user", "content": "Tell me something"}]


@pytest.fixture(scope="module")
def gpt() -> Iterator[openai.OpenAI]:
    with serve(create_simulator_app()) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def test_json_and_stream_logprobs_agree(gpt: openai.OpenAI) -> None:
    completion = gpt.chat.completions.create(model="gpt-4.1", messages=ASK, logprobs=True, top_logprobs=4)  # type: ignore[arg-type]
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content and logprobs.refusal is None
    assert "".join(t.token for t in logprobs.content) == completion.choices[0].message.content
    chunks = list(
        gpt.chat.completions.create(model="gpt-4.1", messages=ASK, logprobs=True, top_logprobs=4, stream=True)  # type: ignore[arg-type]
    )
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in logprobs.content]
    role_chunk, finish_chunk = chunks[0].choices[0], chunks[-1].choices[0]
    assert role_chunk.logprobs is None and finish_chunk.logprobs is None  # only text chunks carry them


def test_no_logprobs_unless_asked(gpt: openai.OpenAI) -> None:
    assert gpt.chat.completions.create(model="gpt-4.1", messages=ASK).choices[0].logprobs is None  # type: ignore[arg-type]


@pytest.mark.parametrize("top", [0, 1, 5, 20])
def test_a_token_entry_is_a_plausible_distribution(top: int) -> None:
    entry = token_logprob(" word", top)
    assert entry["bytes"] == list(b" word") and entry["logprob"] < 0
    alternatives = entry["top_logprobs"]
    assert len(alternatives) == top
    if top:
        assert alternatives[0]["token"] == " word" and alternatives[0]["logprob"] == entry["logprob"]
        values = [a["logprob"] for a in alternatives]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-6
    assert token_logprob(" word", top) == entry  # deterministic


@pytest.mark.parametrize(
    ("model", "fields", "param"),
    [
        ("gpt-5-mini", {"logprobs": True}, "logprobs"),
        ("gpt-4.1", {"top_logprobs": 2}, "top_logprobs"),
        ("gpt-4.1", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("gpt-4.1", {"logprobs": "yes"}, "logprobs"),
    ],
)
def test_refusals_like_the_real_api(gpt: openai.OpenAI, model: str, fields: dict[str, object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gpt.chat.completions.create(model=model, messages=ASK, extra_body=fields)  # type: ignore[arg-type]
    assert info.value.param == param  # type: ignore[attr-defined]
