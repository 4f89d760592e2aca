"""Answer verification for the escalation cascade, and the JSON-schema subset behind it."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain import ChatRequest, ChatResponse, Message, ResponseFormat, Usage
from app.routing.schema_check import schema_mismatch as validate
from app.routing.verify import verify

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "invoice_number": {"type": "string"},
        "total": {"type": "number"},
        "lines": {"type": "integer"},
        "status": {"type": "string", "enum": ["paid", "open"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "paid": {"type": "boolean"},
    },
    "required": ["invoice_number", "total"],
    "additionalProperties": False,
}


def req(fmt: ResponseFormat | None = None) -> ChatRequest:
    return ChatRequest(
        model="auto",
        messages=[Message(role="user", content=[{"type": "text", "text": "Extract the invoice."}])],
        max_tokens=200,
        client_format="anthropic",
        response_format=fmt,
    )


def resp(text: str, stop_reason: str = "end_turn", **extra: Any) -> ChatResponse:
    return ChatResponse(
        id="msg_1",
        model="m",
        content=[{"type": "text", "text": text}],
        stop_reason=stop_reason,
        usage=Usage(),
        extra=extra,
    )


SCHEMA_FORMAT = ResponseFormat(type="json_schema", schema=SCHEMA)


def test_valid_structured_answer_passes() -> None:
    answer = '{"invoice_number": "BL-1", "total": 662.72, "lines": 3, "status": "paid", "tags": ["a"]}'
    assert verify(req(SCHEMA_FORMAT), resp(answer)) is None


def test_invalid_json() -> None:
    assert (
        verify(req(SCHEMA_FORMAT), resp("Sure! Here is the JSON: {invoice_number: BL-1}")) == "invalid_json"
    )
    assert verify(req(ResponseFormat(type="json_object")), resp("not json")) == "invalid_json"


def test_json_in_a_code_fence_is_invalid() -> None:
    assert (
        verify(req(SCHEMA_FORMAT), resp('```json\n{"invoice_number": "x", "total": 1}\n```'))
        == "invalid_json"
    )


@pytest.mark.parametrize(
    "answer",
    [
        '{"total": 5}',  # missing required
        '{"invoice_number": 7, "total": 5}',  # wrong type
        '{"invoice_number": "x", "total": "5"}',  # number as string
        '{"invoice_number": "x", "total": 5, "status": "void"}',  # not in enum
        '{"invoice_number": "x", "total": 5, "extra": 1}',  # additionalProperties false
        '{"invoice_number": "x", "total": 5, "tags": ["a", 2]}',  # items
        '{"invoice_number": "x", "total": 5, "lines": 2.5}',  # integer
        '{"invoice_number": "x", "total": true}',  # booleans are not numbers
        '["invoice_number", "total"]',  # not an object
    ],
)
def test_schema_mismatch(answer: str) -> None:
    assert verify(req(SCHEMA_FORMAT), resp(answer)) == "schema_mismatch"


def test_json_object_requires_an_object() -> None:
    assert verify(req(ResponseFormat(type="json_object")), resp("[1, 2]")) == "schema_mismatch"
    assert verify(req(ResponseFormat(type="json_object")), resp('{"a": 1}')) is None


def test_structured_output_cut_by_max_tokens_is_truncated() -> None:
    cut = resp('{"invoice_number": "BL-1", "tot', stop_reason="max_tokens")
    assert verify(req(SCHEMA_FORMAT), cut) == "truncated_structured_output"


def test_complete_json_that_ends_exactly_at_max_tokens_passes() -> None:
    done = resp('{"invoice_number": "BL-1", "total": 3}', stop_reason="max_tokens")
    assert verify(req(SCHEMA_FORMAT), done) is None


def test_max_tokens_without_structured_output_is_not_a_failure() -> None:
    assert verify(req(), resp("A long answer that got cut", stop_reason="max_tokens")) is None


def test_refusal_stop_reason() -> None:
    assert verify(req(), resp("", stop_reason="refusal")) == "refusal"
    assert verify(req(SCHEMA_FORMAT), resp("", stop_reason="refusal")) == "refusal"


def test_refusal_stop_details() -> None:
    answer = resp("...", stop_details={"type": "refusal", "category": None})
    assert verify(req(), answer) == "refusal"


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I cannot assist with this request.",
        "Sorry, I won't provide that information.",
    ],
)
def test_stock_refusal_text_is_a_refusal(text: str) -> None:
    assert verify(req(), resp(text)) == "refusal"


@pytest.mark.parametrize(
    "text",
    [
        "I can't find the termination date in the document you shared.",
        "Here is the summary. I cannot stress enough how good the results were.",
        "Sure! " + "x" * 500,
    ],
)
def test_ordinary_answers_are_not_refusals(text: str) -> None:
    assert verify(req(), resp(text)) is None


def test_long_answer_starting_like_a_refusal_is_not_one() -> None:
    text = "I'm sorry, but I can't help with the first part; " + "here is the second part in detail. " * 20
    assert verify(req(), resp(text)) is None


# ---- the schema subset -----------------------------------------------------------------------------


def test_integer_accepts_integral_floats() -> None:
    assert validate(3.0, {"type": "integer"}) is None
    assert validate(3.5, {"type": "integer"}) is not None


def test_type_lists_enum_const_and_nulls() -> None:
    assert validate(None, {"type": ["string", "null"]}) is None
    assert validate(1, {"type": ["string", "null"]}) is not None
    assert validate(True, {"enum": [1, 2]}) is not None  # true is not 1
    assert validate(1.0, {"enum": [1, 2]}) is None
    assert validate("x", {"const": "x"}) is None


def test_refs_and_any_of() -> None:
    schema = {
        "$defs": {
            "Line": {"type": "object", "properties": {"qty": {"type": "integer"}}, "required": ["qty"]}
        },
        "type": "object",
        "properties": {
            "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
    }
    assert validate({"lines": [{"qty": 1}], "note": None}, schema) is None
    assert validate({"lines": [{"qty": "1"}]}, schema) == "$.lines[0].qty: '1' is not of type 'integer'"
    assert validate({"note": 3}, schema) is not None


def test_additional_properties_schema_and_array_bounds() -> None:
    schema = {"type": "object", "additionalProperties": {"type": "number"}}
    assert validate({"a": 1, "b": 2.5}, schema) is None
    assert validate({"a": "1"}, schema) is not None
    assert validate([1], {"type": "array", "minItems": 2}) is not None
    assert validate([1, 2, 3], {"type": "array", "maxItems": 2}) is not None


def test_the_whole_standard_is_checked_pattern_bounds_and_formats() -> None:
    assert validate("abc", {"type": "string", "pattern": "^z"}) is not None
    assert validate("zebra", {"type": "string", "pattern": "^z"}) is None
    assert validate(-1, {"type": "number", "minimum": 0}) is not None
    assert validate("not an email", {"type": "string", "format": "email"}) is not None
    assert validate("a@example.com", {"type": "string", "format": "email"}) is None
    assert validate("2026-13-45", {"type": "string", "format": "date"}) is not None


def test_an_invalid_schema_never_fails_an_answer() -> None:
    assert validate({"a": 1}, {"type": "no-such-type"}) is None
    assert validate({"a": 1}, {"minimum": "zero"}) is None
