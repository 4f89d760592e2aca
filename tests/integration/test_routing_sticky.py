"""Issue 13: a conversation stays on one model across two gateway processes sharing Redis.

Gateway A serves the first turn of a conversation with ``model: auto`` (a hard question: the large
tier); gateway B serves the second turn (an easy follow-up that, routed on its own, goes to another
model — the explain endpoint of a team with no conversation shows which). B must serve it with A's
model, found in Redis under ``tw:sticky:``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.procs import Gateway, Stack, fresh_database, redis_db_url

pytestmark = pytest.mark.slow

SYSTEM = "You are a senior distributed-systems engineer."
HARD = (
    "Our Raft-based replicated log occasionally loses acknowledged writes after a leader change when two "
    "partitions heal at the same time. Walk through which safety invariant is violated and design a fix that "
    "keeps linearizable reads without a read quorum."
)
FOLLOW_UP = "Thanks. Is 17 a prime number? Answer yes or no."


@pytest.fixture(scope="module")
async def database(postgres_server_url: str) -> AsyncIterator[str]:
    async with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="module")
def stack(database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work: Path = tmp_path_factory.mktemp("routing-sticky")
    with Stack(work, database_url=database, redis_url=redis_db_url(redis_url)) as stack:
        stack.start_gateways(2)
        yield stack


def body(*turns: str) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    for index, text in enumerate(turns):
        if index:
            messages.append({"role": "assistant", "content": "(the earlier answer)"})
        messages.append({"role": "user", "content": text})
    return {"model": "auto", "max_tokens": 200, "system": SYSTEM, "messages": messages}


def post(gateway: Gateway, key: str, path: str, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        gateway.url + path,
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json=payload,
        timeout=30,
    )


def wait_for_sticky_entry(redis_url: str, team_id: str, deadline_s: float = 10.0) -> str:
    """The first turn's model is remembered after its response is sent: wait until Redis has it."""
    client = redis.Redis.from_url(redis_url)
    try:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            keys = list(client.scan_iter(match=f"tw:sticky:{team_id}:*"))
            if keys:
                value = client.get(keys[0])
                assert value is not None
                return value.decode()
            time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError("the first turn's model never reached Redis")


def test_a_conversation_stays_on_one_model_across_two_gateways(stack: Stack) -> None:
    a, b = stack.gateways
    team = stack.create_team()
    key, _ = stack.create_key(team["id"])
    other_team = stack.create_team()
    other_key, _ = stack.create_key(other_team["id"])

    first = post(a, key, "/v1/messages", body(HARD))
    assert first.status_code == 200, first.text
    first_model = first.headers["x-tollway-served-model"]
    assert wait_for_sticky_entry(stack.redis_url or "", team["id"]) == first_model

    # Without the conversation's history in Redis (another team), the follow-up goes elsewhere.
    alone = post(b, other_key, "/v1/routing/explain", body(HARD, FOLLOW_UP)).json()
    assert alone["chosen"] != first_model and alone["sticky"] is None

    explained = post(b, key, "/v1/routing/explain", body(HARD, FOLLOW_UP)).json()
    assert explained["sticky"] == first_model and explained["chosen"] == first_model

    second = post(b, key, "/v1/messages", body(HARD, FOLLOW_UP))
    assert second.status_code == 200, second.text
    assert second.headers["x-tollway-served-model"] == first_model
    assert "sticky=" in second.headers["x-tollway-route-reason"]
