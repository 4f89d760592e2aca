"""Structured request logs: the line's content, prompts only when enabled, never blocking."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from app.domain import ChatRequest, Message
from app.ledger.events import UsageEvent
from app.observability import logging as tollway_logging
from app.observability.logging import configure_logging, dropped_records, log_request, shutdown_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    shutdown_logging()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    shutdown_logging()  # flushes the queue into the stream
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def finished(**fields: Any) -> UsageEvent:
    base: dict[str, Any] = {
        "request_id": "req_01J9ZX",
        "team_id": "team_7",
        "key_id": "key_42",
        "client_format": "openai",
        "requested_model": "auto",
        "served_model": "claude-haiku-4-5",
        "provider": "anthropic",
        "route_reason": "cheapest adequate",
        "input_tokens": 1200,
        "output_tokens": 340,
        "cache_write_5m_tokens": 100,
        "cache_write_1h_tokens": 20,
        "cache_read_tokens": 4000,
        "cost_usd": Decimal("0.0031234567"),
        "uncached_cost_usd": Decimal("0.0102"),
        "latency_ms": 812.3456,
        "ttft_ms": 201.5,
        "status": 200,
        "stop_reason": "end_turn",
        "streamed": True,
    }
    base.update(fields)
    return UsageEvent(**base)


def prompt() -> ChatRequest:
    return ChatRequest(
        model="auto",
        messages=[Message(role="user", content=[{"type": "text", "text": "my password is hunter2"}])],
        max_tokens=100,
        client_format="openai",
    )


def test_one_line_per_request_with_the_fields_ops_need() -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    log_request(finished(), team_name="search", key_prefix="tw-k3v9x2ab", route="auto")
    [line] = lines(out)
    assert line["logger"] == "tollway.request" and line["level"] == "info" and line["msg"] == "request"
    assert line["request_id"] == "req_01J9ZX"
    assert line["team"] == "search" and line["team_id"] == "team_7"
    assert line["key_prefix"] == "tw-k3v9x2ab"
    assert line["route"] == "auto" and line["served_model"] == "claude-haiku-4-5"
    assert line["client_api"] == "openai" and line["provider"] == "anthropic"
    assert (line["input_tokens"], line["output_tokens"]) == (1200, 340)
    assert (line["cache_write_tokens"], line["cache_read_tokens"]) == (120, 4000)
    assert line["cost_usd"] == "0.0031234567"  # the ledger's exact Decimal, not a float
    assert line["latency_ms"] == 812.346 and line["ttft_ms"] == 201.5
    assert line["status"] == 200 and line["error_type"] is None
    assert line["ts"].endswith("+00:00")
    assert "prompt" not in line and "completion" not in line


def test_prompts_and_completions_only_when_enabled() -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    log_request(
        finished(request_id="off"),
        team_name="t",
        key_prefix="tw-a",
        route=None,
        prompt=prompt(),
        completion="the secret answer",
    )
    log_request(
        finished(request_id="on"),
        team_name="t",
        key_prefix="tw-a",
        route=None,
        prompt=prompt(),
        completion="the secret answer",
        log_prompts=True,
    )
    raw = out
    off, on = lines(raw)
    assert off["request_id"] == "off"
    assert "hunter2" not in json.dumps(off) and "secret answer" not in json.dumps(off)
    assert on["completion"] == "the secret answer"
    assert on["prompt"]["messages"][0]["content"][0]["text"] == "my password is hunter2"


def test_server_errors_log_as_warnings_and_below_level_is_skipped() -> None:
    out = io.StringIO()
    configure_logging("WARNING", stream=out)
    log_request(finished(request_id="fine"), team_name="t", key_prefix=None, route=None)
    log_request(
        finished(request_id="broken", status=502, error_type="overloaded"),
        team_name="t",
        key_prefix=None,
        route=None,
    )
    [line] = lines(out)
    assert line["request_id"] == "broken" and line["level"] == "warning"
    assert line["status"] == 502 and line["error_type"] == "overloaded"


def test_other_loggers_and_exceptions_are_json_too() -> None:
    out = io.StringIO()
    configure_logging("DEBUG", stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("tollway.ledger").exception("flush failed after %d tries", 3)
    logging.getLogger("uvicorn.error").info("Started server process")
    first, second = lines(out)
    assert first["msg"] == "flush failed after 3 tries" and first["level"] == "error"
    assert "ValueError: boom" in first["exc"]
    assert second["logger"] == "uvicorn.error" and second["msg"] == "Started server process"


class BlockedStream(io.StringIO):
    """A stderr whose reader stopped reading: every write waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait(timeout=10)
        return super().write(s)


def test_logging_never_blocks_the_caller_and_drops_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tollway_logging, "QUEUE_SIZE", 50)
    out = BlockedStream()
    configure_logging("INFO", stream=out)
    started = time.perf_counter()
    for i in range(200):
        log_request(finished(request_id=f"r{i}"), team_name="t", key_prefix=None, route=None)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0  # the writer is stuck; the callers were not
    dropped = dropped_records()
    # At most the queue plus the one record the writer holds got through; the rest were counted.
    assert 200 - 51 <= dropped <= 200 - 50
    out.release.set()
    written = lines(out)
    assert len(written) == 200 - dropped
    assert written[0]["request_id"] == "r0"


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_queued_together_are_written_together_in_order() -> None:
    stream = CountingStream()
    configure_logging("INFO", stream=stream)
    for i in range(500):
        log_request(finished(request_id=f"req_{i:04d}"), team_name="t", key_prefix="tw-x", route=None)
    logging.getLogger("tollway.other").info("after %s", "the requests")
    out = lines(stream)
    assert [line["request_id"] for line in out[:500]] == [f"req_{i:04d}" for i in range(500)]
    assert out[500]["msg"] == "after the requests"
    # 501 records in a few writes: the writer drains the queue per wake-up, not one write a line
    assert stream.writes < 50
