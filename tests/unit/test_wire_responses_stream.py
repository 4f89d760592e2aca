"""The Responses stream encoder: canonical events → ``response.*`` SSE events.

Every event is validated against the openai SDK's ``ResponseStreamEvent`` union, and whole streams are
folded by the SDK's own ``ResponseStreamState`` (what ``client.responses.stream`` uses), so a shape the
SDK would reject fails here.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from app.domain import ChatRequest, ChatResponse, StreamEvent, Usage
from app.errors import GatewayError
from app.wire.anthropic import response_to_events
from app.wire.responses import ResponsesCodec, ResponsesStreamEncoder, parse_request

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
REQ = parse_request({"model": "claude-haiku-5-5", "input": "hi", "stream": True})


def _sse(raw: bytes) -> list[dict[str, Any]]:
    """Parse SSE bytes strictly: each event has an ``event:`` line naming the ``type`` in its data."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block or block.startswith(":"):
            continue
        head, data = block.split("\n")
        payload = orjson.loads(data.removeprefix("data: "))
        assert head == f"event: {payload['type']}"
        events.append(payload)
    return events


def _run(events: list[StreamEvent], req: ChatRequest = REQ) -> list[dict[str, Any]]:
    encode = ResponsesCodec().stream_encoder(req, "claude-haiku-5-5")
    return _sse(b"".join(encode(e) for e in events))


def _validated(events: list[dict[str, Any]]) -> list[Any]:
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return [EVENTS.validate_python(e) for e in events]


