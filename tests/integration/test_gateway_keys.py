"""Issue 3 (and 4) across replicas: two gateway processes, A and B, sharing one PostgreSQL database
and one Redis.

* A key revoked through A's admin API stops working on B within the key-cache TTL
  (``TOLLWAY_KEY_CACHE_TTL_S``, default 2 s): B is polled until it answers 401.
* A team key reads its own team's usage and budget at ``GET /v1/me`` and nothing of another team's,
  whatever it asks for, and cannot use the admin API.
* A limit changed through A's admin API is enforced by B on its very next request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.procs import Gateway, Stack, anthropic_call, fresh_database, openai_call, redis_db_url

pytestmark = pytest.mark.slow

REVOCATION_BOUND_S = 3.0  # the TTL, plus a second for a loaded two-core machine


@pytest.fixture(scope="module")
async def database(postgres_server_url: str) -> AsyncIterator[str]:
    async with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="module")
def stack(database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work: Path = tmp_path_factory.mktemp("gateway-keys")
    with Stack(work, database_url=database, redis_url=redis_db_url(redis_url)) as stack:
        stack.start_gateways(2)  # the default key-cache TTL: nothing set
        yield stack


def chat(gateway: Gateway, key: str) -> httpx.Response:
    """One small Anthropic-format request with the given key."""
    return httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={"model": "claude-haiku-5-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )


def test_a_key_revoked_on_one_gateway_stops_working_on_the_other(stack: Stack) -> None:
    a, b = stack.gateways
    team = stack.create_team(gateway=a)
    key, record = stack.create_key(team["id"], gateway=a)
    assert record["status"] == "active"

    # Both replicas know the key; B's answer is now in B's cache.
    assert chat(a, key).status_code == 200
    assert chat(b, key).status_code == 200

    with stack.admin(a) as admin:
        revoked = admin.post(f"/admin/keys/{record['id']}/revoke")
    revoked_at = time.monotonic()
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"

    # A dropped its own cache: the key is refused at once.
    refused_on_a = chat(a, key)
    assert refused_on_a.status_code == 401

    # B has no message from A: its cached answer must age out within the TTL.
    statuses: list[int] = []
    while True:
        response = chat(b, key)
        statuses.append(response.status_code)
        if response.status_code == 401 or time.monotonic() - revoked_at > 10:
            break
        time.sleep(0.05)
    took = time.monotonic() - revoked_at
    assert statuses[-1] == 401, f"B still accepts the revoked key after {took:.1f} s"
    assert set(statuses[:-1]) <= {200}, statuses
    assert took <= REVOCATION_BOUND_S, f"B took {took:.2f} s to refuse the revoked key"

    # Refused in the client's own format, by both SDKs, on both replicas, and it stays refused.
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=b.url, api_key=key, max_retries=0).messages.create(
            model="claude-haiku-5-5", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    with pytest.raises(openai.AuthenticationError) as exc:
        openai.OpenAI(base_url=a.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
            model="gpt-5-mini", messages=[{"role": "user", "content": "Hi"}]
        )
    assert exc.value.code == "invalid_api_key"
    with b.client(key) as client:
        assert client.get("/v1/me").status_code == 401


def test_a_rotated_key_moves_to_the_new_secret_on_every_replica(stack: Stack) -> None:
    a, b = stack.gateways
    team = stack.create_team(gateway=b)
    old, record = stack.create_key(team["id"], gateway=b)
    assert chat(a, old).status_code == 200
    with stack.admin(b) as admin:
        rotated = admin.post(f"/admin/keys/{record['id']}/rotate")
    assert rotated.status_code == 201
    new = rotated.json()["key"]
    rotated_at = time.monotonic()
    assert chat(a, new).status_code == 200  # a new secret is a cache miss: known at once
    while chat(a, old).status_code != 401:
        assert time.monotonic() - rotated_at < REVOCATION_BOUND_S, "the old secret outlived the TTL on A"
        time.sleep(0.05)


async def test_a_team_key_sees_only_its_own_team(stack: Stack) -> None:
    a, b = stack.gateways
    ours = stack.create_team(f"ours-{uuid.uuid4().hex[:6]}", limits={"tokens_per_day": 1_000_000})
    theirs = stack.create_team(f"theirs-{uuid.uuid4().hex[:6]}", limits={"tokens_per_day": 2_000_000})
    our_key, our_record = stack.create_key(ours["id"])
    their_key, their_record = stack.create_key(theirs["id"])

    # Known traffic for each team, spread over both replicas and both client formats.
    our_calls = await asyncio.gather(
        anthropic_call(_anthropic(a, our_key), model="claude-haiku-5-5", prompt="one", max_tokens=16),
        openai_call(_openai(b, our_key), model="gpt-5-mini", prompt="two", max_tokens=16),
    )
    their_calls = await asyncio.gather(
        *(
            anthropic_call(_anthropic(gw, their_key), model="claude-haiku-5-5", prompt=f"x{i}", max_tokens=32)
            for i, gw in enumerate([a, b, a])
        )
    )
    assert all(c.status == 200 for c in [*our_calls, *their_calls])

    ours_seen = await _me_when_recorded(b, our_key, requests=len(our_calls))
    theirs_seen = await _me_when_recorded(a, their_key, requests=len(their_calls))

    for seen, team, record, calls in (
        (ours_seen, ours, our_record, our_calls),
        (theirs_seen, theirs, their_record, their_calls),
    ):
        assert seen["team"]["id"] == team["id"] and seen["team"]["name"] == team["name"]
        assert seen["key"]["id"] == record["id"] and seen["key"]["prefix"] == record["prefix"]
        today = seen["usage"]["today"]
        assert today["requests"] == len(calls)
        assert today["input_tokens"] + today["output_tokens"] == sum(c.tokens for c in calls)
        budget = seen["budget"]["team"]["tokens_per_day"]
        assert budget["limit"] == team["limits"]["tokens_per_day"]
        assert budget["used"] == sum(c.tokens for c in calls)

    # Nothing of the other team appears anywhere in what a key can read about itself, whatever
    # the request says.
    with b.client(our_key) as client:
        for params in ({}, {"team": theirs["id"]}, {"team": theirs["name"]}, {"team_id": theirs["id"]}):
            response = client.get("/v1/me", params=params, headers={"x-tollway-team": theirs["id"]})
            assert response.status_code == 200
            assert response.json()["team"]["id"] == ours["id"]
            for secret in (theirs["id"], theirs["name"], their_record["id"], their_record["prefix"]):
                assert secret not in response.text

        # The admin API is not for team keys: 403, and nothing happens.
        for method, path in (
            ("GET", "/admin/teams"),
            ("GET", f"/admin/teams/{theirs['id']}"),
            ("GET", f"/admin/teams/{theirs['id']}/keys"),
            ("GET", "/admin/usage"),
            ("GET", f"/admin/usage?team={theirs['id']}"),
            ("POST", f"/admin/keys/{their_record['id']}/revoke"),
            ("PATCH", f"/admin/teams/{theirs['id']}"),
        ):
            response = client.request(method, path, json={} if method == "PATCH" else None)
            assert response.status_code == 403, (method, path, response.status_code)
            assert response.json()["error"]["type"] == "permission_error"
            assert theirs["name"] not in response.text
    assert chat(a, their_key).status_code == 200, "the other team's key was not revoked"

    # The admin key is no team key.
    with a.client(stack.admin_key) as client:
        assert client.get("/v1/me").status_code == 401


async def test_a_limit_changed_on_one_gateway_applies_on_the_others_next_request(stack: Stack) -> None:
    a, b = stack.gateways
    team = stack.create_team(limits={"tokens_per_day": 1_000_000})
    key, _ = stack.create_key(team["id"])
    assert chat(b, key).status_code == 200
    with stack.admin(a) as admin:
        changed = admin.patch(f"/admin/teams/{team['id']}", json={"limits": {"tokens_per_day": 20}})
    assert changed.status_code == 200
    refused = chat(b, key)  # B's principal cache still holds the old limit; Redis has the new one
    assert refused.status_code == 429, refused.text
    assert "tokens_per_day" in refused.json()["error"]["message"]
    assert "of 20 tokens" in refused.json()["error"]["message"]


def _anthropic(gateway: Gateway, key: str) -> Any:
    return anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)


def _openai(gateway: Gateway, key: str) -> Any:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


async def _me_when_recorded(gateway: Gateway, key: str, *, requests: int, timeout_s: float = 10) -> Any:
    """``GET /v1/me`` once the ledger holds the team's ``requests`` rows (it is written after the
    responses, in batches)."""
    deadline = time.monotonic() + timeout_s
    async with gateway.async_client(key) as client:
        while True:
            response = await client.get("/v1/me")
            assert response.status_code == 200, response.text
            data = response.json()
            if data["usage"]["today"]["requests"] >= requests or time.monotonic() > deadline:
                return data
            await asyncio.sleep(0.05)
