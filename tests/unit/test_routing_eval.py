"""The committed routing evaluation set: its shape, and that nothing is routed below its label."""

from __future__ import annotations

from collections import Counter

from app.routing.classifier import TASK_CLASSES
from bench.routing_eval import EVAL_FILE, evaluate, load_items, make_router, to_chat_request

WORKLOAD_FILE = EVAL_FILE.with_name("routing_workload.jsonl")


def test_eval_set_is_large_and_covers_every_task_class() -> None:
    items = load_items(EVAL_FILE)
    assert len(items) >= 120
    counts = Counter(item["task"] for item in items)
    assert set(counts) == set(TASK_CLASSES)
    assert min(counts.values()) >= 12
    assert len({item["id"] for item in items}) == len(items)
    for item in items:
        to_chat_request(item["request"])  # every line parses into a canonical request


def test_no_eval_request_is_routed_below_its_labelled_tier() -> None:
    result = evaluate(load_items(EVAL_FILE), make_router())
    assert result["below_label"] == []
    assert result["task_accuracy"] >= 0.85
    assert result["tier_accuracy"] >= 0.9


def test_no_workload_request_is_routed_below_its_labelled_tier() -> None:
    # The cost workload was written separately from the eval set the classifier was tuned on.
    result = evaluate(load_items(WORKLOAD_FILE), make_router())
    assert result["below_label"] == []
