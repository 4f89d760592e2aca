"""The budget store's lean Redis connection, against a real Redis (and a silent fake for timeouts)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.budgets.redis_store import connect_budget_redis
from app.budgets.resp import RespClient, pack

SCRIPT = "return {tonumber(ARGV[1]) + 1, KEYS[1], redis.call('INCRBY', KEYS[1], ARGV[1])}"
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def test_pack_is_resp_bulk_strings() -> None:
    assert pack(["EVALSHA", "ab", 1, "k", 2.5, b"\x00raw"]) == (
        b"*6\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n$3\r\n2.5\r\n$4\r\n\x00raw\r\n"
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RespClient]:
    resp = RespClient.for_redis(connect_budget_redis(redis_url))
    assert resp is not None and resp.db == int(redis_url.rsplit("/", 1)[1])
    yield resp
    await resp.aclose()


async def test_replies_in_order_with_errors_in_place(client: RespClient) -> None:
    await client.execute([("DEL", "resp:n")])
    loaded = await client.execute([("SCRIPT", "LOAD", SCRIPT)])
    assert loaded == [SHA.encode()]
    replies = await client.execute(
        [
            ("EVALSHA", SHA, 1, "resp:n", 5),
            ("EVALSHA", "0" * 40, 0),  # an unknown script: an error reply, in its place
            ("EVALSHA", SHA, 1, "resp:n", 2),
        ]
    )
    assert replies[0] == [6, b"resp:n", 5]
    assert isinstance(replies[1], ResponseError) and str(replies[1]).startswith("NOSCRIPT")
    assert replies[2] == [3, b"resp:n", 7]


async def test_concurrent_batches_share_one_connection(client: RespClient) -> None:
    await client.execute([("SCRIPT", "LOAD", SCRIPT), ("DEL", "resp:c")])
    results = await asyncio.gather(*(client.execute([("EVALSHA", SHA, 1, "resp:c", 1)]) for _ in range(200)))
    totals = sorted(reply[0][2] for reply in results)
    assert totals == list(range(1, 201))  # every increment applied once, every reply to its caller


async def test_the_configured_database_is_selected(redis_url: str, client: RespClient) -> None:
    await client.execute([("SET", "resp:db", "here")])
    other = RespClient(client.host, client.port, db=(client.db + 1) % 16)
    try:
        assert await other.execute([("GET", "resp:db")]) != [b"here"]
        assert await client.execute([("GET", "resp:db")]) == [b"here"]
    finally:
        await other.aclose()


async def test_a_refused_connection_is_a_connection_error() -> None:
    with pytest.raises(RedisConnectionError):
        await RespClient("127.0.0.1", 1).execute([("PING",)])


async def test_a_silent_server_times_out_and_the_next_call_reconnects() -> None:
    connections = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read(1 << 16)  # takes the command, never answers
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient("127.0.0.1", port, timeout_s=0.1)
    try:
        with pytest.raises(RedisTimeoutError):
            await client.execute([("PING",)])
        with pytest.raises(RedisTimeoutError):
            await client.execute([("PING",)])
        assert connections == 2  # the timed-out connection was dropped, not reused out of sync
    finally:
        await client.aclose()
        server.close()


async def test_a_server_closing_the_connection_fails_the_pending_batch() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    client = RespClient("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        with pytest.raises(RedisConnectionError):
            await client.execute([("PING",)])
    finally:
        await client.aclose()
        server.close()


def test_cluster_and_unix_sockets_stay_on_redis_py() -> None:
    from redis.asyncio.cluster import RedisCluster

    assert RespClient.for_redis(connect_budget_redis("unix:///tmp/redis.sock")) is None
    assert RespClient.for_redis(object.__new__(RedisCluster)) is None
