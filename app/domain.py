"""The canonical request, response and stream-event types.

Every client format (Anthropic Messages, OpenAI Chat Completions) is parsed into these types once,
and every provider adapter translates from them once: never pairwise.

Content blocks are kept in the Anthropic block shape (plain dicts: ``{"type": "text", "text": ...}``,
``tool_use``, ``tool_result``, ``image``, ``document``, ``thinking`` ...), because it is the richer of
the two formats: everything OpenAI can express maps onto it, and blocks Tollway does not know
(new block types) survive untouched. Dicts rather than classes keep the hot path allocation-light.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

ClientFormat = Literal["anthropic", "openai", "responses"]
Role = Literal["user", "assistant", "system"]

# A content block, Anthropic-shaped: {"type": "text", "text": "...", "cache_control": {...}} etc.
Block = dict[str, Any]


@dataclass(slots=True)
class Message:
    role: Role
    content: list[Block]


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None
    input_schema: dict[str, Any]
    # Anything else the client sent on the tool (cache_control, strict, type for server tools ...).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ResponseFormat:
    """Structured output request: ``json_object`` (any JSON) or ``json_schema`` (with a schema)."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


@dataclass(slots=True)
class ChatRequest:
    """One chat request in canonical form."""

    model: str
    messages: list[Message]
    max_tokens: int | None
    client_format: ClientFormat
    system: list[Block] = field(default_factory=list)
    stream: bool = False
    stop_sequences: list[str] = field(default_factory=list)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[Tool] = field(default_factory=list)
    # Canonical tool choice: {"type": "auto"|"any"|"none"|"tool", "name"?: str,
    # "disable_parallel_tool_use"?: bool}
    tool_choice: dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    metadata: dict[str, Any] | None = None
    seed: int | None = None
    # OpenAI clients only: whether they asked for the final usage chunk in a stream.
    include_usage: bool = False
    # Top-level Anthropic automatic-caching marker, when the client sent one.
    cache_control: dict[str, Any] | None = None
    # Fields Tollway does not interpret, passed through to a provider of the same wire format.
    extra: dict[str, Any] = field(default_factory=dict)
    # Anthropic protocol headers the client sent (forwarded to Anthropic upstreams).
    anthropic_version: str | None = None
    anthropic_beta: str | None = None
    # OpenAI Chat Completions clients only: token log probabilities, served by models whose catalog
    # entry has capabilities.logprobs (the router refuses the others before any upstream call).
    logprobs: bool = False
    top_logprobs: int | None = None


StopReason = str  # Anthropic vocabulary: end_turn, max_tokens, stop_sequence, tool_use, refusal, ...


@dataclass(slots=True)
class Usage:
    """Token usage in Anthropic's accounting: ``input_tokens`` excludes cache reads and writes."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def prompt_tokens(self) -> int:
        """All input the model read, cached or not (OpenAI's ``prompt_tokens``)."""
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str
    content: list[Block]
    stop_reason: StopReason | None
    usage: Usage
    stop_sequence: str | None = None
    # Provider fields Tollway does not interpret (stop_details, container ...), same-format only.
    extra: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    # The upstream choice's ``logprobs`` object ({"content": [...], "refusal": ...}), when asked for.
    logprobs: dict[str, Any] | None = None


# ---- Streaming -------------------------------------------------------------------------------------
# Canonical stream events follow Anthropic's event grammar, which is a superset of OpenAI's chunk
# stream: message_start, content_block_start/delta/stop, message_delta, message_stop, ping, error.


@dataclass(slots=True)
class StreamEvent:
    """One canonical stream event.

    ``type`` is the Anthropic event name and ``data`` its JSON payload (with ``type`` inside, as on
    the wire). ``raw`` holds the exact SSE bytes when the upstream spoke Anthropic's format, so an
    Anthropic client gets them forwarded without re-serialisation.
    """

    type: str
    data: dict[str, Any]
    raw: bytes | None = None
    # The upstream chunk's ``logprobs`` object for the text this event carries (OpenAI upstreams only).
    logprobs: dict[str, Any] | None = None


# Canonical events → one client format's SSE bytes (b"" to send nothing for an event).
EventEncoder = Callable[[StreamEvent], bytes]
