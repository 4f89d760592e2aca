"""Property tests (hypothesis) for the SSE decoder and for request translation.

* SSE: any split of a valid event stream into network reads gives the same events, with any line
  ending; arbitrary bytes give events or ``SSEError``, never another exception.
* Translation: a valid canonical request sent to an Anthropic upstream (``build_request``) reads back
  through Anthropic's client parser with the same meaning, and sent to an OpenAI upstream reads back
  through the OpenAI client parser with the same meaning (messages, roles, text, tool calls and
  results, tools, system, max_tokens, stop sequences), as far as OpenAI's format can say it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.domain import Block, ChatRequest, Message, Tool
from app.wire import anthropic as anthropic_wire
from app.wire.openai import client as openai_client
from app.wire.openai import provider as openai_provider
from app.wire.sse import SSEError, SSEParser

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- SSE ------------------------------------------------------------------------------------------------

_line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)
_event = st.tuples(
    st.one_of(st.none(), _line_text.filter(lambda s: not s.startswith(" "))),  # the event name
    st.lists(_line_text, min_size=1, max_size=3),  # data lines
    st.booleans(),  # a comment line before it
)


def _encode(events: list[tuple[str | None, list[str], bool]], newline: bytes) -> bytes:
    out = []
    for name, data_lines, comment in events:
        lines = [b": keep-alive"] if comment else []
        if name is not None:
            lines.append(b"event: " + name.encode())
        lines += [b"data: " + line.encode() for line in data_lines]
        out.append(newline.join(lines) + newline + newline)
    return b"".join(out)


def _parse(stream: bytes, cuts: list[int], max_event_bytes: int = 1 << 20) -> list[tuple[str | None, bytes]]:
    parser = SSEParser(max_event_bytes)
    found = []
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        found += parser.feed(stream[start:cut])
        start = cut
    found += parser.close()
    return [(e.event, e.data) for e in found]


@PROPERTY
@given(
    events=st.lists(_event, max_size=8),
    newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    data=st.data(),
)
def test_any_split_of_a_valid_stream_gives_the_same_events(
    events: list[tuple[str | None, list[str], bool]], newline: bytes, data: st.DataObject
) -> None:
    stream = _encode(events, newline)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    expected = [(name, "\n".join(lines).encode()) for name, lines, _ in events]
    assert _parse(stream, []) == expected
    assert _parse(stream, cuts) == expected


@PROPERTY
@given(stream=st.binary(max_size=400), data=st.data())
def test_garbage_gives_events_or_sse_error_and_nothing_else(stream: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    limit = data.draw(st.sampled_from([16, 64, 1 << 20]))
    try:
        whole = _parse(stream, [], limit)
    except SSEError:
        return
    assert _parse(stream, cuts, limit) == whole  # whatever parses whole parses the same when split


# ---- translation ------------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
_name = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,15}", fullmatch=True)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_name, inner, max_size=3),
    max_leaves=6,
)
_tool_input = st.dictionaries(_name, _json_value, max_size=4)
_tool_use = st.builds(
    lambda id_, name, args: {"type": "tool_use", "id": id_, "name": name, "input": args},
    _name.map(lambda s: f"toolu_{s}"),
    _name,
    _tool_input,
)
_tool_result = st.builds(
    lambda id_, content: {"type": "tool_result", "tool_use_id": id_, "content": content},
    _name.map(lambda s: f"toolu_{s}"),
    _text,
)
_text_block = _text.map(lambda t: {"type": "text", "text": t})
# Anthropic's order: tool results first in a user turn, then its text.
_user = st.tuples(st.lists(_tool_result, max_size=2), st.lists(_text_block, max_size=3)).filter(
    lambda parts: bool(parts[0] or parts[1])
).map(lambda parts: Message(role="user", content=parts[0] + parts[1]))
_assistant = st.tuples(st.lists(_text_block, max_size=2), st.lists(_tool_use, max_size=2)).filter(
    lambda parts: bool(parts[0] or parts[1])
).map(lambda parts: Message(role="assistant", content=parts[0] + parts[1]))
_tool = st.builds(
    lambda name, description, props: Tool(
        name=name,
        description=description,
        input_schema={"type": "object", "properties": {p: {"type": "string"} for p in props}},
    ),
    _name,
    st.one_of(st.none(), _text),
    st.lists(_name, max_size=3),
)


@st.composite
def canonical_requests(draw: st.DrawFn) -> ChatRequest:
    turns = draw(st.integers(1, 6))
    messages = [draw(_user) if i % 2 == 0 else draw(_assistant) for i in range(turns)]
    return ChatRequest(
        model="m",
        messages=messages,
        max_tokens=draw(st.integers(1, 200_000)),
        client_format=draw(st.sampled_from(["anthropic", "openai"])),
        system=draw(st.lists(_text_block, max_size=2)),
        stop_sequences=draw(st.lists(_text, max_size=4)),
        tools=draw(st.lists(_tool, max_size=3, unique_by=lambda t: t.name)),
    )


def _texts(blocks: list[Block]) -> list[str]:
    return [b["text"] for b in blocks if b["type"] == "text"]


def _of_type(blocks: list[Block], kind: str) -> list[Block]:
    return [b for b in blocks if b["type"] == kind]


def _tools(tools: list[Tool]) -> list[tuple[str, str | None, dict[str, Any]]]:
    return [(t.name, t.description or None, t.input_schema) for t in tools]


@PROPERTY
@given(req=canonical_requests())
def test_an_anthropic_upstream_request_reads_back_with_the_same_meaning(req: ChatRequest) -> None:
    body = anthropic_wire.build_request(req, "m", stream=False)
    back = anthropic_wire.parse_request(body, anthropic_version=None, anthropic_beta=None)
    assert [(m.role, m.content) for m in back.messages] == [(m.role, m.content) for m in req.messages]
    assert back.system == req.system
    assert back.max_tokens == req.max_tokens
    assert back.stop_sequences == req.stop_sequences
    assert _tools(back.tools) == _tools(req.tools)


@PROPERTY
@given(req=canonical_requests())
def test_an_openai_upstream_request_reads_back_with_the_same_meaning(req: ChatRequest) -> None:
    body = openai_provider.build_request(req, "m", stream=False)
    back = openai_client.parse_request(body)
    assert len(back.messages) == len(req.messages)
    for sent, got in zip(req.messages, back.messages, strict=True):
        assert got.role == sent.role
        if sent.role == "assistant":
            # OpenAI carries one text per assistant turn: the texts, concatenated
            assert "".join(_texts(got.content)) == "".join(_texts(sent.content))
        else:
            assert _texts(got.content) == _texts(sent.content)
        assert _of_type(got.content, "tool_use") == _of_type(sent.content, "tool_use")
        assert _of_type(got.content, "tool_result") == _of_type(sent.content, "tool_result")
    # OpenAI has one system prompt: the blocks' texts, joined by a blank line
    assert "\n\n".join(_texts(back.system)) == "\n\n".join(_texts(req.system))
    assert back.max_tokens == req.max_tokens
    assert back.stop_sequences == req.stop_sequences
    assert _tools(back.tools) == _tools(req.tools)
