"""A provider that answers 200 with valid JSON of the wrong shape, through the whole gateway: the
client gets a well-formed 502 in its own format, the budget reservation is settled (nothing stays
reserved), and the ledger has a row with the error type. Nothing is billed at 0 as if it had worked."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from app.config import Catalog, load_catalog
from tests.gateway import Gateway, run_gateway

# Valid JSON, wrong types or values: each must be refused, never trusted.
MALFORMED: dict[str, Any] = {
    "content-is-a-number": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": 5,
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    },
    "text-is-a-number": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": 5}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    },
    "tokens-are-words": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": "ten", "output_tokens": 2},
    },
    "tokens-are-huge": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10**30, "output_tokens": 2},
    },
    "negative-tokens": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": -500},
    },
    "empty-object": {},
    "error-envelope-in-a-200": {"type": "error", "error": {"type": "overloaded_error", "message": "x"}},
}


class Hostile(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        if request.get("stream"):
            self.overrun(request)
            return
        # Which wrong shape to send: the request's last user message names it.
        content = request["messages"][-1]["content"]
        shape = content if isinstance(content, str) else content[0]["text"]
        body = json.dumps(MALFORMED[shape]).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def overrun(self, request: dict[str, Any]) -> None:
        """A stream that ignores max_tokens: 2,000 deltas of 40 characters, then a stop it never reaches
        in time."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()

        def event(name: str, data: dict[str, Any]) -> None:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        message = {
            "id": "msg_x",
            "type": "message",
            "role": "assistant",
            "model": request["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1},
        }
        try:
            event("message_start", {"type": "message_start", "message": message})
            event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            for _ in range(2000):
                event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": "x" * 39 + " "},
                    },
                )
                self.wfile.flush()
            event("content_block_stop", {"type": "content_block_stop", "index": 0})
            event(
                "message_delta",
                {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 20000}},
            )
            event("message_stop", {"type": "message_stop"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway cut us off: that is the point

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hostile_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def catalog_with_hostile_anthropic(url: str) -> Catalog:
    catalog = load_catalog(None)
    providers = dict(catalog.providers)
    providers["anthropic"] = providers["anthropic"].model_copy(
        update={"base_url": url, "api_key": "not-a-real-key", "api_key_env": None}
    )
    return catalog.model_copy(update={"providers": providers})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, hostile_url: str) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("distrust")
    catalog = catalog_with_hostile_anthropic(hostile_url)
    with run_gateway(tmp, catalog=catalog, simulator="on", retry_attempts=0, cooldown_failures=1_000_000) as gw:
        admin = gw.admin()
        team = admin.post("/admin/teams", json={"name": "metered", "limits": {"tokens_per_day": 1_000_000}})
        assert team.status_code == 201, team.text
        key = admin.post("/admin/teams/metered/keys", json={"name": "k"})
        assert key.status_code == 201, key.text
        gw.metered_key = key.json()["key"]  # type: ignore[attr-defined]
        gw.db_path = tmp / "tollway.db"  # type: ignore[attr-defined]
        yield gw


def ledger_row(gw: Gateway, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(gw.db_path) as conn:  # type: ignore[attr-defined]
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM usage_events WHERE request_id = ?", (request_id,)).fetchone()
        if row is not None:
            return dict(row)
        time.sleep(0.05)
    raise AssertionError(f"no ledger row for {request_id}")


@pytest.mark.parametrize("shape", sorted(MALFORMED))
@pytest.mark.parametrize("api", ["anthropic", "openai"])
def test_a_wrongly_shaped_reply_is_a_502_settled_and_recorded(gateway: Gateway, shape: str, api: str) -> None:
    key = gateway.metered_key  # type: ignore[attr-defined]
    message = [{"role": "user", "content": shape}]
    if api == "anthropic":
        response = httpx.post(
            f"{gateway.url}/v1/messages",
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
            json={"model": "claude-haiku-5-5", "max_tokens": 50, "messages": message},
            timeout=30,
        )
    else:
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "claude-haiku-5-5", "max_tokens": 50, "messages": message},
            timeout=30,
        )
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["message"] and "malformed" in error["message"]
    assert json.dumps(MALFORMED[shape]) not in response.text  # the upstream body is never echoed

    row = ledger_row(gateway, response.headers["request-id"])
    assert row["status"] == 502 and row["error_type"] == "api_error"
    assert row["output_tokens"] >= 0 and row["cost_usd"] is not None and float(row["cost_usd"]) >= 0

    me = httpx.get(f"{gateway.url}/v1/me", headers={"authorization": f"Bearer {key}"}, timeout=10).json()
    windows = json.dumps(me)
    assert '"reserved": 0' in windows or '"reserved": "0"' in windows, windows


def test_a_stream_the_provider_runs_past_max_tokens_is_cut_there_and_flagged(gateway: Gateway) -> None:
    key = gateway.metered_key  # type: ignore[attr-defined]
    body = {
        "model": "claude-haiku-5-5",
        "max_tokens": 20,
        "stream": True,
        "messages": [{"role": "user", "content": "go"}],
    }
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{gateway.url}/v1/messages", headers=headers, json=body, timeout=30) as response:
        assert response.status_code == 200
        request_id = response.headers["request-id"]
        text = b"".join(response.iter_bytes()).decode()
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "content_block_delta"]
    assert 0 < len(deltas) < 20, "cut near the cap, long before the provider's 2,000 deltas"
    assert [e["type"] for e in events[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    stop = [e for e in events if e["type"] == "message_delta"]
    assert stop and stop[-1]["delta"]["stop_reason"] == "max_tokens"
    assert events[-1]["type"] == "message_stop"

    row = ledger_row(gateway, request_id)
    assert row["status"] == 200 and row["usage_flag"] == "over_reservation" and row["stop_reason"] == "max_tokens"
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'tollway_usage_flags_total{flag="over_reservation",model="claude-haiku-5-5"}' in metrics


def test_the_cut_reads_as_a_length_stop_to_an_openai_client(gateway: Gateway) -> None:
    key = gateway.metered_key  # type: ignore[attr-defined]
    body = {
        "model": "claude-haiku-5-5",
        "max_tokens": 20,
        "stream": True,
        "messages": [{"role": "user", "content": "go"}],
    }
    headers = {"authorization": f"Bearer {key}"}
    url = f"{gateway.url}/v1/chat/completions"
    with httpx.stream("POST", url, headers=headers, json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length" and finishes.count("length") == 1
