"""The task classifier on representative requests, its structural features, and its bounds."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.domain import ChatRequest, Message, ResponseFormat, Tool
from app.routing import classifier
from app.routing.classifier import Classification, classify


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
    result = classify(huge)
    assert result.task == "summarization"
    assert result.features["scanned_chars"] < 4000  # windows of the text, not all 5 MB


# ---- the system prompt: role, standing text, persona ------------------------------------------------

SUPPORT_POLICIES = (
    "You are Max, the customer support assistant for Voltbike, a shop for e-bikes and parts.\n\n"
    "Deliveries: never promise delivery dates; quote the carrier's estimate and link the tracking page.\n\n"
    "Refunds: returned items are refunded to the original payment method within 5 working days. A "
    "minimum order value of 20 EUR applies to free shipping; the maximum refund is the price paid.\n\n"
    "Escalate to a human agent when the customer mentions a legal claim or a safety issue. Be friendly."
)


def test_a_support_assistant_answering_a_customer_is_chat() -> None:
    # The policy paragraphs are full of weak cues (dates, estimate, method, minimum, maximum) that say
    # nothing about what this customer asks.
    result = classify(req("My battery charger stopped working after a week. What can I do?", system=SUPPORT_POLICIES))
    assert result.task == "chat", result.features["scores"]
    assert result.features["persona"] is True
    assert {"estimate", "method", "minimum"} <= set(result.features["standing_cues"])
    assert result.features["scores"]["chat"] > result.features["scores"]["reasoning"]


def test_the_gateway_benchmark_support_request_is_chat() -> None:
    # The request every gateway benchmark cell sends: a support persona, six policy sections, a
    # customer's question. It used to be labelled reasoning and sent to the large tier.
    from app.wire.anthropic import parse_request
    from bench.workload import body

    request_ = parse_request(body("anthropic", "auto", False), anthropic_version="2023-06-01", anthropic_beta=None)
    assert classify(request_).task == "chat"


def test_policy_text_alone_does_not_decide_the_task() -> None:
    # No persona: the standing text's weak cues (material weight) are below the minimum evidence, so
    # the default stands instead of the largest of several faint signals.
    system = (
        "Store policies for Northwind Outfitters.\n\n"
        "Never promise delivery dates; quote the carrier's estimate.\n\n"
        "Refunds go to the original payment method."
    )
    result = classify(req("My tent arrived torn. What are my options?", system=system))
    assert result.features["persona"] is False
    assert 0 < result.features["scores"]["reasoning"] < 1.0
    assert result.task == "chat" and result.confidence == 0.0


def test_a_hard_question_in_a_support_conversation_still_goes_up() -> None:
    question = (
        "I bought 2 batteries at 389 EUR each and a charger at 59 EUR with 15% off the whole order. "
        "If I return one battery, how much do I get back?"
    )
    result = classify(req(question, system=SUPPORT_POLICIES))
    assert result.features["word_problem"] is True
    assert result.task == "reasoning", result.features["scores"]
    proof = classify(req("Prove that the square root of 2 is irrational.", system="You are a patient maths tutor."))
    assert proof.task == "reasoning"


def test_the_opening_paragraph_is_the_task_and_examples_are_standing_text() -> None:
    system = (
        "Classify each ticket into one of: billing, account, other.\n\n"
        "Examples:\n"
        "'Any roadmap for SSO? We plan a phased rollout next quarter.' -> other\n"
        "'The export function throws a TypeError when I change my email.' -> account\n"
        "'Why was I charged twice?' -> billing"
    )
    result = classify(req("Ticket: the invoice PDF shows last month's address", system=system))
    assert result.task == "classification", result.features["scores"]
    assert {"roadmap", "rollout", "typeerror"} <= set(result.features["standing_cues"])
    # At full weight the examples' cues would outscore the task statement (roadmap, plan, phased,
    # rollout, next quarter: 13 for planning); as standing text they add at most BODY_CAP.
    assert result.features["scores"]["planning"] <= classifier.BODY_CAP


@pytest.mark.parametrize(
    ("system", "persona"),
    [
        ("You are Lumi, the friendly support assistant for Nordlys Home.", True),
        ("You are the customer support assistant of Northwind Outfitters.", True),
        ("You're the customer service representative of Acme.", True),
        ("You are a patient Spanish tutor.", True),
        ("You are a support agent for Ledgerly.", True),
        ("You are the intent detector for Northwind Bank's assistant.", False),
        ("You are a coding agent working in the repository.", False),
        ("Extract the invoice fields. Use null for anything missing.", False),
        ("Our assistant answers questions about the product.", False),
    ],
)
def test_persona_is_the_role_the_system_prompt_opens_with(system: str, persona: bool) -> None:
    assert classify(req("hello", system=system)).features["persona"] is persona


def test_a_word_problem_needs_numbers_and_a_quantity_question() -> None:
    assert classify(req("How much does shipping to Norway cost?")).features["word_problem"] is False
    assert classify(req("I paid 20, 35 and 35 for three shirts. Nice, right?")).features["word_problem"] is False
    result = classify(req("I bought 3 shirts at $20 and 2 at $35 with 10% off. How much did I pay?"))
    assert result.features["word_problem"] is True and result.task == "reasoning"


# ---- the memo and the lazily built features ---------------------------------------------------------


def _eval_requests() -> list[ChatRequest]:
    from bench.routing_eval import EVAL_FILE, load_items, to_chat_request

    files = (EVAL_FILE, EVAL_FILE.with_name("routing_workload.jsonl"))
    return [to_chat_request(item["request"]) for path in files for item in load_items(path)]


def _outcome(result: Classification) -> tuple[str, float, dict[str, Any]]:
    return result.task, result.confidence, result.features


def test_memo_hits_classify_exactly_like_fresh_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    requests = _eval_requests()
    with monkeypatch.context() as patch:  # no memo: every system prompt is read afresh
        patch.setattr(classifier, "_read_system", classifier._read_system.__wrapped__)
        fresh = [_outcome(classify(r)) for r in requests]
    classifier._read_system.cache_clear()
    first = [_outcome(classify(r)) for r in requests]  # misses, then hits on shared prompts
    again = [_outcome(classify(copy.deepcopy(r))) for r in requests]  # equal text, other objects: hits
    info = classifier._read_system.cache_info()
    assert info.hits >= sum(1 for r in requests if r.system)  # every second reading was a hit
    assert first == fresh and again == fresh


def test_memo_is_bounded_and_keyed_by_the_window_read() -> None:
    classifier._read_system.cache_clear()
    for i in range(classifier.SYSTEM_MEMO_SIZE + 50):
        classify(req("hello", system=f"You are assistant number {i}."))
    assert classifier._read_system.cache_info().currsize == classifier.SYSTEM_MEMO_SIZE

    # Two long prompts that differ only outside the window share one entry; what is counted over the
    # whole prompt (code fences) is not memoised and still tells them apart.
    head, tail = "You triage tickets. " * 60, " Output only the label." * 20
    plain = classify(req("hi", system=head + "x" * 100_000 + tail))
    hits_before = classifier._read_system.cache_info().hits
    fenced = classify(req("hi", system=head + "```\nx = 1\n```" + "x" * 100_000 + tail))
    assert classifier._read_system.cache_info().hits == hits_before + 1
    assert plain.features["code_fences"] == 0 and fenced.features["code_fences"] == 1


def test_features_are_built_on_first_read_with_every_explain_field() -> None:
    result = classify(req("Is this review positive or negative? 'Battery died in a day.'", max_tokens=5))
    assert result._features is None  # the routing hot path never pays for them
    features = result.features
    assert features is result.features  # built once
    assert set(features) >= {
        "cues",
        "material_cues",
        "scores",
        "upward_from",
        "response_format",
        "forced_tool",
        "tools",
        "tool_loop",
        "max_tokens",
        "code_fences",
        "code_marks",
        "assistant_turns",
        "digits",
        "scanned_chars",
    }
    assert features["cues"] == ["positive or negative"] and features["scores"]["classification"] > 0
