"""The task classifier on representative requests, its structural features, and its bounds."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.domain import ChatRequest, Message, ResponseFormat, Tool
from app.routing.classifier import classify


def req(
    text: str, *, system: str | None = None, history: list[tuple[str, str]] | None = None, **fields: Any
) -> ChatRequest:
    messages = [Message(role=role, content=[{"type": "text", "text": t}]) for role, t in history or []]  # type: ignore[arg-type]
    messages.append(Message(role="user", content=[{"type": "text", "text": text}]))
    return ChatRequest(
        model="auto",
        messages=messages,
        max_tokens=fields.pop("max_tokens", 1024),
        client_format="openai",
        system=[{"type": "text", "text": system}] if system else [],
        **fields,
    )


@pytest.mark.parametrize(
    ("expected", "request_"),
    [
        (
            "classification",
            req(
                "Ticket: 'App logs me out every hour.' Which category: bug, billing, "
                "account or other? Respond with only the category.",
                max_tokens=8,
            ),
        ),
        (
            "classification",
            req("Is this review positive or negative? 'Battery died in a day.'", max_tokens=5),
        ),
        (
            "extraction",
            req(
                "Extract the sender, the amount and the due date from this payment reminder: "
                "'Hi Sam, a friendly reminder that invoice 4471 for $1,250 is due on 3 May.'",
                response_format=ResponseFormat(type="json_object"),
            ),
        ),
        (
            "summarization",
            req(
                "Please summarize the following meeting transcript in five bullets.\n\n"
                + "Alex: we should ship Friday. Jo: QA is not done. " * 30
            ),
        ),
        (
            "rag",
            req(
                "Answer the question using only the context below. If the answer is not in the "
                "context, say you don't know.\n\nContext: Our office is closed on public holidays.\n\n"
                "Question: Is the office open on Christmas?"
            ),
        ),
        ("chat", req("hey, any ideas for a fun team lunch spot? we like spicy food")),
        (
            "code",
            req(
                "Refactor this function so it doesn't mutate its argument:\n```python\n"
                "def add_tax(items):\n    for i in items:\n        i['price'] *= 1.2\n"
                "    return items\n```"
            ),
        ),
        (
            "reasoning",
            req(
                "A bat and a ball cost $1.10 in total. The bat costs $1.00 more than the ball. "
                "How much does the ball cost? Think through it step by step and explain why "
                "the intuitive answer is wrong."
            ),
        ),
        (
            "planning",
            req(
                "Draft a phased migration plan with milestones for moving our billing "
                "service from a cron-based batch job to an event-driven architecture."
            ),
        ),
    ],
)
def test_representative_requests(expected: str, request_: ChatRequest) -> None:
    result = classify(request_)
    assert result.task == expected, result.features["scores"]


def test_forced_tool_with_a_schema_reads_as_extraction() -> None:
    tool = Tool(
        name="record_contact",
        description="Store a contact",
        input_schema={
            "type": "object",
            "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
        },
    )
    result = classify(
        req(
            "Maria Lopez, maria@lopez.dev, wants a callback on Tuesday.",
            tools=[tool],
            tool_choice={"type": "tool", "name": "record_contact"},
        )
    )
    assert result.task == "extraction" and result.features["forced_tool"] is True


def test_enum_schema_reads_as_classification() -> None:
    fmt = ResponseFormat(
        type="json_schema",
        schema={"type": "object", "properties": {"label": {"type": "string", "enum": ["urgent", "normal"]}}},
    )
    result = classify(req("The production database is down and customers cannot pay.", response_format=fmt))
    assert result.task == "classification"


def test_tiny_output_budget_reads_as_classification() -> None:
    result = classify(req("Customer says: 'I'd like to cancel my subscription today.'", max_tokens=4))
    assert result.task == "classification"


def test_several_assistant_turns_read_as_chat() -> None:
    history = [
        ("user", "I just moved to Berlin"),
        ("assistant", "Welcome! How can I help?"),
        ("user", "looking for a gym"),
        ("assistant", "What kind of training do you like?"),
    ]
    result = classify(req("mostly bouldering honestly", history=history))
    assert result.task == "chat" and result.features["assistant_turns"] == 2


def test_no_cue_defaults_to_chat_with_zero_confidence() -> None:
    result = classify(req("purple elephant marmalade"))
    assert result.task == "chat" and result.confidence == 0.0


def test_ambiguity_resolves_upward() -> None:
    # Mostly extraction wording, but the request also needs judgement: the more demanding class wins
    # although it scores lower.
    result = classify(
        req("Extract each claim made in this paragraph and check whether the argument is consistent.")
    )
    scores = result.features["scores"]
    assert scores["extraction"] > scores["reasoning"]
    assert result.task == "reasoning"
    assert result.features["upward_from"] == "extraction"


def test_cues_inside_quoted_material_weigh_less_than_the_instruction() -> None:
    material = "Roadmap: phase 1 milestones, rollout plan, timeline, strategy, sprint backlog, okr. " * 20
    result = classify(req(f"Summarize this in two sentences.\n\n{material}\n\nThanks!"))
    assert result.task == "summarization"


def test_system_prompt_instructions_count() -> None:
    result = classify(
        req(
            "Order 1182 arrived broken, the lid is cracked.",
            system="You triage customer emails. Classify each into: damage, delay, refund, "
            "other. Output only the label.",
        )
    )
    assert result.task == "classification"


def test_the_middle_of_a_long_conversation_is_not_read() -> None:
    middle = [("user", "Prove the theorem and derive the lemma."), ("assistant", "Done.")] * 10
    history = [("user", "hi!"), ("assistant", "Hello!"), *middle]
    result = classify(req("thanks! can you recommend a good pizza place in Naples?", history=history))
    assert result.task == "chat"
    assert not {"prove", "deriv", "lemma"} & set(result.features["cues"] + result.features["material_cues"])


def test_the_first_message_is_context_weighed_as_material() -> None:
    history = [("user", "Prove the theorem and derive the lemma."), ("assistant", "Done.")] * 3
    result = classify(req("thanks! can you recommend a good pizza place in Naples?", history=history))
    assert result.task == "chat"
    assert "prove" in result.features["material_cues"]


def test_reading_is_bounded_on_huge_inputs() -> None:
    huge = req("Summarize this log.\n\n" + "GET /api/orders 200 12ms\n" * 200_000)  # ~5 MB
    start = time.perf_counter()
    result = classify(huge)
    elapsed = time.perf_counter() - start
    assert result.task == "summarization"
    assert result.features["scanned_chars"] < 4000
    assert elapsed < 0.05  # a full scan of 5 MB would take far longer
