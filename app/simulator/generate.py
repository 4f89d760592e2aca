"""Deterministic replies: word text, tool calls and JSON instances generated from schemas.

Both wires reduce a request to a ``Job`` (what to answer and within which limits); ``generate``
turns it into a ``Reply``: the pieces to stream (one per output token) and the stop reason, in
Anthropic's vocabulary (each wire maps it to its own).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, Literal

import orjson

from app.simulator.counting import tool_call_output_tokens

VOCABULARY = (
    "the of and to in is that for it as with was on be by this are or from at which an but not have "
    "has had were all can their one there more when will would about if out up so what time into some "
    "could them other than then now only its over also after two how our work first well way even new "
    "want because any these give day most river stone cloud bridge garden signal harbor lantern meadow "
    "engine circuit ledger token budget router cache model stream gateway simple quiet bright steady "
    "careful rapid gentle early late north south east west green amber silver copper paper glass "
    "window mountain valley forest ocean island desert winter summer autumn spring morning evening "
    "question answer reason result number letter system service request reply value record field "
    "table column vector matrix orbit planet comet galaxy photon signal"
).split()

_SEQUENCE_LENGTH = 8192
# A fixed pseudo-random word sequence: a reply is a slice of it, starting at the request's hash.
_SEQUENCE: tuple[str, ...] = tuple(random.Random(20261129).choices(VOCABULARY, k=_SEQUENCE_LENGTH))
_PIECE = re.compile(r"\s*\S+|\s+$")
JSON_FRAGMENT_CHARS = 4  # streamed JSON text: one fragment per token
TOOL_JSON_FRAGMENT_CHARS = 12
INVALID_JSON_PREFIX = 'Sure! Here is the JSON you asked for: {"result": "'
MAX_SCHEMA_DEPTH = 12

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


def request_seed(model: str, last_user_content: Any) -> int:
    """A stable 64-bit seed from the model and the last user message."""
    data = model.encode() + b"\x00" + orjson.dumps(last_user_content)
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def words(seed: int, count: int) -> list[str]:
    start = seed % _SEQUENCE_LENGTH
    out: list[str] = []
    while len(out) < count:
        out.extend(_SEQUENCE[start : start + count - len(out)])
        start = 0
    return out


def word_pieces(seed: int, count: int) -> list[str]:
    """``count`` words as stream pieces: the first bare, the rest with a leading space."""
    ws = words(seed, count)
    return [ws[0], *(" " + w for w in ws[1:])] if ws else []


def text_pieces(text: str) -> list[str]:
    """Split text into word pieces whose concatenation is exactly ``text``."""
    return _PIECE.findall(text)


def fragments(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@dataclass(slots=True)
class ToolSpec:
    name: str
    input_schema: dict[str, Any]


@dataclass(slots=True)
class JsonFormat:
    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None


@dataclass(slots=True)
class Job:
    """What a request asks the simulated model for, independent of the wire."""

    model: str
    seed: int
    output_tokens: int
    max_tokens: int | None = None
    stop_sequences: list[str] = field(default_factory=list)
    forced_reply: str | None = None
    refuse: bool = False
    tool: ToolSpec | None = None
    json_format: JsonFormat | None = None
    invalid_json: bool = False


@dataclass(slots=True)
class Reply:
    kind: Literal["text", "tool_use"]
    pieces: list[str]  # text deltas, or partial JSON fragments of a tool call's input
    output_tokens: int
    stop_reason: StopReason
    stop_sequence: str | None = None
    tool_name: str | None = None
    tool_input: Any = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def generate(job: Job) -> Reply:
    if job.refuse:
        return Reply(kind="text", pieces=[], output_tokens=0, stop_reason="refusal")
    if job.tool is not None:
        tool_input = schema_instance(job.tool.input_schema, job.seed)
        arguments = orjson.dumps(tool_input).decode()
        return Reply(
            kind="tool_use",
            pieces=fragments(arguments, TOOL_JSON_FRAGMENT_CHARS),
            output_tokens=tool_call_output_tokens(arguments),
            stop_reason="tool_use",
            tool_name=job.tool.name,
            tool_input=tool_input,
        )
    return _limit(job, _text_pieces(job))


def _text_pieces(job: Job) -> list[str]:
    if job.forced_reply is not None:
        return text_pieces(job.forced_reply)
    if job.json_format is not None:
        if job.invalid_json:
            return text_pieces(INVALID_JSON_PREFIX + " ".join(words(job.seed, job.output_tokens)))
        if job.json_format.type == "json_schema" and job.json_format.schema is not None:
            value = schema_instance(job.json_format.schema, job.seed)
        else:
            value = {"result": " ".join(words(job.seed, max(1, job.output_tokens)))}
        return fragments(orjson.dumps(value).decode(), JSON_FRAGMENT_CHARS)
    return word_pieces(job.seed, job.output_tokens)


def _limit(job: Job, pieces: list[str]) -> Reply:
    """Apply stop sequences (cut before the earliest match), then ``max_tokens``."""
    stop_reason: StopReason = "end_turn"
    matched: str | None = None
    if job.stop_sequences:
        text = "".join(pieces)
        cut = len(text)
        for sequence in job.stop_sequences:
            position = text.find(sequence) if sequence else -1
            if 0 <= position < cut:
                cut, matched = position, sequence
        if matched is not None:
            pieces = _cut_pieces(pieces, cut)
            stop_reason = "stop_sequence"
    if job.max_tokens is not None and len(pieces) > job.max_tokens:
        pieces = pieces[: job.max_tokens]
        stop_reason, matched = "max_tokens", None
    return Reply(
        kind="text",
        pieces=pieces,
        output_tokens=len(pieces),
        stop_reason=stop_reason,
        stop_sequence=matched,
    )


def _cut_pieces(pieces: list[str], cut: int) -> list[str]:
    kept: list[str] = []
    position = 0
    for piece in pieces:
        if position + len(piece) <= cut:
            kept.append(piece)
            position += len(piece)
            continue
        if cut > position:
            kept.append(piece[: cut - position])
        break
    return kept


# ---- JSON Schema instances ---------------------------------------------------------------------------

_FORMAT_EXAMPLES = {
    "date": "2026-01-15",
    "date-time": "2026-01-15T09:30:00Z",
    "time": "09:30:00",
    "email": "sim@example.com",
    "uri": "https://example.com/sim",
    "url": "https://example.com/sim",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "hostname": "sim.example.com",
}


def schema_instance(schema: Any, seed: int) -> Any:
    """A value valid against ``schema``: required properties only, type-appropriate values.

    Covers the JSON Schema subset tools and structured outputs use: type (or a list of types), enum,
    const, properties/required, items/prefixItems, min/max bounds, string formats, anyOf/oneOf
    (first branch), allOf (merged) and local ``$ref``. ``pattern`` is not honoured.
    """
    return _InstanceBuilder(schema if isinstance(schema, dict) else {}, seed).build(schema, 0)


class _InstanceBuilder:
    def __init__(self, root: dict[str, Any], seed: int) -> None:
        self._root = root
        self._words: Iterator[str] = iter(words(seed, 4096))

    def _word(self) -> str:
        return next(self._words, "value")

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#"):
            return schema
        target: Any = self._root
        for part in ref.lstrip("#").strip("/").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        return target if isinstance(target, dict) else {}

    def build(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
            return None
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
                return self.build((non_null or options)[0], depth + 1)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            return self.build(_merge([self._resolve(s) for s in all_of if isinstance(s, dict)]), depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            if "properties" in schema or "required" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                kind = "string"
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return True
        return None

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        out: dict[str, Any] = {}
        for name in required if isinstance(required, list) else ():
            if isinstance(name, str):
                out[name] = self.build(properties.get(name, {"type": "string"}), depth + 1)
        return out

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            return [self.build(item, depth + 1) for item in prefix]
        count = schema.get("minItems")
        count = count if isinstance(count, int) and count > 0 else 1
        maximum = schema.get("maxItems")
        if isinstance(maximum, int):
            count = min(count, maximum)
        items = schema.get("items", {})
        return [self.build(items if isinstance(items, dict) else {}, depth + 1) for _ in range(count)]

    def _string(self, schema: dict[str, Any]) -> str:
        value = _FORMAT_EXAMPLES.get(str(schema.get("format")), None) or self._word()
        min_length = schema.get("minLength")
        if isinstance(min_length, int) and len(value) < min_length:
            value = value + "x" * (min_length - len(value))
        max_length = schema.get("maxLength")
        if isinstance(max_length, int) and len(value) > max_length:
            value = value[:max_length]
        return value


def _merge(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for schema in schemas:
        merged.update({k: v for k, v in schema.items() if k not in ("properties", "required")})
        properties.update(schema.get("properties") or {})
        required.extend(r for r in schema.get("required") or () if r not in required)
    if properties:
        merged["properties"] = properties
    if required:
        merged["required"] = required
    return merged


def _bound(schema: dict[str, Any], key: str) -> float | None:
    value = schema.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    value = 1.0
    step = 1.0 if integer else 0.5
    if (low := _bound(schema, "minimum")) is not None and value < low:
        value = low
    if (low := _bound(schema, "exclusiveMinimum")) is not None and value <= low:
        value = low + step
    if (high := _bound(schema, "maximum")) is not None and value > high:
        value = high
    if (high := _bound(schema, "exclusiveMaximum")) is not None and value >= high:
        value = high - step
    return math.ceil(value) if integer else value
