"""The request path's edges, through a whole gateway on a real socket: deadlines, client disconnects,
shutdown of open streams, readiness while draining, the simulator's label, slow request heads."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import load_catalog
from tests.gateway import Gateway, run_gateway
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 1.5


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("request-path")
    with run_gateway(tmp, request_deadline_s=DEADLINE_S, cooldown_failures=1_000_000) as gw:
        gw.db_path = tmp / "tollway.db"  # type: ignore[attr-defined]
        yield gw


def ledger_row(gw: Gateway, request_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sqlite3.connect(gw.db_path) as conn:  # type: ignore[attr-defined]
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM usage_events WHERE request_id = ?", (request_id,)).fetchone()
        if row is not None:
            return dict(row)
        time.sleep(0.05)
    raise AssertionError(f"no ledger row for {request_id}")


def ledger_rows_since(gw: Gateway, since_rowid: int) -> list[dict[str, Any]]:
    with sqlite3.connect(gw.db_path) as conn:  # type: ignore[attr-defined]
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT rowid, * FROM usage_events WHERE rowid > ?", (since_rowid,))]


def max_rowid(gw: Gateway) -> int:
    with sqlite3.connect(gw.db_path) as conn:  # type: ignore[attr-defined]
        return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM usage_events").fetchone()[0])


def chat(gw: Gateway, *, stream: bool = False, sim: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "url": f"{gw.url}/v1/chat/completions",
        "headers": {"authorization": f"Bearer {gw.team_key}", **(sim or {})},
        "json": {
            "model": "gpt-5-mini",
            "max_tokens": 64,
            "stream": stream,
            "messages": [{"role": "user", "content": "Say hello"}],
        },
    }


def test_every_simulated_answer_says_so_in_a_header(gateway: Gateway) -> None:
    response = httpx.post(**chat(gateway), timeout=30)
    assert response.status_code == 200
    assert response.headers["x-tollway-simulated"] == "true"


def test_a_json_request_past_its_deadline_gets_a_504_in_its_format_and_a_ledger_row(gateway: Gateway) -> None:
    slow = {"x-sim-latency-ms": str(int(DEADLINE_S * 1000 * 3))}
    started = time.monotonic()
    response = httpx.post(**chat(gateway, sim=slow), timeout=30)
    assert time.monotonic() - started < DEADLINE_S * 2.5
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    row = ledger_row(gateway, response.headers["request-id"])
    assert row["status"] == 504 and row["error_type"] == "timeout"


def test_a_stream_past_its_deadline_ends_with_an_error_event_and_is_recorded(gateway: Gateway) -> None:
    slow = {"x-sim-tokens-per-second": "5", "x-sim-output-tokens": "60"}
    with httpx.stream(**chat(gateway, stream=True, sim=slow), method="POST", timeout=30) as response:
        assert response.status_code == 200
        request_id = response.headers["request-id"]
        body = b"".join(response.iter_bytes()).decode()
    assert "exceeded its deadline" in body
    assert body.rstrip().splitlines()[-1].startswith("data: {")  # an error chunk, not a silent cut
    row = ledger_row(gateway, request_id)
    assert row["status"] == 504 and row["error_type"] == "timeout" and row["output_tokens"] > 0


def test_a_non_streaming_client_that_leaves_cancels_the_upstream_and_is_recorded_as_aborted(gateway: Gateway) -> None:
    before = max_rowid(gateway)
    slow = {"x-sim-latency-ms": "1000"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(**chat(gateway, sim=slow), timeout=httpx.Timeout(30, read=0.3))
    deadline = time.monotonic() + 10
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not rows:
        rows = [r for r in ledger_rows_since(gateway, before) if r["error_type"] == "client_aborted"]
        time.sleep(0.05)
    assert rows, "the abandoned request left no ledger row"
    assert rows[0]["status"] == 499 and rows[0]["aborted"]


def test_readiness_is_503_on_a_kept_alive_connection_once_draining(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:  # one kept-alive connection
        assert client.get("/readyz").status_code == 200
        gateway.services.lifecycle.begin_drain()
        try:
            response = client.get("/readyz")
        finally:
            gateway.services.lifecycle.draining = False
    assert response.status_code == 503
    assert response.json()["checks"]["shutdown"] == "draining"


def test_a_missing_provider_key_stops_tollway_serve_with_a_clear_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_") and not k.endswith("_API_KEY")}
    env["TOLLWAY_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    message = done.stderr + done.stdout
    for name in (p.api_key_env for p in load_catalog(None).providers.values()):
        assert name and name in message
    assert "TOLLWAY_SIMULATOR=on" in message
    assert "Traceback" not in message


@contextmanager
def gateway_process(tmp_path: Path, **env_overrides: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``tollway serve`` in its own process, on the simulator, with a SQLite ledger in ``tmp_path``."""
    port = free_port()
    env = {**os.environ, "TOLLWAY_SIMULATOR": "on", "TOLLWAY_DEV_KEY": "tw-proc-key", **env_overrides}
    env["TOLLWAY_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/tollway.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)


def test_sigterm_ends_open_streams_after_the_grace_period_with_an_error_event_labelled_shutdown(
    tmp_path: Path,
) -> None:
    with gateway_process(tmp_path, TOLLWAY_SHUTDOWN_GRACE_S="1") as (port, proc):
        body = {
            "model": "gpt-5-mini",
            "max_tokens": 2000,
            "stream": True,
            "messages": [{"role": "user", "content": "Tell me a long story"}],
        }
        headers = {
            "authorization": "Bearer tw-proc-key",
            "x-sim-tokens-per-second": "10",
            "x-sim-output-tokens": "1000",
        }
        with httpx.stream(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as response:
            request_id = response.headers["request-id"]
            chunks = response.iter_bytes()
            assert next(chunks)
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            rest = b"".join(chunks).decode()
            assert time.monotonic() - started < 10
        assert "shutting down" in rest
        # uvicorn re-raises the captured SIGTERM once it has shut down cleanly.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    with sqlite3.connect(tmp_path / "tollway.db") as conn:
        row = conn.execute("SELECT status, error_type FROM usage_events WHERE request_id = ?", (request_id,)).fetchone()
    assert row == (503, "shutdown")


def test_a_client_that_never_finishes_its_request_head_is_disconnected(tmp_path: Path) -> None:
    with gateway_process(tmp_path, TOLLWAY_HEADER_TIMEOUT_S="1") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            started = time.monotonic()
            assert sock.recv(1024) == b""  # the server closed the connection
            assert time.monotonic() - started < 8
        # A well-behaved client on the same server is unaffected.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


def test_unknown_paths_are_404_not_found(gateway: Gateway) -> None:
    response = httpx.post(f"{gateway.url}/v1/nothing-here", json={}, timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e309", "99999999999"])
def test_retry_after_from_the_upstream_never_breaks_a_request(gateway: Gateway, value: str) -> None:
    sim = {"x-sim-error": "429", "x-sim-retry-after": value}
    response = httpx.post(**chat(gateway, sim=sim), timeout=30)
    # 429 passed on, or 503 once the deployment's breaker honours the retry-after (capped).
    assert response.status_code in (429, 503)
    retry_after = response.headers.get("retry-after")
    assert retry_after is None or 1 <= int(retry_after) <= 86_400
    assert response.json()["error"]["type"] in ("rate_limit_exceeded", "server_error")


def test_wrong_admin_keys_are_throttled_per_address(tmp_path: Path) -> None:
    with run_gateway(tmp_path) as gw:
        statuses = [
            httpx.get(f"{gw.url}/admin/teams", headers={"authorization": f"Bearer wrong-{i}"}, timeout=10).status_code
            for i in range(15)
        ]
        assert statuses[:10] == [401] * 10
        assert set(statuses[10:]) == {429}
        refused = httpx.get(f"{gw.url}/admin/teams", headers={"authorization": f"Bearer {gw.admin_key}"}, timeout=10)
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        form = {"admin_key": "still-wrong"}
        login = httpx.post(f"{gw.url}/dashboard/login", data=form, timeout=10)
        assert login.status_code == 429
