"""logprobs through the canonical form: client parsing, the OpenAI provider's request, reply and
chunks, the client encoder, the routing constraint, and the response cache's decision."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.auth.principal import TeamPolicy
from app.caching.response_cache import decide
from app.config import Catalog
from app.domain import StreamEvent
from app.errors import GatewayError
from app.routing.health import DeploymentHealth
from app.routing.router import RouteError, Router
from app.wire.checks import MalformedReply
from app.wire.openai.client import ChunkEncoder, encode_response, parse_request
from app.wire.openai.provider import ChunkDecoder, build_request, parse_response
from tests.unit.test_routing_router import catalog, principal, request

LOGPROBS = {
    "content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}],
    "refusal": None,
}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_parse_keeps_logprobs_out_of_the_pass_through_fields() -> None:
    req = parse_request(body(logprobs=True, top_logprobs=5))
    assert req.logprobs is True and req.top_logprobs == 5
    assert "logprobs" not in req.extra and "top_logprobs" not in req.extra
    assert parse_request(body(logprobs=False)).logprobs is False


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": True}, "top_logprobs"),
        ({"logprobs": 1}, "logprobs"),
    ],
)
def test_malformed_logprobs_fields(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse_request(body(**fields))
    assert info.value.status == 400 and info.value.param == param


def test_provider_request_asks_only_when_the_client_did() -> None:
    asked = build_request(parse_request(body(logprobs=True, top_logprobs=2)), "up", stream=False)
    assert asked["logprobs"] is True and asked["top_logprobs"] == 2
    plain = build_request(parse_request(body()), "up", stream=True)
    assert "logprobs" not in plain and "top_logprobs" not in plain


def _completion(logprobs: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "model": "up",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi"},
                "finish_reason": "stop",
                "logprobs": logprobs,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }


def test_reply_logprobs_reach_the_client_answer() -> None:
    resp = parse_response(_completion(LOGPROBS))
    assert resp.logprobs == LOGPROBS
    assert orjson.loads(encode_response(resp))["choices"][0]["logprobs"] == LOGPROBS
    assert orjson.loads(encode_response(parse_response(_completion(None))))["choices"][0]["logprobs"] is None


def test_an_off_shape_logprobs_object_is_a_malformed_reply() -> None:
    with pytest.raises(MalformedReply):
        parse_response(_completion([1, 2]))


def test_stream_chunk_logprobs_survive_decoding_and_encoding() -> None:
    decoder = ChunkDecoder("up")
    chunk = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": LOGPROBS}]}
    events = decoder.feed(chunk) + decoder.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events += decoder.finish_events()
    text_events = [e for e in events if e.type == "content_block_delta"]
    assert [e.logprobs for e in text_events] == [LOGPROBS]
    encoder = ChunkEncoder(include_usage=False, model="m")
    out = b"".join(encoder.encode(e) for e in events).decode()
    chunks = [orjson.loads(line[6:]) for line in out.split("\n\n") if line.startswith("data: {")]
    content_chunks = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert [c["choices"][0]["logprobs"] for c in content_chunks] == [LOGPROBS]
    assert all(c["choices"][0]["logprobs"] is None for c in chunks if c not in content_chunks)


def test_an_anthropic_event_carries_no_logprobs() -> None:
    event = StreamEvent(
        "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}
    )
    chunk = ChunkEncoder(include_usage=False, model="m").encode(event)
    assert orjson.loads(chunk[6:])["choices"][0]["logprobs"] is None


def _catalog_with_logprobs() -> Catalog:
    data = catalog().model_dump(mode="json")
    data["models"]["mid-notools"]["capabilities"]["logprobs"] = True
    return Catalog.model_validate(data)


def test_route_keeps_only_models_that_return_logprobs() -> None:
    router = Router(_catalog_with_logprobs(), DeploymentHealth(), tier_model=None)
    plan = router.plan(request(logprobs=True), principal())
    assert [c.name for c in plan.candidates] == ["mid-notools"]
    verdicts = {c.name: c.verdicts["logprobs"] for c in plan.rejected}
    assert verdicts["big"] == verdicts["mid"] == "does not return logprobs"  # same tier, no logprobs
    assert "mid-notools" not in verdicts
    assert len(router.plan(request(), principal()).candidates) > 1  # not asked: no constraint


def test_a_concrete_model_without_logprobs_is_a_400_naming_the_parameter() -> None:
    router = Router(_catalog_with_logprobs(), DeploymentHealth(), tier_model=None)
    with pytest.raises(RouteError) as info:
        router.plan(request(model="mid", logprobs=True), principal())
    assert info.value.status == 400 and info.value.param == "logprobs"
    assert "mid-notools" in info.value.message  # says which models would serve it


def test_a_route_with_no_model_returning_logprobs_is_a_400_naming_the_parameter() -> None:
    router = Router(catalog(), DeploymentHealth(), tier_model=None)
    with pytest.raises(RouteError) as info:
        router.plan(request(logprobs=True), principal())
    assert info.value.status == 400 and info.value.param == "logprobs"
    assert "no model in this catalog" in info.value.message


def test_the_response_cache_never_answers_a_logprobs_request() -> None:
    policy = TeamPolicy(response_cache=True)
    asked = parse_request(body(logprobs=True, temperature=0))
    assert decide(asked, policy, "use").lookup is False
    assert decide(parse_request(body(temperature=0)), policy, None).lookup is True


def test_a_route_failing_on_tier_and_logprobs_still_names_logprobs() -> None:
    data = catalog().model_dump(mode="json")
    data["models"]["tiny"]["capabilities"]["logprobs"] = True
    router = Router(Catalog.model_validate(data), DeploymentHealth(), tier_model=None)
    with pytest.raises(RouteError) as info:  # floor: min_tier medium; tiny is small, mid and big lack logprobs
        router.plan(request(model="floor", logprobs=True), principal())
    assert info.value.status == 400 and info.value.param == "logprobs"
    assert "tiny: tier small is below the minimum medium" in info.value.message
    assert "mid: logprobs does not return logprobs" in info.value.message