def _fold(events: list[dict[str, Any]]) -> Response:
    """The SDK's own accumulation of a stream; returns the final response it builds."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    final = None
    for event in _validated(events):
        for out in state.handle_event(event):
            if out.type == "response.completed":
                final = out.response
    assert final is not None, "the SDK saw no response.completed"
    return final


def _answer(content: list[dict[str, Any]], stop: str = "end_turn") -> ChatResponse:
    return ChatResponse(
        id="msg_s1",
        model="claude-haiku-5-5",
        content=content,
        stop_reason=stop,
        usage=Usage(input_tokens=7, output_tokens=3, cache_read_tokens=2),
    )


def test_text_stream_has_the_full_event_sequence() -> None:
    events = _run(response_to_events(_answer([{"type": "text", "text": "Hello"}])))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    parsed = _validated(events)
    assert parsed[0].response.status == "in_progress" and parsed[0].response.output == []
    assert parsed[0].response.id == parsed[-1].response.id == "resp_s1"
    assert parsed[4].delta == "Hello" and parsed[5].text == "Hello"
    done = parsed[-1].response
    assert done.status == "completed" and done.output_text == "Hello"
    assert done.usage.input_tokens == 9 and done.usage.output_tokens == 3
    assert done.usage.input_tokens_details.cached_tokens == 2
    assert _fold(events).output_text == "Hello"


def test_tool_call_stream_carries_arguments_deltas() -> None:
    answer = _answer(
        [
            {"type": "text", "text": "Checking"},
            {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        stop="tool_use",
    )
    events = _run(response_to_events(answer))
    types = [e["type"] for e in events]
    assert types[types.index("response.output_item.done") + 1 :] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = next(e for e in events if e["type"] == "response.output_item.added" and e["output_index"] == 1)
    assert added["item"]["type"] == "function_call" and added["item"]["arguments"] == ""
    assert added["item"]["call_id"] == "toolu_9" and added["item"]["status"] == "in_progress"
    final = _fold(events)
    call = final.output[1]
    assert call.type == "function_call" and call.call_id == "toolu_9" and call.name == "get_weather"
    assert orjson.loads(call.arguments) == {"city": "Oslo"} and call.status == "completed"


def test_json_schema_stream_is_parsed_by_the_sdk_text_format() -> None:
    from pydantic import BaseModel

    class Num(BaseModel):
        n: int

    req = parse_request(
        {
            "model": "m",
            "input": "n?",
            "text": {"format": {"type": "json_schema", "name": "Num", "schema": Num.model_json_schema()}},
        }
    )
    events = _run(response_to_events(_answer([{"type": "text", "text": '{"n": 41}'}])), req)
    state: ResponseStreamState[Num] = ResponseStreamState(input_tools=omit, text_format=Num)
    final = None
    for event in _validated(events):
        for out in state.handle_event(event):
            if out.type == "response.completed":
                final = out.response
    assert final is not None and final.output_parsed == Num(n=41)
    assert final.text is not None and final.text.format.type == "json_schema"  # type: ignore[union-attr]


def test_cut_stream_ends_with_response_incomplete() -> None:
    events = _run(response_to_events(_answer([{"type": "text", "text": "Once"}], stop="max_tokens")))
    last = _validated(events)[-1]
    assert last.type == "response.incomplete" and last.response.status == "incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"
    item_done = next(e for e in events if e["type"] == "response.output_item.done")
    assert item_done["item"]["status"] == "incomplete"


def test_thinking_blocks_and_pings_do_not_become_items() -> None:
    answer = _answer([{"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "text", "text": "Hi"}])
    events = response_to_events(answer)
    events.insert(1, StreamEvent("ping", {"type": "ping"}))
    encode = ResponsesStreamEncoder(REQ, "m")
    raw = b"".join(encode(e) for e in events)
    assert b": ping\n\n" in raw
    final = _fold(_sse(raw))
    assert [o.type for o in final.output] == ["message"] and final.output_text == "Hi"


def test_error_mid_stream_sends_response_failed_then_error() -> None:
    encode = ResponsesStreamEncoder(REQ, "m")
    events = response_to_events(_answer([{"type": "text", "text": "partial"}]))[:3]  # start, block start, delta
    raw = b"".join(encode(e) for e in events) + ResponsesCodec().stream_error(
        GatewayError("overloaded", "busy"), encode
    )
    parsed = _validated(_sse(raw))
    failed, error = parsed[-2], parsed[-1]
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error.code == "server_error" and failed.response.error.message == "busy"
    (item,) = failed.response.output
    assert item.status == "incomplete" and item.content[0].text == "partial"  # what the client was sent
    assert error.type == "error" and error.message == "busy" and error.code == "overloaded"
    assert encode(StreamEvent("message_stop", {"type": "message_stop"})) == b""  # nothing after the failure


def test_upstream_error_event_is_encoded_in_sequence() -> None:
    encode = ResponsesStreamEncoder(REQ, "m")
    first = encode(response_to_events(_answer([]))[0])
    raw = first + encode(StreamEvent("error", {"type": "error", "error": {"type": "rate_limit_error"}}))
    parsed = _validated(_sse(raw))
    assert [p.type for p in parsed] == ["response.created", "response.in_progress", "response.failed", "error"]
    assert parsed[2].response.error.code == "rate_limit_exceeded"


# ---- property: any canonical answer survives the stream ---------------------------------------------------

_TEXT = st.text(min_size=1, max_size=40)
_ARGS = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=10)),
    max_size=4,
)
_BLOCK = st.one_of(
    _TEXT.map(lambda t: {"type": "text", "text": t}),
    st.tuples(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), _ARGS).map(
        lambda na: {"type": "tool_use", "name": na[0], "input": na[1]}
    ),
)


def _split(events: list[StreamEvent], cuts: list[int]) -> list[StreamEvent]:
    """Split each delta into several at the drawn cut points (real upstreams send many small deltas)."""
    out: list[StreamEvent] = []
    for event in events:
        delta = event.data.get("delta") or {}
        key = {"text_delta": "text", "input_json_delta": "partial_json"}.get(delta.get("type", ""))
        if event.type != "content_block_delta" or key is None:
            out.append(event)
            continue
        whole: str = delta[key]
        points = sorted({c % (len(whole) + 1) for c in cuts} | {0, len(whole)})
        for a, b in pairwise(points):
            out.append(StreamEvent(event.type, {**event.data, "delta": {"type": delta["type"], key: whole[a:b]}}))
    return out


@settings(max_examples=150, deadline=None)
@given(
    blocks=st.lists(_BLOCK, max_size=6),
    stop=st.sampled_from(["end_turn", "tool_use", "max_tokens", "stop_sequence", "refusal"]),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=5),
    output_tokens=st.integers(min_value=0, max_value=10_000),
)
def test_any_answer_streams_back_to_the_same_text_and_tool_calls(
    blocks: list[dict[str, Any]], stop: str, cuts: list[int], output_tokens: int
) -> None:
    content = [{**b, "id": f"toolu_{i}"} if b["type"] == "tool_use" else b for i, b in enumerate(blocks)]
    answer = ChatResponse(
        id="msg_p",
        model="m",
        content=content,
        stop_reason=stop,
        usage=Usage(input_tokens=3, output_tokens=output_tokens),
    )
    events = _run(_split(response_to_events(answer), cuts))
    final_event = _validated(events)[-1]
    assert final_event.type in ("response.completed", "response.incomplete")
    final = final_event.response
    if final_event.type == "response.completed":
        final = _fold(events)  # the SDK's accumulation agrees with the encoder's own final response
    texts = "".join(b["text"] for b in content if b["type"] == "text")
    calls = [(b["id"], b["name"], b["input"]) for b in content if b["type"] == "tool_use"]
    assert final.output_text == texts
    got = [(o.call_id, o.name, orjson.loads(o.arguments)) for o in final.output if o.type == "function_call"]
    assert got == calls
    assert final.usage is not None and final.usage.output_tokens == output_tokens
    # The streamed deltas alone rebuild the same text: nothing is only in the final event.
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == texts
